"""`layerc run --dask`: the files of a folder run (layerc/tools/run.py) spread over a Dask cluster,
one task per input file, and each task's `FileResult` handed back as it completes.

This process never imports the model: what reaches every worker, once, is how to make it (a
`Build`: the generated module's source and weights, and the model's name), and each worker makes
its own instance when its first task starts, all of them at once. A worker needs layerc but not
the generated file (it writes it to its cache), and finds the kernels an earlier process of its
machine compiled in numba's cache. Each task reads its input on the worker, runs it, writes the output and its
completion record there (both renamed into place), and returns a small summary; a mistake in a
file comes back as a failed result, and the other files go on. A worker that dies mid-task
(killed, or out of memory) costs only its task, which the scheduler runs again elsewhere; a file
whose workers keep dying is given up after distributed's `allowed-failures` and reported. The
workers must see the input and output folders at the paths this process sees (one machine, or
a shared filesystem).

Dask is optional (`pip install layerc[dask]`): only this module imports it, and only
`layerc run --dask` imports this module.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib.util
import logging
import os
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import UsageError
from .run import Build, FileJob, FileResult, Recipe, run_file, unexpected

LOCAL = "local"


def parse_where(text: str) -> int | str:
    """What `--dask` names: a number of local worker processes (`local:N`; `local` alone is
    one per core), or the address of a running scheduler (`tcp://HOST:PORT`, or any address
    distributed connects to)."""
    if importlib.util.find_spec("distributed") is None:
        raise UsageError("--dask needs Dask's distributed scheduler: pip install 'layerc[dask]'")
    if text != LOCAL and not text.startswith(f"{LOCAL}:"):
        return text
    count = text.partition(":")[2]
    if not count:
        return os.cpu_count() or 1
    if not count.isdigit() or int(count) < 1:
        raise UsageError(
            f"--dask {text!r}: give local:N with N the number of worker processes (local:2), "
            "or a scheduler's address (tcp://HOST:PORT)"
        )
    return int(count)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError(
            "--dask needs Dask's distributed scheduler: pip install 'layerc[dask]'"
        ) from None
    return distributed


def local_cluster(workers: int) -> Any:
    """A `distributed.LocalCluster` of `workers` processes of one thread each, as `--dask
    local:N` starts it.

    Its workers allocate memory as a plain process does: Dask's nanny starts workers with
    MALLOC_TRIM_THRESHOLD_ set, which also fixes glibc's mmap threshold at 128 KiB, so that
    every buffer of a chunk (the input rows, the activations between layers) is mapped afresh
    and faulted in page by page at every chunk, about a fifth of the time of a run here. And
    they run no statistical profiler (it samples every thread's stack every 10 ms, for a
    dashboard page no one looks at here), which slows each file by a tenth."""
    distributed = _distributed()
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    settings = {
        "distributed.nanny.pre-spawn-environ": environ,
        "distributed.worker.profile.enabled": False,
    }
    with dask.config.set(settings):
        return distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            preload=[__name__],  # dask_setup, below: numba made ready while the model comes
            dashboard_address=":0",  # any free port: 8787 may be another cluster's
            # The workers' and scheduler's own logs stay quiet: a worker that dies costs a
            # retry, and a file that fails is reported by name.
            silence_logs=logging.CRITICAL,
        )


@contextlib.contextmanager
def connect(where: int | str) -> Iterator[Any]:
    """A client of the cluster `where` names (see `parse_where`): N worker processes started
    on this machine (`local_cluster`, closed at the end), or a running scheduler."""
    distributed = _distributed()
    if isinstance(where, int):
        environ = dict(os.environ)
        try:
            with local_cluster(where) as cluster:
                with distributed.Client(cluster, set_as_default=False) as client:
                    yield client
        finally:
            # Dask's nanny sets its workers' environment variables (MALLOC_TRIM_THRESHOLD_,
            # OMP_NUM_THREADS, PYTHONHASHSEED...) in this process's environment to spawn them,
            # and leaves them there; they are put back as they were.
            os.environ.clear()
            os.environ.update(environ)
        return
    try:
        client = distributed.Client(where, set_as_default=False, timeout="20s")
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"--dask {where}: cannot connect to a Dask scheduler: {exc}") from None
    with client:
        yield client


def run_on_dask(
    where: int | str,
    build: Build,
    recipe: Recipe,
    jobs: list[FileJob],
    report: Callable[[FileResult], None],
) -> None:
    """Run `jobs` on the cluster `where` names, one task per file, reporting each result as
    its task completes (in no particular order). The workers make the model with `build`."""
    distributed = _distributed()
    with connect(where) as client:
        run = uuid.uuid4().hex[:12]
        # The build as a task's result rather than scattered data: a worker fetches it from
        # one that has it, once, and should every worker holding it die, the scheduler makes
        # it again from the task (it keeps the pickle), where scattered data would be lost and
        # every task waiting for it cancelled.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            model = client.submit(_given, build, key=f"layerc-model-{run}", pure=False)
        # One graph of a task per file, given in order (the scheduler starts them in that
        # order, as many at a time as the workers have threads).
        tasks = client.map(
            _task,
            jobs,
            net=model,
            recipe=recipe,
            key=[task_key(job, run) for job in jobs],
            pure=False,
            retries=1,  # an exception (not a data error: those are results) gets one retry
        )
        futures = dict(zip(tasks, jobs, strict=True))
        done = distributed.as_completed(
            tasks, loop=client.loop, with_results=True, raise_errors=False
        )
        for future, result in done:
            if future.status == "error":
                report(_lost(futures[future], future.exception(), distributed))
            else:
                report(result)
            future.release()


def task_key(job: FileJob, run: str) -> str:
    """The task of `job` in the run `run`, as the dashboard and the workers' logs name it:
    `layerc-run-<output name>-<run>`."""
    return f"layerc-run-{os.path.basename(job.output)}-{run}"


def _lost(job: FileJob, exc: BaseException, distributed: Any) -> FileResult:
    """The result of a task that raised, or whose workers kept dying."""
    if isinstance(exc, distributed.KilledWorker):
        tries = getattr(exc, "allowed_failures", None)
        times = f" {tries + 1} times" if isinstance(tries, int) else " again and again"
        key = getattr(exc, "task", None) or (exc.args[0] if exc.args else "?")
        return FileResult(
            job,
            0,
            f"the Dask workers running it died{times} (out of memory? killed?), so it was given "
            f"up (its task: {key})",
        )
    return unexpected(job, exc)


# ------------------------------------------------------------------------------ on the workers


def dask_setup(worker: Any) -> None:
    """Run by each worker of a `local_cluster` as it starts (a preload): numba's compiler is
    made ready, and the matrix product loaded, on a thread of their own, while the worker
    joins the cluster and this process sends the model. That is a third of a second of a
    worker's start that no longer stands between the model's arrival and its first file."""
    threading.Thread(target=_warm, name="layerc-warm", daemon=True).start()


def _warm() -> None:
    import numpy as np

    from ..runtime import gemm

    with contextlib.suppress(Exception):  # a failure here is met again, and reported, in a task
        gemm.load(np.float32)


_BUILT: dict[int, Any] = {}  # id(build): its model, while the worker holds that build
_BUILT_LOCK = threading.Lock()
_FROZEN_AT_EXIT: list[bool] = []


def _given(build: Build) -> Build:
    """The build, as a task's result that every worker fetches once."""
    return build


def _task(job: FileJob, *, net: Build, recipe: Recipe) -> FileResult:
    return run_file(_model(net), recipe, job)


def _model(build: Build) -> Any:
    """The model `build` makes, made once per worker process (a worker keeps the one `build`
    object its tasks share) and dropped with it when the run is over.

    Making it also holds BLAS to one thread, so that N single-threaded workers on N cores do
    not fight over them (layerc's kernels run on the calling thread; this limits what NumPy
    calls); and it lets the worker process end without Python's last garbage collection,
    which walks every object numba made (a quarter of a second, at every cluster's close)."""
    with _BUILT_LOCK:
        model = _BUILT.get(id(build))
        if model is None:
            from ..runtime.threads import set_num_threads

            set_num_threads(1)
            model = _BUILT[id(build)] = build()
            weakref.finalize(build, _BUILT.pop, id(build), None)
            if not _FROZEN_AT_EXIT:
                atexit.register(gc.freeze)
                _FROZEN_AT_EXIT.append(True)
        return model
