"""The graph's model deployments: pass 1 (`TaskRouter`), pass 2 (`AdaptedLLM`) and the text-to-
adapter generator (`T2LGenerator`). The ingress (serve/ingress.py) calls them through handles.

Every engine call runs on one worker thread per replica: engines are not thread-safe and an
`adapted` block cannot nest, and the event loop stays free to gather the next batch meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import serve

from t2ray.adapt.router import Router, confidence
from t2ray.engines.base import ROW_EXPERTS, ROW_LORAS
from t2ray.engines.factory import build_engine
from t2ray.lora.weights import LoraWeights
from t2ray.models.prompt import Prompt
from t2ray.serve.adaptation import Adaptation, AdaptationError, parse_adaptation
from t2ray.serve.config import ServeArgs
from t2ray.serve.library import CLASSIFIER, ServingLibrary
from t2ray.serve.metrics import AdapterCacheMetrics
from t2ray.svf.expert import ExpertVector

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class GenJob:
    """One request's second pass: the prompt, its sampling and (per-row path) its adapter."""

    prompt: Prompt
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adaptation: Adaptation = Adaptation("none")

    def sampling(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed, "stop": list(self.stop) or None}


def _remember(cache: OrderedDict, key: str, value, size: int) -> None:
    """Keep `value` as the most recently used entry of an LRU cache of at most `size`."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


class _OneWorker:
    """A replica's model work on one worker thread (torch threads as configured)."""

    def __init__(self, args: dict):
        self.args = ServeArgs.from_args(args)
        torch.set_num_threads(self.args.torch_threads)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def _on_worker(self, fn, *a):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *a)


class _EngineReplica(_OneWorker):
    """An engine on the worker thread, and the library the replica adapts with."""

    def __init__(self, args: dict, fingerprint: str, svd_cache: str, library: str):
        super().__init__(args)
        options = dict(self.args.engine_options)
        if self.args.engine == "hf":  # hot experts keep their W' (vLLM holds one weight set)
            options.setdefault("keep_recomposed", self.args.hot_models_per_replica)
        self.engine = build_engine(self.args.engine, self.args.model, svd_cache, **options)
        self.library = ServingLibrary.open(library, fingerprint)

    def __del__(self):
        self.engine.close()


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
class TaskRouter(_EngineReplica):
    """Pass 1: `Router` label scoring on the base weights (`prompt`) or with the classifier
    expert (`classifier`); concurrent requests are scored in one engine call per strategy. A
    router abstains (`other`, the base weights) below the threshold its library keeps."""

    def __init__(self, args: dict, fingerprint: str, svd_cache: str, library: str):
        super().__init__(args, fingerprint, svd_cache, library)
        thresholds = self.library.thresholds()
        self.routers = {"prompt": Router(self.engine, threshold=thresholds.get("prompt", 0.0))}
        if CLASSIFIER in self.library.experts:
            self.routers["classifier"] = Router(self.engine, self.library.experts[CLASSIFIER],
                                                threshold=thresholds.get("classifier", 0.0))
        self.route.set_max_batch_size(self.args.max_batch_size)
        self.route.set_batch_wait_timeout_s(self.args.batch_wait_s)

    @serve.batch
    async def route(self, items: list[tuple[str, str]]) -> list[dict]:
        """(strategy, question) -> {"category", "scores": {label: per-token log p},
        "confidence": the top label's probability among the labels, "threshold"}."""
        return await self._on_worker(self._route, items)

    def _route(self, items: list[tuple[str, str]]) -> list[dict]:
        out: list[dict] = [{}] * len(items)
        for strategy, router in self.routers.items():
            idx = [i for i, (s, _) in enumerate(items) if s == strategy]
            if not idx:
                continue
            scores = router.scores([items[i][1] for i in idx])
            top = confidence(scores)[0].tolist()
            for i, row, category, conf in zip(idx, scores.tolist(), router.pick(scores), top):
                out[i] = {"category": category, "batch_size": len(idx),
                          "confidence": round(conf, 4), "threshold": router.threshold,
                          "scores": {c: round(s, 4) for c, s in zip(router.categories, row)}}
        return out


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class AdaptedLLM(_EngineReplica):
    """Pass 2. Requests sharing one expert or few-shot profile arrive through `generate_hot`,
    multiplexed by that id (Serve sends them to a replica that holds it and batches them apart
    from other ids) and run recomposed, once per batch. Per-request mixtures, LoRAs and
    generated adapters arrive through `generate_rows`, whose batches mix them freely: experts
    and mixtures run on the factorized path, LoRAs of one rank/scale as one batched LoRA (each
    row its own adapter; on vLLM one LoRARequest per row)."""

    def __init__(self, args: dict, fingerprint: str, svd_cache: str, library: str,
                 t2l=None):
        super().__init__(args, fingerprint, svd_cache, library)
        self.t2l = t2l
        self._generated: OrderedDict[str, object] = OrderedDict()  # adapter id -> adapter
        # multiplexed with the configured K: the decorator's argument is fixed per function, so
        # a loader is wrapped here (Serve detects instance-level loaders at run time)

        async def load_hot(model_id: str) -> ExpertVector | None:
            adaptation = parse_adaptation(model_id, "none", self.args.limits.max_mix_entries)
            return self.library.resolve(adaptation)

        self._hot = serve.multiplexed(
            max_num_models_per_replica=self.args.hot_models_per_replica)(load_hot)
        for method in (self.generate_hot, self.generate_rows):
            method.set_max_batch_size(self.args.max_batch_size)
            method.set_batch_wait_timeout_s(self.args.batch_wait_s)

    @serve.batch
    async def generate_hot(self, jobs: list[GenJob]) -> list[dict]:
        model_id = serve.get_multiplexed_model_id()
        adapter = await self._hot(model_id) if model_id else None
        return await self._on_worker(self._generate, jobs, [adapter] * len(jobs), True)

    @serve.batch
    async def generate_rows(self, jobs: list[GenJob]) -> list[dict]:
        adapters, errors = [], {}
        for i, job in enumerate(jobs):
            try:
                adapters.append(await self._row_adapter(job.adaptation))
            except AdaptationError as e:
                adapters.append(None)
                errors[i] = {"error": str(e), "status": 400}
        ok = [i for i in range(len(jobs)) if i not in errors]
        done = await self._on_worker(self._generate, [jobs[i] for i in ok],
                                     [adapters[i] for i in ok], False)
        results = dict(zip(ok, done))
        return [errors.get(i) or results[i] for i in range(len(jobs))]

    async def _row_adapter(self, a: Adaptation):
        if a.strategy != "adapter":
            return self.library.resolve(a)
        adapter = self._generated.get(a.name) or await self.t2l.get.remote(a.name)
        if adapter is None:
            raise AdaptationError(f"adapter {a.name!r} is no longer held; generate it again")
        _remember(self._generated, a.name, adapter, self.args.adapter_cache_size)
        return adapter

    def _generate(self, jobs: list[GenJob], adapters: list, shared: bool) -> list[dict]:
        """Run `jobs` in as few engine calls as their sampling settings and adapters allow."""
        groups: dict[tuple, list[int]] = {}
        for i, (job, adapter) in enumerate(zip(jobs, adapters)):
            groups.setdefault((repr(job.sampling()), *self._row_group(adapter, shared)),
                              []).append(i)
        out: list[dict] = [{}] * len(jobs)
        for idx in groups.values():
            rows = [adapters[i] for i in idx]
            adapter = rows[0] if shared or len({id(r) for r in rows}) == 1 else rows
            completions = self._call(adapter, [jobs[i].prompt for i in idx],
                                     jobs[idx[0]].sampling())
            for i, c in zip(idx, completions):
                out[i] = {"text": c.text, "token_ids": c.token_ids,
                          "finish_reason": c.finish_reason, "batch_size": len(jobs),
                          "engine_batch": len(idx)}
        return out

    def _row_group(self, adapter, shared: bool) -> tuple:
        """Which rows can share one engine call: per-row experts run together, LoRAs together
        when rank, scale and modules agree; an engine without per-row adapters (vLLM takes
        per-row LoRAs but not per-row SVF) runs each distinct adapter on its own."""
        if shared or adapter is None:
            return ("none",)
        if isinstance(adapter, LoraWeights):
            key = ("lora", adapter.rank, adapter.scale, tuple(sorted(adapter.a)))
            return key if ROW_LORAS in self.engine.adapter_kinds else (*key, id(adapter))
        return ("svf",) if ROW_EXPERTS in self.engine.adapter_kinds else ("svf", id(adapter))

    def _call(self, adapter, prompts: list[Prompt], sampling: dict):
        with self.engine.adapted(adapter):
            return self.engine.generate(prompts, **sampling)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
class T2LGenerator(_OneWorker):
    """Descriptions -> adapters with the library's T2L checkpoint, one encoder pass and one
    hypernetwork forward per batch. Adapters are cached by a hash of (checkpoint, description)
    and served by id; a variant-Z checkpoint makes SVF experts instead of LoRAs."""

    def __init__(self, args: dict, fingerprint: str, svd_cache: str, library: str):
        from t2ray.svf.cache import SVDCache
        from t2ray.t2l.encoder import load_encoder
        from t2ray.t2l.generate import T2L_CHECKPOINT, T2LCheckpoint

        super().__init__(args)
        path = Path(library) / "t2l"
        self.checkpoint = T2LCheckpoint.load(path, expect_fingerprint=fingerprint)
        self.encoder = load_encoder(self.checkpoint.encoder)
        self.svd_cache = SVDCache(svd_cache)
        digest = hashlib.sha256((path / T2L_CHECKPOINT.filename).read_bytes())
        digest.update((path / "hypernet.safetensors").read_bytes())
        self._checkpoint_hash = digest.hexdigest()
        self.adapters: OrderedDict[str, object] = OrderedDict()
        self.metrics = AdapterCacheMetrics()
        self._generate.set_max_batch_size(self.args.max_batch_size)
        self._generate.set_batch_wait_timeout_s(self.args.batch_wait_s)

    def adapter_id(self, description: str) -> str:
        h = hashlib.sha256(f"{self._checkpoint_hash}\n{description}".encode())
        return "t2l-" + h.hexdigest()[:20]

    async def adapter_for(self, description: str) -> dict:
        """{"id", "cached", "kind"} for a description checked by the ingress."""
        aid = self.adapter_id(description)
        hit = aid in self.adapters
        self.metrics.lookups.inc(tags={"result": "hit" if hit else "miss"})
        adapter = self.adapters[aid] if hit else await self._generate(description)
        _remember(self.adapters, aid, adapter, self.args.adapter_cache_size)
        kind = "lora" if isinstance(adapter, LoraWeights) else "svf"
        return {"id": aid, "cached": hit, "kind": kind}

    async def get(self, adapter_id: str):
        """The adapter with this id, or None when it is not (or no longer) held."""
        return self.adapters.get(adapter_id)

    async def held(self) -> list[str]:
        """The ids of the adapters held now, least recently used first."""
        return list(self.adapters)

    @serve.batch
    async def _generate(self, descriptions: list[str]) -> list:
        return await self._on_worker(self.checkpoint.generate, self.encoder, descriptions,
                                     self.svd_cache)
