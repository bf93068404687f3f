"""The numbers of a quantised Linear (`quantize=int8`), in NumPy: its int8 weight, the layout the
kernels read it in, and the names and shapes of what they take (layerc/runtime/q8.py has the
kernels; this module needs no numba, so that the compiler can use it).

Each output's row of the weight is quantised on its own, symmetrically:
scale[o] = max|W[o, :]| / 127 and q[o, k] = round(W[o, k] / scale[o]), in -127..127.
"""

from __future__ import annotations

import numpy as np

LANES = 16  # int32 lanes of a 512-bit vector: the outputs one vpdpbusd computes
BLOCK = 4 * LANES  # outputs per tile of several rows; outputs are padded to a multiple of it
MAX_IN = 65536  # inputs of a quantised Linear at most: one row's bytes on the stack, exact int32

# What a quantised Linear's kernel takes in place of its weight (then its bias if it has one):
# one int8 array (see `pack`), so that a call passes as many arrays as a float Linear's (each
# array costs numba's dispatcher about 50 ns a call).
TENSORS = ("_q8_weight",)
DTYPE = np.dtype(np.int8)  # theirs, whatever the model's
EXTRA_ROWS = 3  # after the packed weight: each output's sum of q, then its scale (up to 2 rows)


def shapes(out_features: int, in_features: int) -> tuple[tuple[int, ...], ...]:
    """The shapes of TENSORS for a Linear(in_features, out_features)."""
    width = -(-out_features // BLOCK) * BLOCK
    return ((-(-in_features // 4) + EXTRA_ROWS, 4 * width),)


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q, scale): the int8 weight (out, in) and each output's scale, in the weight's dtype.
    The scale is a fixed point of the scheme, so the dequantised weight `q * scale` quantises
    to the same q and scale again (a state_dict loads back unchanged)."""
    w = np.asarray(weight)
    scale = np.max(np.abs(w), axis=1) / w.dtype.type(127) if w.shape[1] else np.zeros(len(w))
    scale = scale.astype(w.dtype)
    for _ in range(4):
        safe = np.where(scale > 0, scale, w.dtype.type(1))
        q = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
        again = (np.max(np.abs(q * scale[:, None]), axis=1) / w.dtype.type(127)).astype(w.dtype)
        if np.array_equal(again, scale):
            break
        w, scale = q * scale[:, None], again
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float weight a quantised one stands for."""
    return (q * scale[:, None]).astype(scale.dtype)


def pack(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The array a quantised Linear's kernel reads, for its int8 weight q (out, in) and scales:
    int8, 64-byte aligned, of shape (G + EXTRA_ROWS, 4 * W) with G = ceil(in / 4) groups of
    inputs and the outputs padded to W, a multiple of BLOCK. Row g < G holds the group's weights,
    each output's 4 next to each other: row[4 * o + j] = q[o, 4 * g + j] (zeros past the
    weight). Row G holds each output's sum of q (int32, for the inputs' zero point), and rows
    G + 1 on its scale (in the scale's dtype)."""
    m, k = q.shape
    groups = -(-k // 4)
    width = -(-m // BLOCK) * BLOCK
    padded = np.zeros((width, groups * 4), dtype=np.int8)
    padded[:m, :k] = q
    packed = aligned_zeros((groups + EXTRA_ROWS, width * 4), np.dtype(np.int8))
    packed[:groups] = padded.reshape(width, groups, 4).transpose(1, 0, 2).reshape(groups, -1)
    flat = packed.reshape(-1)
    row = 4 * width
    flat[groups * row : groups * row + 4 * m] = (
        q.astype(np.int32).sum(axis=1, dtype=np.int32).view(np.int8)
    )
    at = (groups + 1) * row
    flat[at : at + scale.nbytes] = np.ascontiguousarray(scale).view(np.int8)
    return packed


def tensors(weight: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """(the dequantised weight, the arrays TENSORS names) for a float weight (out, in)."""
    q, scale = quantize_weight(weight)
    return dequantize(q, scale), (pack(q, scale),)


def aligned_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """np.zeros(shape, dtype) whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(count * dtype.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)
