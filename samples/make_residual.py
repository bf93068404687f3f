"""Make the data of samples/residual.lyr with PyTorch, the reference layerc is checked against.

Builds the torch twin of residual.lyr (a residual Block, LayerNorm -> Linear -> GELU -> Linear
plus the skip, nested in a Heads model of two inputs and two outputs) as `torch.nn.Module`
subclasses whose `forward` is the .lyr file's, with a fixed seed, saves its state_dict (float32)
to residual_weights.safetensors, draws a batch of inputs and masks, and computes the outputs of
the whole Heads model and of the Block alone with the same modules in float64, which
residual.lyr's test blocks load:

    python samples/make_residual.py [--out DIR]   # DIR defaults to this script's folder

The files are written reproducibly (tests/test_samples.py re-runs this script and compares).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

SEED = 11
BATCH = 6


class Block(torch.nn.Module):
    """y = x + fc2(act(fc1(norm(x)))), on 16 features."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)
        self.fc1 = torch.nn.Linear(16, 32)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(self.act(self.fc1(self.norm(x))))
        return x + h


class Heads(torch.nn.Module):
    """An 8-feature input embedded in 16, through the masked Block, into two heads: 4 class
    scores from the block's output, 2 regression values from the embedding and that output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.block = Block()
        self.cls = torch.nn.Linear(16, 4)
        self.reg = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(x)
        h = self.block(e) * mask
        return self.cls(h), self.reg(torch.cat((e, h), dim=-1))


def build_model() -> Heads:
    """The torch twin of residual.lyr in float32, state_dict keys as in residual.lyr. The
    LayerNorm's weight and bias are drawn too (torch starts them at 1 and 0), so the test
    vectors depend on their loading."""
    torch.manual_seed(SEED)
    model = Heads()
    with torch.no_grad():
        model.block.norm.weight.uniform_(0.5, 1.5)
        model.block.norm.bias.uniform_(-0.5, 0.5)
    return model.eval()


def reference(module: torch.nn.Module, *inputs: np.ndarray) -> list[np.ndarray]:
    """The module's outputs for `inputs`, computed in float64 (weights and inputs widened
    exactly), as a list of arrays whether the module returns one tensor or a tuple."""
    wide = module.to(torch.float64)
    with torch.no_grad():
        out = wide(*(torch.from_numpy(x.astype(np.float64)) for x in inputs))
    module.to(torch.float32)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)

    model = build_model()
    state = {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}
    save_file(state, str(out / "residual_weights.safetensors"))

    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((BATCH, 8)).astype(np.float32)
    mask = (rng.random((BATCH, 16)) < 0.75).astype(np.float32)
    block_x = rng.standard_normal((BATCH, 16)).astype(np.float32)
    np.save(out / "residual_x.npy", x)
    np.save(out / "residual_mask.npy", mask)
    np.save(out / "residual_block_x.npy", block_x)
    cls, reg = reference(model, x, mask)
    np.save(out / "residual_cls_expect.npy", cls)
    np.save(out / "residual_reg_expect.npy", reg)
    (block,) = reference(model.block, block_x)
    np.save(out / "residual_block_expect.npy", block)


if __name__ == "__main__":
    main()
