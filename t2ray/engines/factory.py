"""An engine by name, for the commands that take `--engine hf|vllm`."""

from __future__ import annotations

from t2ray.engines.base import Engine

ENGINES = ("hf", "vllm")


def build_engine(kind: str, model: str, svd_cache: str | None = None, **options) -> Engine:
    """`hf`: the model loaded in this process (`options`: `HFEngine` keywords); `vllm`: a vLLM
    engine actor (Ray must be up; `options` are `VLLMConfig` fields)."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose one of {ENGINES}")
    if kind == "vllm":
        from t2ray.engines.vllm import VLLMConfig, VLLMEngine

        # The actor itself mostly waits on vLLM's own processes, which Ray does not count;
        # reserving a Ray CPU for it would starve the trials of a few-shot search on 2 cores.
        options.setdefault("num_cpus", 0)
        return VLLMEngine(VLLMConfig(model=model, svd_cache=svd_cache, **options))
    from t2ray.engines.hf import HFEngine
    from t2ray.models import load_model
    from t2ray.svf.cache import SVDCache

    base, tok = load_model(model)
    return HFEngine(base, tok, svd_cache=SVDCache(svd_cache) if svd_cache else None, name=model,
                    **options)
