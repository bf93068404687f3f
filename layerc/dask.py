"""Batch inference on Dask: `predict(net, *data)` runs a layerc model over a `dask.array` (one
per input of the model) or a `dask.dataframe` whose columns are the features, and returns the
outputs as lazy dask arrays.

How it works:

- The model goes to each worker once. With a `distributed.Client` (the current one, or
  `client=`), the model is scattered to every worker (`client.scatter(..., broadcast=True)`) and
  the tasks refer to it by its key: each worker unpickles it once and every task on that worker
  gets that copy. On the local schedulers (no client), the model is one node of the graph
  (`dask.delayed`), which every task depends on, instead of a copy in every task. A model pickles
  self-contained (layerc.runtime.portable), so a worker needs layerc installed but not the
  generated `.py` file; numba's disk cache in the per-user layerc cache serves each kernel
  compiled once per machine.
- One task per row chunk runs the model once on the chunk (all of the model's inputs), after
  converting each input block to a C-contiguous array of the model's dtype (so the compiled
  kernel is not specialised again for another layout or dtype: a dataframe partition arrives
  F-ordered). A model of several outputs gives a tuple per chunk, which is split into one dask
  array per output: computed together (`dask.compute(*outputs)`), each chunk runs once.
- Inputs are chunked along rows only: other axes are rechunked to one chunk, and every input is
  rechunked to the row chunks of the first.

Importing `layerc` never imports Dask; importing this module does.
"""

from __future__ import annotations

import math
import operator
import sys
import uuid
from typing import Any

import numpy as np

from .runtime import Module

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("layerc.dask needs Dask: install it with `pip install layerc[dask]`") from exc

__all__ = ["predict"]


def predict(
    net: Any, *data: Any, columns: Any = None, client: Any = None
) -> da.Array | tuple[da.Array, ...]:
    """The outputs of `net` on `data`, lazily: a dask array of shape `(n, *out_shape)` and the
    model's dtype, with the row chunks of the input, or a tuple of them for a model of several
    outputs (compute them together, `dask.compute(*outputs)`, so each chunk runs once).

    `data` is one `dask.array.Array` per input of the model, in `forward`'s order, each of shape
    `(n, *sample_shape)` or `(n, prod(sample_shape))` (flattened samples), of any real dtype and
    memory order; or one `dask.dataframe.DataFrame` whose columns (`columns=[...]` selects and
    orders them; default: all) are the features of the model's one input, which gives arrays
    whose row chunk sizes are unknown until computed, as `DataFrame.to_dask_array()` does.

    `client` is the `distributed.Client` that will compute the result (default: the current
    client if there is one, else none: the model is then a node of the graph, for Dask's local
    schedulers). With a client, the model is sent to each of its workers once, now."""
    if not isinstance(net, Module):
        raise TypeError(f"predict() runs a layerc model, got {type(net).__name__}")
    if not data:
        raise TypeError("predict() needs the model's input data: predict(net, x, ...)")
    names, in_shapes, out_shapes = net.input_names, net.in_shapes, net.out_shapes
    dtype = np.dtype(net.dtype)
    model = net._get_name()

    if _is_dataframe(data[0]):
        if len(data) != 1:
            raise TypeError("predict() takes one DataFrame (the features of the model's one input)")
        if len(names) != 1:
            raise TypeError(
                f"{model} takes {len(names)} inputs ({', '.join(names)}); a DataFrame gives one: "
                "pass one dask array per input"
            )
        arrays = [_dataframe_features(data[0], columns, in_shapes[0], model)]
    else:
        if columns is not None:
            raise TypeError("columns= selects the features of a DataFrame; data is not one")
        arrays = list(data)
    if len(arrays) != len(names):
        raise TypeError(
            f"{model} takes {len(names)} input{'' if len(names) == 1 else 's'} "
            f"({', '.join(names)}), got {len(arrays)}"
        )

    samples = []  # each input's per-sample shape, as the model takes it
    for i, (x, name, shape) in enumerate(zip(arrays, names, in_shapes, strict=True)):
        if not isinstance(x, da.Array):
            raise TypeError(
                f"input {name!r} must be a dask array or a dask DataFrame, "
                f"got {type(x).__name__} (wrap it with dask.array.from_array)"
            )
        if x.dtype.kind not in "biuf":
            raise TypeError(f"input {name!r} must hold real numbers, got dtype {x.dtype}")
        sample = _sample_shape(x.shape, shape)
        if sample is None:
            raise ValueError(
                f"input {name!r} of {model} {_takes(shape)}, got shape {_fmt(x.shape)}"
            )
        samples.append(sample)
        if any(len(c) > 1 for c in x.chunks[1:]):  # chunked along rows only
            x = x.rechunk({axis: -1 for axis in range(1, x.ndim)})
        arrays[i] = x
    arrays = _aligned_rows(arrays, names)
    outs = [
        out if out is not None else samples[0]  # a layer of any shape gives its input's shape
        for out in out_shapes
    ]

    model_arg = _send(net, client)
    rows = ("rows",)
    args: list[Any] = []
    for i, x in enumerate(arrays):
        args += [x, rows + tuple(f"in{i}.{axis}" for axis in range(1, x.ndim))]
    kwargs = {"samples": tuple(samples), "as_dtype": dtype}
    if len(outs) == 1:
        out_axes = {f"out.{axis}": size for axis, size in enumerate(outs[0])}
        return da.blockwise(
            _run,
            rows + tuple(out_axes),
            model_arg,
            None,
            *args,
            new_axes=out_axes,
            concatenate=True,
            dtype=dtype,
            meta=np.empty((0,) * (1 + len(outs[0])), dtype),
            token=f"layerc-{model}",
            align_arrays=False,
            **kwargs,
        )
    metas = tuple(np.empty((0,) * (1 + len(out)), dtype) for out in outs)
    chunks = da.blockwise(
        _run,
        rows,
        model_arg,
        None,
        *args,
        concatenate=True,
        meta=metas,
        token=f"layerc-{model}",
        align_arrays=False,
        **kwargs,
    )
    return tuple(
        chunks.map_blocks(
            operator.getitem,
            j,
            new_axis=list(range(1, 1 + len(out))),
            chunks=(chunks.chunks[0], *((size,) for size in out)),
            meta=metas[j],
            token=f"layerc-{model}-{j}",
        )
        for j, out in enumerate(outs)
    )


def _run(net: Any, *blocks: np.ndarray, samples: tuple, as_dtype: np.dtype) -> Any:
    """One task: the model on one row chunk of every input, each block made a C-contiguous array
    of the model's dtype and given its per-sample shape."""
    xs = [
        np.ascontiguousarray(block, dtype=as_dtype).reshape((block.shape[0], *sample))
        for block, sample in zip(blocks, samples, strict=True)
    ]
    return net(*xs)


def _send(net: Any, client: Any) -> Any:
    """What the tasks get the model through: a future of it, on every worker of the client (the
    current one by default); without a client, a node of the graph holding it."""
    if client is None:
        client = _current_client()
    if client is not None:
        # A list of one: a model is also a sequence of its layers, which scatter must not unpack.
        [future] = client.scatter([net], broadcast=True, hash=False)
        return future
    return dask.delayed(net, name=f"layerc-model-{uuid.uuid4().hex}")


def _current_client() -> Any:
    """The current distributed client, or None (distributed not imported means there is none)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.default_client()
    except ValueError:
        return None


def _is_dataframe(x: Any) -> bool:
    dd = sys.modules.get("dask.dataframe")  # not imported: x cannot be one
    return dd is not None and isinstance(x, dd.DataFrame)


def _dataframe_features(
    df: Any, columns: Any, shape: tuple[int, ...] | None, model: str
) -> da.Array:
    """The feature columns of `df` as a dask array of rows (row chunk sizes unknown), checked
    against the per-sample `shape` of the model's input (flattened)."""
    if columns is not None:
        columns = [columns] if isinstance(columns, str) else list(columns)
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the DataFrame")
        df = df[columns]
    bad = [
        f"{c!r} ({t})"
        for c, t in df.dtypes.items()
        if not (isinstance(t, np.dtype) and t.kind in "biuf")
    ]
    if bad:
        raise TypeError(
            f"feature columns must hold real numbers (NumPy dtypes), got {', '.join(bad)}; "
            "select the features with columns=[...] or convert them with astype"
        )
    width = len(df.columns)
    if shape is not None and width != math.prod(shape):
        raise ValueError(
            f"{model} takes {math.prod(shape)} features per row, the DataFrame has {width} "
            f"feature column{'' if width == 1 else 's'}"
        )
    return df.to_dask_array()


def _sample_shape(shape: tuple, expected: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The per-sample shape of an array of `shape` (rows first) for an input of `expected`
    shape (None: any); None when it holds neither those samples nor them flattened."""
    if len(shape) == 0:
        return None
    if expected is None:
        return tuple(shape[1:])
    if tuple(shape[1:]) == expected or tuple(shape[1:]) == (math.prod(expected),):
        return expected
    return None


def _aligned_rows(arrays: list[da.Array], names: tuple[str, ...]) -> list[da.Array]:
    """The inputs with the row chunks of the first (rechunked when they differ). Row chunks of
    unknown sizes (from dataframes) are taken as aligned when there are as many of them: the
    model checks each task's inputs have as many rows when it runs."""
    first = arrays[0].chunks[0]
    aligned = [arrays[0]]
    for x, name in zip(arrays[1:], names[1:], strict=True):
        rows = x.chunks[0]
        if _same(rows, first):
            aligned.append(x)
            continue
        if any(math.isnan(c) for c in (*first, *rows)):
            raise ValueError(
                f"input {name!r} and input {names[0]!r} have different row chunks of unknown "
                "sizes, which cannot be aligned: call .compute_chunk_sizes() on both first"
            )
        if sum(rows) != sum(first):
            raise ValueError(
                f"the inputs must have one row per sample each: {names[0]!r} has {sum(first)} "
                f"rows, {name!r} has {sum(rows)}"
            )
        aligned.append(x.rechunk({0: first}))
    return aligned


def _same(a: tuple, b: tuple) -> bool:
    """Whether two tuples of chunk sizes are equal, unknown (NaN) sizes equal to each other."""
    return len(a) == len(b) and all(
        x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True)
    )


def _takes(shape: tuple[int, ...] | None) -> str:
    """What an input of per-sample `shape` takes: `takes shape (n, 8)`."""
    if shape is None:
        return "takes shape (n, ...)"
    dims = ", ".join(map(str, shape))
    flat = f", or (n, {math.prod(shape)}) flattened" if len(shape) > 1 else ""
    return f"takes shape (n, {dims}){flat}"


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
