"""The one place that starts or joins Ray. Library code never calls `ray.init()` at import;
jobs, the CLI and the experiments call `ensure_ray` when they need Ray."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, quiet: bool = True) -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local
    Ray with `num_cpus`; nothing if this process is already connected. `quiet` keeps worker
    logs and the dashboard off for local runs (a job on a cluster keeps both)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # a cluster's resources are the cluster's, not ours to declare
        return
    ray.init(num_cpus=num_cpus, include_dashboard=False if quiet else None,
             log_to_driver=not quiet)
