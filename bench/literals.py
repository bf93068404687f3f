"""What a large numeric literal costs the front end: peak memory and time to parse and to check a
.lyr file whose Linear weight is written inline.

    python bench/literals.py              # 1 MB and 6 MB literals
    python bench/literals.py --mb 1 6 20  # other sizes
    python bench/literals.py --style digits

Each size runs in a fresh process (so peak RSS is that run's own); it prints the source size,
the CPU time of `syntax.parse`, the CPU time of a whole `driver.check_file` (parse and check),
the process's peak RSS after those two, and then the peak Python allocation (tracemalloc) of
one more `syntax.parse`, measured apart because tracing slows parsing down.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def source(megabytes: float, style: str) -> str:
    """A float32 model whose weight literal is about `megabytes` MB: 7-decimal fractions
    (`-0.1234567, `) or, densest in numbers per byte, single digits (`3,`)."""
    per_value = len("-0.1234567, ") if style == "decimals" else len("3,")
    side = int((megabytes * 1e6 / per_value) ** 0.5)
    rng = np.random.default_rng(0)
    if style == "decimals":
        weight = rng.uniform(-1, 1, size=(side, side))
        rows = ",\n".join("[" + ", ".join(f"{v:.7f}" for v in row) + "]" for row in weight)
    else:
        digits = rng.integers(0, 10, size=(side, side))
        rows = ",\n".join("[" + ",".join(map(str, row)) + "]" for row in digits)
    return (
        f"model Big {{\n    fc = Linear({side}, {side}, bias=false) {{\n"
        f"        weight = [{rows}]\n    }}\n}}\n"
    )


def measure(megabytes: float, style: str) -> dict[str, float]:
    from layerc import driver, syntax

    text = source(megabytes, style)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.lyr"
        path.write_text(text, encoding="utf-8")
        start = time.process_time()
        syntax.parse(text, "big.lyr")
        parse_s = time.process_time() - start
        start = time.process_time()
        driver.check_file(path)
        check_s = time.process_time() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tracemalloc.start()
        syntax.parse(text, "big.lyr")
        parse_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {
        "bytes": len(text.encode()),
        "parse_s": parse_s,
        "parse_peak": parse_peak,
        "check_s": check_s,
        "peak_rss": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, nargs="+", default=[1.0, 6.0])
    parser.add_argument("--style", choices=["decimals", "digits"], nargs="+")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    styles = args.style or ["decimals", "digits"]
    if args.one is not None:
        print(json.dumps(measure(args.one, styles[0])))
        return
    print("| literal | parse CPU | parse peak (tracemalloc) | check CPU | process peak RSS |")
    print("|---|---|---|---|---|")
    for mb in args.mb:
        for style in styles:
            command = [sys.executable, __file__, "--one", str(mb), "--style", style]
            run = subprocess.run(command, capture_output=True, text=True, check=True)
            report(json.loads(run.stdout), style)


def report(r: dict[str, float], style: str) -> None:
    print(
        f"| {r['bytes'] / 1e6:.2f} MB of {style} | {r['parse_s']:.2f} s | "
        f"{r['parse_peak'] / 1e6:.0f} MB ({r['parse_peak'] / r['bytes']:.0f}x) | "
        f"{r['check_s']:.2f} s | {r['peak_rss'] / 1e6:.0f} MB |"
    )


if __name__ == "__main__":
    main()
