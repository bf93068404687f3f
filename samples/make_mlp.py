"""Make the data of samples/mlp.lyr with PyTorch, the reference layerc is checked against.

Builds the 8 -> 16 -> 16 -> 3 ReLU MLP as a `torch.nn.Sequential` with a fixed seed, saves its
state_dict (float32) to mlp_weights.npz, draws a batch of inputs and one single sample, and
computes the expected outputs with the same model in float64, which mlp.lyr's test blocks load:

    python samples/make_mlp.py [--out DIR]      # DIR defaults to this script's folder

The files are written byte-for-byte reproducibly (tests/test_samples.py re-runs this script
and compares), so re-running it changes nothing unless the model below changes.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

SEED = 20240601
BATCH = 6


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like `np.savez`, but reproducible: members in the given order, uncompressed, with a fixed
    timestamp (np.savez stamps each member with the current time)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def build_model() -> torch.nn.Sequential:
    """The torch twin of mlp.lyr: named Linear layers, unnamed ReLUs (keys "1" and "3")."""
    torch.manual_seed(SEED)
    return torch.nn.Sequential(
        OrderedDict(
            [
                ("fc1", torch.nn.Linear(8, 16)),
                ("1", torch.nn.ReLU()),
                ("fc2", torch.nn.Linear(16, 16)),
                ("3", torch.nn.ReLU()),
                ("fc3", torch.nn.Linear(16, 3)),
            ]
        )
    )


def reference(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's output for `x`, computed in float64 (weights and input widened exactly)."""
    wide = model.to(torch.float64)
    with torch.no_grad():
        out = wide(torch.from_numpy(x.astype(np.float64))).numpy()
    model.to(torch.float32)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)

    model = build_model()
    state = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    save_npz(out / "mlp_weights.npz", state)

    rng = np.random.default_rng(SEED)
    batch = rng.standard_normal((BATCH, 8)).astype(np.float32)
    sample = rng.standard_normal(8).astype(np.float32)
    np.save(out / "mlp_input.npy", batch)
    np.save(out / "mlp_expect.npy", reference(model, batch))
    np.save(out / "mlp_sample.npy", sample)
    np.save(out / "mlp_sample_expect.npy", reference(model, sample))


if __name__ == "__main__":
    main()
