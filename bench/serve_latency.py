"""Serving over HTTP: latency and throughput per adaptation strategy, in one run.

    python bench/serve_latency.py [--sequential 40] [--requests 128] [--concurrency 16]

The packaged graph (tiny model, serving kit) on a free loopback port. Per strategy, the same
prompts and max_tokens: p50 / p99 latency one request at a time, and requests/s with
`--concurrency` clients. Also the router alone (its deployment called through a handle) and the
first pass's share of two-stage time. Targets, as ratios within the run:
  two-stage p50 <= 1.2 x (single-pass p50 + router-alone p50);
  hot expert >= 0.9 x the `none` throughput; per-request mixtures >= 0.5 x.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from t2ray.serve.loadgen import run_load  # noqa: E402
from t2ray.serve.local import APP_NAME, serve_locally  # noqa: E402

MAX_TOKENS = 16


def questions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"What is {rng.randint(1, 99)} + {rng.randint(1, 99)}?" for _ in range(n)]


def bodies(adaptation, n: int, seed: int = 0, start: int = 0) -> list[dict]:
    """`adaptation` is a string, or a function of a request number (per-request variants,
    numbered from `start` so that two phases never repeat one)."""
    return [{"model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0,
             "messages": [{"role": "user", "content": q}],
             "adaptation": adaptation(start + i) if callable(adaptation) else adaptation}
            for i, q in enumerate(questions(n, seed))]


def random_mix(i: int) -> str:
    rng = random.Random(i)
    return "mix:" + json.dumps({e: round(rng.random(), 3) + 0.01
                                for e in ("math", "code", "reasoning")})


MODES = {  # name -> (adaptation, shares a weight set across requests?)
    "none": "none",
    "expert:math (hot)": "expert:math",
    "prompt": "prompt",
    "classifier": "classifier",
    "mix (per request)": random_mix,
    "t2l (cached)": "t2l:Add the two numbers and give the sum.",
    "t2l (uncached)": lambda i: f"t2l:Add the two numbers and give the sum, variant {i}.",
}


def router_alone(strategy: str, n: int) -> float:
    """p50 of the router deployment called through a handle, one request at a time."""
    from ray import serve

    router = serve.get_deployment_handle("TaskRouter", app_name=APP_NAME)
    times = []
    for q in questions(n, seed=7):
        t = time.perf_counter()
        router.route.remote((strategy, q)).result()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequential", type=int, default=20, help="per mode and round")
    ap.add_argument("--requests", type=int, default=96, help="per mode and round")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    command = "python bench/serve_latency.py" + "".join(
        f" --{k} {v}" for k, v in vars(a).items() if v != ap.get_default(k))
    latencies = {name: [] for name in MODES}
    throughputs = {name: [] for name in MODES}
    tokens = {name: [] for name in MODES}  # completion tokens: the work each answer took
    share: dict[str, list[float]] = {"prompt": [], "classifier": []}
    router_p50: dict[str, list[float]] = {"prompt": [], "classifier": []}
    with serve_locally({}) as url:
        endpoint = url + "/v1/chat/completions"
        for adaptation in MODES.values():  # warm every path once
            run_load(endpoint, bodies(adaptation, 4, seed=99, start=900_000), 4, 120)
        # rounds over all modes (order reversed every other round), so that a slow spell of
        # this shared machine does not land on one mode only
        for r in range(a.rounds):
            for name in (list(MODES) if r % 2 == 0 else list(MODES)[::-1]):
                adaptation, start = MODES[name], 1_000 * r
                seq = run_load(endpoint, bodies(adaptation, a.sequential, seed=r, start=start),
                               1, 600)
                par = run_load(endpoint, bodies(adaptation, a.requests, seed=100 + r,
                                                start=start + 500), a.concurrency, 600)
                bad = {s: c for s, c in (seq.statuses + par.statuses).items() if s != 200}
                if bad:
                    raise SystemExit(f"{name}: non-200 answers {bad}")
                latencies[name] += seq.latencies
                tokens[name] += [b["usage"]["completion_tokens"] for b in seq.bodies]
                throughputs[name].append(par.throughput)
                if name in share:
                    share[name] += [b["t2ray"]["first_pass_s"] / b["t2ray"]["total_s"]
                                    for b in seq.bodies]
                print(f"round {r} {name:>20}: p50 {1000 * seq.percentile(50):.0f} ms, "
                      f"{par.throughput:.1f} req/s", flush=True)
            for strategy in router_p50:
                router_p50[strategy].append(router_alone(strategy, a.sequential))
    rows = {name: (float(np.percentile(latencies[name], 50)),
                   float(np.percentile(latencies[name], 99)),
                   statistics.median(throughputs[name])) for name in MODES}
    router_p50 = {k: statistics.median(v) for k, v in router_p50.items()}
    share = {k: statistics.mean(v) for k, v in share.items()}
    none_p50, none_rps = rows["none"][0], rows["none"][2]
    lines = [f"Tiny model, packaged serving kit, HF engine on CPU; at most {MAX_TOKENS} new "
             f"tokens per request, greedy, the same prompts for every mode. {a.rounds} rounds "
             f"over all modes; latency: {a.sequential} requests one at a time per round (p50 / "
             f"p99 pooled); throughput: {a.requests} requests from {a.concurrency} concurrent "
             "clients per round (median of rounds).", "",
             "| strategy | p50 ms | p99 ms | req/s | req/s vs none | tokens per answer |",
             "|---|---|---|---|---|---|"]
    for name, (p50, p99, rps) in rows.items():
        lines.append(f"| {name} | {1000 * p50:.0f} | {1000 * p99:.0f} | {rps:.1f} | "
                     f"{rps / none_rps:.2f}x | {statistics.mean(tokens[name]):.1f} |")
    for name, p50 in router_p50.items():
        lines.append(f"| router alone, {name} (handle) | {1000 * p50:.0f} | | | | |")
    lines += ["", "First pass's share of two-stage time (mean over the sequential requests): "
              + ", ".join(f"{k} {100 * v:.0f}%" for k, v in share.items()) + ".", "",
              "| target | measured | met |", "|---|---|---|"]
    for name in ("prompt", "classifier"):
        bound = 1.2 * (none_p50 + router_p50[name])
        lines.append(f"| {name} p50 <= 1.2 x (none p50 + its router p50) = {1000 * bound:.0f} ms | "
                     f"{1000 * rows[name][0]:.0f} ms | {'yes' if rows[name][0] <= bound else 'no'} |")
    hot, mixed = rows["expert:math (hot)"][2] / none_rps, rows["mix (per request)"][2] / none_rps
    lines.append(f"| hot expert >= 0.9x none throughput | {hot:.2f}x | "
                 f"{'yes' if hot >= 0.9 else 'no'} |")
    lines.append(f"| per-request mixtures >= 0.5x none throughput | {mixed:.2f}x | "
                 f"{'yes' if mixed >= 0.5 else 'no'} |")
    write_section("Serving latency (HTTP)", command, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
