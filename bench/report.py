"""Write one benchmark's section into docs/benchmarks.md (replacing its previous run)."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

from t2ray.eval.results import replace_section

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nEach section is written by the script it names, with the command "
          "that produced it.\nRatios are measured within one run; CPU times are only "
          "indicative on a shared 2-core machine.\n")


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
            f"threads, {gpu}, torch {torch.__version__}")


def _sync() -> None:
    """Wait for queued GPU work, so that a wall-clock interval holds the kernels it launched."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_section(name: str, command: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    replace_section(path, name, f"## {name}\n\n`{command}` ({time.strftime('%Y-%m-%d')}, "
                    f"{machine()})\n\n{body.strip()}", header=HEADER)
