"""Every benchmark in bench/, one after another, each rewriting its section of docs/benchmarks.md.

    python bench/run_all.py [--only svf_apply,t2l_generate] [--log-dir DIR]   (`make bench`)

Each script runs with the arguments of record (the ones its section quotes) in its own process,
so one benchmark's threads, Ray instance or engine never share a process with the next. A
benchmark whose requirements are missing here (vLLM, Ray, a GPU) is skipped and says why; one that
fails is reported with the tail of its output, the others still run, and the exit status is 1.
The summary lists each script's outcome and wall time."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    script: str
    args: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # importable modules
    gpu: bool = False  # only on CUDA; elsewhere `cpu_args` checks the script without writing
    cpu_args: tuple[str, ...] | None = None


BENCHMARKS = (
    Benchmark("svf_apply", ("--repeats", "5")),
    Benchmark("t2l_generate"),
    Benchmark("fewshot_parallel", ("--concurrency", "2", "--population", "32",
                                   "--generations", "2"), needs=("ray",)),
    Benchmark("vllm_engine", ("--repeats", "3"), needs=("vllm",)),
    Benchmark("serve_latency", needs=("ray",)),
    Benchmark("gpu_paths", ("--layers", "4"), needs=("deepspeed",), gpu=True,
              cpu_args=("--smoke",)),
)


def missing(bench: Benchmark) -> list[str]:
    return [m for m in bench.needs if importlib.util.find_spec(m) is None]


def command(bench: Benchmark) -> list[str] | None:
    """How this machine runs the benchmark, or None if it cannot."""
    if missing(bench):
        return None
    if bench.gpu and not torch.cuda.is_available():
        return None if bench.cpu_args is None else [
            sys.executable, f"bench/{bench.script}.py", *bench.cpu_args]
    return [sys.executable, f"bench/{bench.script}.py", *bench.args]  # quoted as typed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated script names (default: all)")
    ap.add_argument("--log-dir", type=Path, help="keep each benchmark's output as NAME.log")
    args = ap.parse_args()
    names = [b.script for b in BENCHMARKS]
    chosen = args.only.split(",") if args.only else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        ap.error(f"unknown benchmarks {unknown}; bench/ has {names}")
    outcomes = []
    for i, bench in enumerate(b for b in BENCHMARKS if b.script in chosen):
        cmd = command(bench)
        if cmd is None:
            outcomes.append((bench.script, f"skipped: {', '.join(missing(bench))} not installed"
                             if missing(bench) else "skipped: needs a GPU", 0.0))
            print(f"[{i + 1}/{len(chosen)}] {bench.script}: {outcomes[-1][1]}", flush=True)
            continue
        print(f"[{i + 1}/{len(chosen)}] python {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        output = done.stdout + done.stderr
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            (args.log_dir / f"{bench.script}.log").write_text(output)
        if done.returncode:
            print(output[-3000:], flush=True)
        smoke = bench.gpu and not torch.cuda.is_available()
        outcomes.append((bench.script, f"FAILED (exit {done.returncode})" if done.returncode
                         else "ok (smoke check, no GPU: section kept)" if smoke else "ok",
                         seconds))
        print(f"    {outcomes[-1][1]} in {seconds:.0f} s", flush=True)
    print("\nbenchmark          outcome                                   seconds")
    for name, outcome, seconds in outcomes:
        print(f"{name:<18} {outcome:<42} {seconds:7.0f}")
    print("sections rewritten in docs/benchmarks.md")
    return 1 if any(o.startswith("FAILED") for _, o, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
