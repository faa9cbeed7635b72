"""Few-shot CEM search on Ray Tune: 1 vs N concurrent trials, same search, one run.

    python bench/fewshot_parallel.py [--experts LIB] [--concurrency 2] [--generations 2]

Runs the same CEM search (same seed, shots and population) with one engine actor and with N,
each trial reserving one CPU, and reports the wall-clock speed-up (target >= 0.8 N on N cores)
and where a member's time goes: scoring in the engine actor, or everything else (Tune's
scheduling, the trial actor, the object store).
Without `--experts` it uses three random `linear` experts on the bundled model: the timing does
not depend on what the experts know.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from t2ray.adapt.fewshot import FewShotConfig, search_mixture, start_scorers  # noqa: E402
from t2ray.distributed.ray_env import ensure_ray  # noqa: E402
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
    ensure_ray(num_cpus=args.concurrency)
    n = args.concurrency

    def config(concurrency: int, generations: int) -> FewShotConfig:
        return FewShotConfig(shots=args.shots, select=0, population=args.population,
                             generations=generations, concurrency=concurrency)

    try:
        # The engine actors are shared by every search (as in `t2ray eval`): start them once,
        # and warm them and Tune with a throw-away generation, so the timed searches measure
        # the search alone. Their start-up is reported on its own line.
        t0 = time.perf_counter()
        scorers = start_scorers(args.model, str(cache.root), dirs, config(n, 1))
        ray.get([a.set_task.remote(args.task, args.shots, 0) for a in scorers])
        startup = time.perf_counter() - t0
        search_mixture(args.model, str(cache.root), dirs, args.task, config(n, 1),
                       work / "warm-up", scorers)
        results = {}
        for c in (1, n):
            results[c] = search_mixture(args.model, str(cache.root), dirs, args.task,
                                        config(c, args.generations), work / f"tune-{c}",
                                        scorers[:c])
            r = results[c]
            print(f"concurrency {c}: {r.trials} trials in {r.seconds:.1f} s "
                  f"({r.score_seconds:.1f} s scoring in the engine actors)")
    finally:
        ray.shutdown()
    one, many = results[1], results[n]
    speedup = one.seconds / many.seconds

    def row(c: int, r) -> str:
        overhead = (r.seconds * c - r.score_seconds) / r.trials  # busy-slot time not scoring
        return (f"| {c} | {r.seconds:.1f} | {r.score_seconds / r.trials:.2f} | "
                f"{overhead:.2f} | {one.seconds / r.seconds:.2f}x |")

    body = (f"Task `{args.task}`, population {args.population} x {args.generations} generations, "
            f"{args.shots} shots, one CPU per trial, engine actors shared by the trials, "
            f"started and warmed before timing ({startup:.1f} s for {n} actors).\n\n"
            "| concurrent trials | wall-clock (s) | scoring per member (s) | "
            "other time per member and slot (s) | speed-up |\n|---|---|---|---|---|\n"
            f"{row(1, one)}\n{row(n, many)}\n\n"
            f"Target >= {0.8 * n:.1f}x: {'met' if speedup >= 0.8 * n else '**not met**'}.\n")
    write_section("fewshot_parallel", "python " + " ".join(sys.argv), body)
    print(body)


if __name__ == "__main__":
    main()
