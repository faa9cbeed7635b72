"""The Serve application named by serve_config.yaml.

At this stage one deployment answers `GET /health` and `GET /info` (the base model's summary),
so the config, the import path and the HTTP route are real and tested; the task router and the
adapted-model deployments join this graph later.
"""

from __future__ import annotations

from ray import serve
from starlette.requests import Request


@serve.deployment(name="BaseModelInfo", num_replicas=1, ray_actor_options={"num_cpus": 0.5})
class BaseModelInfo:
    def __init__(self, model: str = "tiny"):
        from t2ray.models import base_model_info

        self.info = base_model_info(model)

    def describe(self) -> dict:
        return self.info

    async def __call__(self, request: Request) -> dict:
        if request.url.path.rstrip("/").endswith("/health"):
            return {"status": "ok"}
        return self.describe()


def build_app(args: dict | None = None):
    """Application builder used by `serve run` / `serve deploy` (args from the config)."""
    return BaseModelInfo.bind(**(args or {}))
