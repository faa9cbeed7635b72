"""Load over loopback (slow): 1000 requests at concurrency 32 across the strategies with no 5xx,
then an over-limit phase where Serve's back-pressure answers 503 and the server stays up."""

from __future__ import annotations

import json
import random

import pytest

from t2ray.serve.loadgen import post, run_load
from t2ray.serve.local import serve_locally

pytestmark = pytest.mark.slow

STRATEGIES = ["none", "prompt", "classifier", "expert:math", "expert:code", "fewshot:math-hard",
              'mix:{"math": 0.6, "reasoning": 0.4}', 'mix:{"code": 1.0, "math": 0.2}',
              "lora:code", "t2l:Sort the numbers from the largest to the smallest."]


def _bodies(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"model": "tiny", "max_tokens": 8, "temperature": 0, "adaptation": rng.choice(STRATEGIES),
             "messages": [{"role": "user", "content": f"What is {rng.randint(1, 99)} + "
                                                       f"{rng.randint(1, 99)}?"}]}
            for _ in range(n)]


def _with_options(app, options: dict, seen: dict | None = None):
    """The application with Serve options changed per deployment name (shared nodes stay
    shared), as a config's `deployments:` section would."""
    from ray.serve.deployment import Application

    seen = {} if seen is None else seen
    if id(app) not in seen:
        d = app._bound_deployment
        args = [_with_options(a, options, seen) if isinstance(a, Application) else a
                for a in d.init_args]
        seen[id(app)] = d.options(**options.get(d.name, {})).bind(*args, **d.init_kwargs)
    return seen[id(app)]


def test_load_then_back_pressure(capsys):
    from ray import serve

    from t2ray.serve.app import build_app

    with serve_locally({}) as url:
        load = run_load(url + "/v1/chat/completions", _bodies(1000), concurrency=32,
                        max_seconds=420)
        with capsys.disabled():
            print(f"\nload: {load.sent} requests in {load.wall_s:.0f} s, "
                  f"{load.throughput:.1f} req/s, p50 {1000 * load.percentile(50):.0f} ms, "
                  f"p99 {1000 * load.percentile(99):.0f} ms, statuses {dict(load.statuses)}")
        assert load.sent == 1000, "the load did not finish within its time bound"
        assert set(load.statuses) == {200}, load.statuses
        served = {b["t2ray"]["strategy"] for b in load.bodies}
        assert served == {s.split(":")[0] for s in STRATEGIES}

        # over the limits: a single ingress slot and a queue of 2, 48 requests at once
        tight = {"Ingress": {"max_ongoing_requests": 1, "max_queued_requests": 2}}
        serve.run(_with_options(build_app({}), tight), name="t2ray", route_prefix="/")
        slow = [dict(b, max_tokens=48, adaptation="none") for b in _bodies(48, seed=1)]
        burst = run_load(url + "/v1/chat/completions", slow, concurrency=48, max_seconds=300)
        with capsys.disabled():
            print(f"over the limit: statuses {dict(burst.statuses)}")
        assert burst.statuses[503] > 0 and burst.statuses[200] > 0
        assert set(burst.statuses) <= {200, 503}, burst.statuses
        status, body = post(url + "/v1/chat/completions", _bodies(1)[0])
        assert status == 200, json.dumps(body)[:500]
