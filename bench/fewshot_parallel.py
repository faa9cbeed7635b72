"""Few-shot CEM search on Ray Tune: 1 vs N concurrent trials, same search, one run.

    python bench/fewshot_parallel.py [--experts LIB] [--concurrency 2] [--generations 2]

Runs the same CEM search (same seed, shots and population) with one engine actor and with N,
each trial reserving one CPU, and reports the wall-clock speed-up (target >= 0.8 N on N cores).
Without `--experts` it uses three random `linear` experts on the bundled model: the timing does
not depend on what the experts know.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from t2ray.adapt.fewshot import FewShotConfig, search_mixture  # noqa: E402
from t2ray.svf.expert import ExpertVector, SVFParam  # noqa: E402
from t2ray.svf.ops import decompose_model  # noqa: E402


def random_experts(cache, root: Path) -> list[Path]:
    dirs = []
    for k, name in enumerate(["math", "code", "reasoning"]):
        g = torch.Generator().manual_seed(k)
        z = {n: 1 + 0.1 * torch.randn(r, generator=g) for n, r in cache.ranks().items()}
        dirs.append(ExpertVector.for_cache(cache, z, SVFParam("linear"), task=name)
                    .save(root / name))
    return dirs


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--experts", type=Path, help="library with math/, code/, reasoning/")
    ap.add_argument("--task", default="reasoning-hard")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--shots", type=int, default=10)
    args = ap.parse_args()

    cache = decompose_model(args.model, "mlp")
    work = Path(tempfile.mkdtemp(prefix="t2ray-bench-fewshot-"))
    dirs = ([args.experts / c for c in ("math", "code", "reasoning")] if args.experts
            else random_experts(cache, work / "experts"))
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    times = {}
    try:
        for n in (1, args.concurrency):
            cfg = FewShotConfig(shots=args.shots, select=0, population=args.population,
                                generations=args.generations, concurrency=n)
            result = search_mixture(args.model, str(cache.root), dirs, args.task, cfg,
                                    work / f"tune-{n}")
            times[n] = result.seconds
            print(f"concurrency {n}: {result.trials} trials in {result.seconds:.1f} s")
    finally:
        ray.shutdown()
    n = args.concurrency
    speedup = times[1] / times[n]
    body = (f"Task `{args.task}`, population {args.population} x {args.generations} generations, "
            f"{args.shots} shots, one CPU per trial, engine actors shared by the trials.\n\n"
            "| concurrent trials | wall-clock (s) | speed-up | target |\n|---|---|---|---|\n"
            f"| 1 | {times[1]:.1f} | 1.00x | |\n"
            f"| {n} | {times[n]:.1f} | {speedup:.2f}x | >= {0.8 * n:.1f}x: "
            f"{'met' if speedup >= 0.8 * n else '**not met**'} |\n")
    write_section("fewshot_parallel", "python " + " ".join(sys.argv), body)
    print(body)


if __name__ == "__main__":
    main()
