"""layerc benchmark: the same models in PyTorch eager, ONNX Runtime, NumPy and layerc, measured in
one run on this machine.

    python bench/bench.py            # everything (about 3 minutes on 2 cores)
    python bench/bench.py --quick    # fewer repetitions

For each case it checks that all outputs agree with a NumPy float64 reference, then prints the
median time per call of each and its ratio to layerc (ratio > 1: layerc is that many times
faster). Threads are pinned with threadpoolctl (BLAS), torch.set_num_threads and ONNX Runtime's
session options. Needs the test extras (torch, onnx, onnxruntime) installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import layerc
from layerc import driver

MLP_SIZES = (784, 256, 128, 10)


def median_time(fn: Callable[[], object], min_time: float, repeats: int) -> float:
    """Median seconds per call over `repeats` rounds of at least `min_time` seconds each."""
    fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time / 10 or number >= 1 << 20:
            break
        number *= 4
    number = max(1, int(number * (min_time / max(elapsed, 1e-9))))
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return statistics.median(rounds)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.2f} s "


# --------------------------------------------------------------------------- models


def lyr_source() -> str:
    return textwrap.dedent(
        """\
        # The lesson's layer and the benchmark MLP.
        model Seed {
            fc = Linear(in_features=4, out_features=3, bias=false) {
                weight = [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]]
            }
        }

        model MLP {
            fc1 = Linear(784, 256) { init = uniform(seed=1) }
            ReLU()
            fc2 = Linear(256, 128) { init = uniform(seed=2) }
            ReLU()
            fc3 = Linear(128, 10) { init = uniform(seed=3) }
        }
        """
    )


def torch_models(seed_net, mlp_net):  # type: ignore[no-untyped-def]
    import torch

    seed = torch.nn.Sequential()
    seed.add_module("fc", torch.nn.Linear(4, 3, bias=False))
    seed.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in seed_net.state_dict().items()})
    mlp = torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    sd = {
        k.replace("fc1", "0").replace("fc2", "2").replace("fc3", "4"): torch.from_numpy(v.copy())
        for k, v in mlp_net.state_dict().items()
    }
    mlp.load_state_dict(sd)
    return seed.eval(), mlp.eval()


def onnx_model(layers: list[tuple[np.ndarray, np.ndarray | None, bool]], in_features: int) -> bytes:
    """An ONNX graph of Gemm (+ Relu) nodes with a dynamic batch dimension."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    current = "x"
    for i, (w, b, relu) in enumerate(layers):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inputs = [current, f"w{i}"]
        if b is not None:
            inits.append(numpy_helper.from_array(b, f"b{i}"))
            inputs.append(f"b{i}")
        out = f"g{i}"
        nodes.append(helper.make_node("Gemm", inputs, [out], transB=1))
        if relu:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        current = out
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    out_features = layers[-1][0].shape[0]
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_features])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def ort_session(model: bytes, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle ORT threads would otherwise spin and steal the cores from whatever runs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- cases


class Table:
    def __init__(self) -> None:
        self.rows: list[str] = []

    def case(self, title: str, times: dict[str, float], extra: str = "") -> None:
        base = times["layerc"]
        print(f"\n{title}{('  ' + extra) if extra else ''}")
        for name, t in times.items():
            ratio = "" if name == "layerc" else f"   {t / base:6.2f}x layerc"
            print(f"  {name:28s} {fmt_time(t)}{ratio}")
        others = " | ".join(
            f"{name} {t / base:.2f}x" for name, t in times.items() if name != "layerc"
        )
        self.rows.append(f"| {title} | {fmt_time(base).strip()} | {others} |")


def check_close(name: str, got: np.ndarray, ref: np.ndarray) -> None:
    got = np.asarray(got, dtype=np.float64)
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    if got.shape != ref.shape or not np.allclose(got, ref, atol=tol, rtol=1e-4):
        raise SystemExit(f"{name}: output differs from the NumPy float64 reference")


def reference(
    layers: list[tuple[np.ndarray, np.ndarray | None, bool]], x: np.ndarray
) -> np.ndarray:
    h = x.astype(np.float64)
    for w, b, relu in layers:
        h = h @ w.astype(np.float64).T + (0.0 if b is None else b.astype(np.float64))
        if relu:
            h = np.maximum(h, 0.0)
    return h


def numpy_forward(
    layers: list[tuple[np.ndarray, np.ndarray | None, bool]],
) -> Callable[[np.ndarray], np.ndarray]:
    transposed = [(np.ascontiguousarray(w.T), b, relu) for w, b, relu in layers]

    def forward(x: np.ndarray) -> np.ndarray:
        h = x
        for wt, b, relu in transposed:
            h = h @ wt
            if b is not None:
                h += b
            if relu:
                np.maximum(h, 0, out=h)
        return h

    return forward


def run(args: argparse.Namespace) -> None:
    import torch

    min_time = 0.05 if args.quick else 0.2
    repeats = 5 if args.quick else 9
    work = Path(tempfile.mkdtemp(prefix="layerc-bench-"))
    src = work / "benchmodels.lyr"
    src.write_text(lyr_source())
    start = time.perf_counter()
    driver.compile_file(src, work / "benchmodels.py")
    compile_seconds = time.perf_counter() - start
    module = driver.import_module(work / "benchmodels.py", "benchmodels")
    seed_net, mlp_net = module.Seed(), module.MLP()
    torch_seed, torch_mlp = torch_models(seed_net, mlp_net)
    sd = mlp_net.state_dict()
    mlp_layers = [
        (sd["fc1.weight"], sd["fc1.bias"], True),
        (sd["fc2.weight"], sd["fc2.bias"], True),
        (sd["fc3.weight"], sd["fc3.bias"], False),
    ]
    seed_layers = [(seed_net.fc.weight, None, False)]
    table = Table()
    rng = np.random.default_rng(0)

    # Load every BLAS before limiting threads: threadpoolctl limits only loaded libraries.
    seed_net(np.ones(4, np.float32))
    mlp_net(np.ones((2, 784), np.float32))
    print(
        f"layerc {layerc.__version__} | Python {platform.python_version()} | "
        f"numpy {np.__version__} | torch {torch.__version__} | "
        f"{platform.processor() or platform.machine()} | {os.cpu_count()} cores"
    )

    with threadpool_limits(1):
        torch.set_num_threads(1)
        # Linear(4, 3), one sample
        x = np.array([1, 2, 3, 4], dtype=np.float32)
        tx = torch.from_numpy(x)
        sess = ort_session(onnx_model(seed_layers, 4), 1)
        x2 = x.reshape(1, 4)
        kernel, weight, out = module._forward_Seed, seed_net.fc.weight, np.empty(3, np.float32)
        ref = reference(seed_layers, x)
        check_close("layerc", seed_net(x), ref)
        check_close("torch", torch_seed(tx).detach().numpy(), ref)
        check_close("onnxruntime", sess.run(None, {"x": x2})[0][0], ref)
        w = seed_net.fc.weight
        eager = median_time(lambda: torch_seed(tx), min_time, repeats)
        with torch.inference_mode():
            times = {
                "layerc": median_time(lambda: seed_net(x), min_time, repeats),
                "torch eager": eager,
                "torch eager (inference_mode)": median_time(
                    lambda: torch_seed(tx), min_time, repeats
                ),
                "onnxruntime": median_time(lambda: sess.run(None, {"x": x2}), min_time, repeats),
                "numpy W @ x": median_time(lambda: w @ x, min_time, repeats),
                "bare numba kernel, prealloc": median_time(
                    lambda: kernel(x, out, weight), min_time, repeats
                ),
            }
        table.case("Linear(4, 3), 1 sample", times)

        # MLP at batch 1, 64, 4096, one thread
        sess = ort_session(onnx_model(mlp_layers, 784), 1)
        np_forward = numpy_forward(mlp_layers)
        for batch in (1, 64, 4096):
            xb = rng.standard_normal((batch, 784), dtype=np.float32)
            xin = xb[0] if batch == 1 else xb
            txb = torch.from_numpy(xin)
            ref = reference(mlp_layers, xin)
            check_close("layerc", mlp_net(xin), ref)
            check_close("torch", torch_mlp(txb).detach().numpy(), ref)
            check_close("onnxruntime", sess.run(None, {"x": xb})[0].reshape(ref.shape), ref)
            check_close("numpy", np_forward(xin), ref)
            eager = median_time(lambda: torch_mlp(txb), min_time, repeats)
            with torch.inference_mode():
                times = {
                    "layerc": median_time(lambda: mlp_net(xin), min_time, repeats),
                    "torch eager": eager,
                    "torch eager (inference_mode)": median_time(
                        lambda: torch_mlp(txb), min_time, repeats
                    ),
                    "onnxruntime": median_time(
                        lambda: sess.run(None, {"x": xb}), min_time, repeats
                    ),
                    "numpy": median_time(lambda: np_forward(xin), min_time, repeats),
                }
            extra = ""
            if batch == 4096:
                flops = (
                    2 * batch * sum(a * b for a, b in zip(MLP_SIZES, MLP_SIZES[1:], strict=False))
                )
                extra = f"layerc {flops / times['layerc'] / 1e9:.1f} GFLOP/s; " + sgemm_rate(
                    min_time, repeats
                )
                mlp_one_thread = times["layerc"]
            table.case(f"MLP 784-256-128-10, batch {batch}, 1 thread", times, extra)

        # one forward hook per layer on both (each hook counts its calls)
        seen = []
        handles = [
            m.register_forward_hook(lambda mod, a, o: seen.append(1)) for m in mlp_net.children()
        ]
        thandles = [
            m.register_forward_hook(lambda mod, a, o: seen.append(1)) for m in torch_mlp.children()
        ]
        for batch in (1, 64):
            xb = rng.standard_normal((batch, 784), dtype=np.float32)
            xin = xb[0] if batch == 1 else xb
            txb = torch.from_numpy(xin)
            check_close("layerc with hooks", mlp_net(xin), reference(mlp_layers, xin))
            eager = median_time(lambda: torch_mlp(txb), min_time, repeats)
            with torch.inference_mode():
                times = {
                    "layerc": median_time(lambda: mlp_net(xin), min_time, repeats),
                    "torch eager": eager,
                    "torch eager (inference_mode)": median_time(
                        lambda: torch_mlp(txb), min_time, repeats
                    ),
                }
            table.case(f"MLP batch {batch}, one forward hook per layer", times)
        for h in handles + thandles:
            h.remove()

    # two threads
    with threadpool_limits(2):
        torch.set_num_threads(2)
        sess = ort_session(onnx_model(mlp_layers, 784), 2)
        xb = rng.standard_normal((4096, 784), dtype=np.float32)
        txb = torch.from_numpy(xb)
        check_close("layerc 2 threads", mlp_net(xb), reference(mlp_layers, xb))
        with torch.inference_mode():
            times = {
                "layerc": median_time(lambda: mlp_net(xb), min_time, repeats),
                "torch eager (inference_mode)": median_time(
                    lambda: torch_mlp(txb), min_time, repeats
                ),
                "onnxruntime": median_time(lambda: sess.run(None, {"x": xb}), min_time, repeats),
                "numpy": median_time(lambda: np_forward(xb), min_time, repeats),
            }
        speedup = mlp_one_thread / times["layerc"]
        table.case(
            "MLP batch 4096, 2 threads",
            times,
            f"layerc 2 threads = {speedup:.2f}x its 1-thread rate",
        )

    startup(work, compile_seconds)
    print("\nMarkdown rows (case | layerc | others relative to layerc):")
    for row in table.rows:
        print(row)


def sgemm_rate(min_time: float, repeats: int) -> str:
    """The sgemm rate on the MLP's largest product, as this machine's BLAS gives it."""
    from scipy.linalg.blas import sgemm

    a = np.asfortranarray(np.random.default_rng(1).standard_normal((4096, 784), dtype=np.float32))
    b = np.asfortranarray(np.random.default_rng(2).standard_normal((784, 256), dtype=np.float32))
    t = median_time(lambda: sgemm(1.0, a, b), min_time, repeats)
    return f"sgemm alone {2 * 4096 * 784 * 256 / t / 1e9:.1f} GFLOP/s"


def startup(work: Path, compile_seconds: float) -> None:
    """Compile time, first call in a new process without and with numba's cache."""
    script = (
        "import time; t = time.perf_counter(); import numpy as np; import benchmodels; "
        "m = benchmodels.MLP(); m(np.ones(784, np.float32)); print(time.perf_counter() - t)"
    )
    env = dict(os.environ, PYTHONPATH=str(work))
    cli = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "layerc.cli",
            "compile",
            str(work / "benchmodels.lyr"),
            "-o",
            str(work / "benchmodels.py"),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    cli = time.perf_counter() - cli
    for cache in work.glob("__pycache__/*.nb*"):
        cache.unlink()
    cold = float(
        subprocess.run(
            [sys.executable, "-c", script],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
        ).stdout
    )
    cached = float(
        subprocess.run(
            [sys.executable, "-c", script],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
        ).stdout
    )
    print("\nStart-up (MLP)")
    print(f"  compile (in process)         {fmt_time(compile_seconds)}")
    print(f"  `layerc compile` (CLI)       {fmt_time(cli)}   (Python start-up included)")
    print(f"  first call, new process      {fmt_time(cold)}   (numba compiles; import included)")
    print(f"  first call, cached           {fmt_time(cached)}   (numba cache; import included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
