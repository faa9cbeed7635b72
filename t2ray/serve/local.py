"""The graph on this machine: Serve on a free loopback port, for the demo, the benchmark and
the tests (`serve run serve_config.yaml` is the way to run it as a service)."""

from __future__ import annotations

import os
import socket
import tempfile
from contextlib import contextmanager

APP_NAME = "t2ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_locally(args: dict | None = None, env: dict | None = None,
                  metrics_port: int | None = None):
    """Yield the base URL of `build_app(args)` served on 127.0.0.1. Starts a private Ray (own
    temp dir, token auth off unless RAY_AUTH_MODE says otherwise, `env` in every worker and
    restored on exit) unless one is initialised in this process; on exit shuts down Serve, and
    Ray if it started it."""
    import ray
    from ray import serve

    from t2ray.serve.app import build_app

    env = dict(env or {})
    saved, started = {k: os.environ.get(k) for k in env}, not ray.is_initialized()
    try:
        if started:  # workers inherit the environment of the raylet this process starts
            # A private loopback cluster. Ray reads the auth mode once per process, so it is
            # set for good: restoring it would leave a later ray.init here inconsistent.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.update(env)
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     _temp_dir=tempfile.mkdtemp(prefix="t2ray-ray-", dir="/tmp"),
                     _metrics_export_port=metrics_port,
                     _system_config={"metrics_report_interval_ms": 1000})
        elif env or metrics_port:
            raise RuntimeError("env and metrics_port need a Ray started here; shut down the "
                               "running one first")
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:  # a Serve shutdown that fails must not leave this process's Ray behind
                if started:
                    ray.shutdown()


def demo_requests(url: str, key: str | None = None) -> list[dict]:
    """One real request per strategy (what `make demo` ends with): the question, the answer and
    what served it."""
    from t2ray.serve.loadgen import post
    from t2ray.tasks import get_task

    def question(task: str) -> str:
        return get_task(task).examples("test", 1)[0].prompt

    asks = [("none", question("math")), ("prompt", question("math")),
            ("classifier", question("code")), ("expert:math", question("math")),
            ("fewshot:math-hard", question("math-hard")),
            ('mix:{"math": 0.7, "reasoning": 0.3}', question("reasoning-hard")),
            ("lora:code", question("code")),
            ("t2l:Sort the numbers from the largest to the smallest.", "7 2 9 4")]
    rows = []
    for adaptation, q in asks:
        status, body = post(url + "/v1/chat/completions", {
            "model": "tiny", "max_tokens": 48, "temperature": 0, "adaptation": adaptation,
            "messages": [{"role": "user", "content": q}]}, key)
        info = body.get("t2ray", {})
        rows.append({"adaptation": adaptation, "question": q, "status": status,
                     "answer": body["choices"][0]["message"]["content"] if status == 200
                     else body["error"]["message"],
                     "served_by": info.get("expert"), "seconds": info.get("total_s")})
    return rows
