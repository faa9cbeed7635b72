"""One private Ray + Serve per test module, serving `build_app(args)` on a free loopback port."""

from __future__ import annotations

import os
import socket
import tempfile
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: dict, env: dict | None = None, metrics_port: int | None = None):
    """Start Ray (own temp dir, token auth off, `env` in every worker), Serve on a free port and
    the app; yield its base URL; shut down what was started."""
    import ray
    from ray import serve

    from t2ray.serve.app import build_app

    if ray.is_initialized():
        raise RuntimeError("a Ray instance is already initialised in this process")
    saved = dict(os.environ)
    # replicas inherit the environment of the raylet this process starts
    os.environ.update({"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
                       **(env or {})})
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="t2ray-ray-", dir="/tmp"),
                 _metrics_export_port=metrics_port,
                 _system_config={"metrics_report_interval_ms": 1000})
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="t2ray", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
