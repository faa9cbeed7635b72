"""The Serve application that serve_config.yaml names: ingress -> task router (pass 1) ->
adapted LLM (pass 2), with the T2L generator beside them.

`build_app(args)` runs where the application is built (the `serve run` process, or a task on
the cluster for `serve deploy`): it finds the base model's SVD cache (decomposing it when none is
given), opens the library once so that artifacts made for another base are refused at start-up
with a log line, and binds the deployments with what they need.
"""

from __future__ import annotations

import logging

from t2ray.serve.config import ServeArgs
from t2ray.serve.deployments import AdaptedLLM, T2LGenerator, TaskRouter
from t2ray.serve.ingress import Ingress
from t2ray.serve.library import KIT_DIR, ServingLibrary

log = logging.getLogger("ray.serve")
DEPLOYMENTS = ("Ingress", "TaskRouter", "AdaptedLLM", "T2LGenerator")


def build_app(args: dict | None = None):
    """Application builder for `serve run` / `serve deploy` (`args` from the config)."""
    from transformers import AutoConfig

    from t2ray.models import TINY, resolve_model_path
    from t2ray.svf.cache import SVDCache
    from t2ray.svf.ops import decompose_model

    cfg = ServeArgs.from_args(args)
    if cfg.library is None and cfg.model != TINY:
        raise ValueError(f"the packaged serving kit is for the bundled `tiny` model; give "
                         f"`library:` for {cfg.model!r}")
    library = str(cfg.library or KIT_DIR)
    cache = SVDCache(cfg.svd_cache) if cfg.svd_cache else decompose_model(cfg.model,
                                                                          cfg.svd_targets)
    fingerprint = cache.fingerprint
    lib = ServingLibrary.open(library, fingerprint)  # refusals are logged here, at start-up
    for what, why in lib.refused.items():
        log.error("serving without %s: %s", what, why)
    max_positions = AutoConfig.from_pretrained(resolve_model_path(cfg.model)).max_position_embeddings
    shared = (cfg.as_dict(), fingerprint, str(cache.root), library)
    t2l = T2LGenerator.bind(*shared) if lib.t2l else None
    return Ingress.bind(TaskRouter.bind(*shared), AdaptedLLM.bind(*shared, t2l), t2l,
                        cfg.as_dict(), fingerprint, library, max_positions)
