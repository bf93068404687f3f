"""Make the data of samples/nested.lyr with PyTorch, the reference layerc is checked against.

Builds the torch twin of nested.lyr (an Encoder Sequential inside a Classifier Sequential) with
a fixed seed, in float64, saves its state_dict to nested_weights.safetensors (the pickle-free
format PyTorch users share weights in), draws a batch of inputs, and saves the outputs of the
whole Classifier and of the Encoder alone, which nested.lyr's test blocks load:

    python samples/make_nested.py [--out DIR]   # DIR defaults to this script's folder

The files are written reproducibly (tests/test_samples.py re-runs this script and compares).
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

SEED = 7
BATCH = 5


def build_model() -> torch.nn.Sequential:
    """Classifier(enc=Encoder(fc, Tanh), head, ReLU, out, Softmax) in float64, keys as in
    nested.lyr: unnamed layers take their position ("1", "2", "4")."""
    torch.manual_seed(SEED)
    encoder = torch.nn.Sequential(
        OrderedDict(
            [
                ("fc", torch.nn.Linear(6, 8)),
                ("1", torch.nn.Tanh()),
            ]
        )
    )
    return torch.nn.Sequential(
        OrderedDict(
            [
                ("enc", encoder),
                ("head", torch.nn.Linear(8, 4)),
                ("2", torch.nn.ReLU()),
                ("out", torch.nn.Linear(4, 3)),
                ("4", torch.nn.Softmax(dim=-1)),
            ]
        )
    ).to(torch.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)

    model = build_model()
    state = {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}
    save_file(state, str(out / "nested_weights.safetensors"))

    x = np.random.default_rng(SEED).standard_normal((BATCH, 6))
    with torch.no_grad():
        inputs = torch.from_numpy(x)
        np.save(out / "nested_input.npy", x)
        np.save(out / "nested_expect.npy", model(inputs).numpy())
        np.save(out / "nested_encoder_expect.npy", model.enc(inputs).numpy())


if __name__ == "__main__":
    main()
