"""vLLM behind the engine interface: one engine in a Ray actor, z-only SVF sync, multi-LoRA.

vLLM spawns an engine-core process and a worker per tensor-parallel rank, so the engine lives
in a Ray actor (`VLLMEngineActor`) that Ray Train workers, few-shot trials and Serve replicas
share; `VLLMEngine` is the thin client that implements `Engine`. Prompts are templated and
tokenized here exactly as the HF engine does and go to vLLM as token ids (vLLM's own text path
may add special tokens); completions are decoded here with the same tokenizer.

Adapters:
- an expert (or mixture) applies to the whole engine, since vLLM holds one weight set:
  `adapted(expert)` sends z (float32 bytes, never weights) to the workers, which rebuild W' from
  their own factor slices (`vllm_worker.SVFWorker`), and `t2ray_set_z(None)` on exit loads the
  base slices back. Per-row experts are refused (serving pins experts to replicas);
- a LoRA, or one per row: each distinct `LoraWeights` is exported once as a PEFT directory
  (`export_peft`, scale written as PEFT and vLLM apply it) and sent as a `LoRARequest` with a
  fresh id. A fresh id, not `load_inplace`: requests still in flight under an old id keep their
  weights, and an RL step's adapter never shares an id with the last step's.

`import vllm` takes seconds: it happens inside the actor only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from t2ray.engines.base import EXPERT, LORA, ROW_LORAS, Completion, Engine, PromptLike
from t2ray.engines.local import (
    continuation_rows,
    count_tokens,
    make_completion,
    reduce_scores,
)
from t2ray.lora.weights import LoraWeights
from t2ray.models import load_tokenizer, resolve_model_path
from t2ray.models.prompt import prompt_ids
from t2ray.svf.expert import check_ranks

WORKER_EXTENSION = "t2ray.engines.vllm_worker.SVFWorker"
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class VLLMConfig:
    model: str = "tiny"
    svd_cache: str | None = None  # needed for SVF experts
    tensor_parallel_size: int = 1
    max_loras: int = 4
    max_lora_rank: int = 16
    max_model_len: int = 512
    dtype: str = "float32"
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.3  # on CPU: a share of host memory
    cpu_kvcache_space_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE
    seed: int = 0
    num_cpus: float = 1.0  # the actor's Ray resources
    num_gpus: float | None = None  # None: one per tensor-parallel rank when CUDA is present


class VLLMEngineActor:
    """Owns one `vllm.LLM` (run it as a Ray actor: `start_engine_actor`)."""

    def __init__(self, config: dict):
        cfg = VLLMConfig(**config)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_space_gib))
        if cfg.tensor_parallel_size > 1 and not torch.cuda.is_available():
            # one OpenMP core set per CPU worker, else vLLM finds too few NUMA nodes
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                                  "|".join(str(i) for i in range(cfg.tensor_parallel_size)))
        from vllm import LLM

        self.cfg = cfg
        self.path = resolve_model_path(cfg.model)
        self.llm = LLM(model=self.path, dtype=cfg.dtype, enforce_eager=cfg.enforce_eager,
                       max_model_len=cfg.max_model_len, seed=cfg.seed,
                       gpu_memory_utilization=cfg.gpu_memory_utilization,
                       tensor_parallel_size=cfg.tensor_parallel_size, enable_lora=True,
                       max_loras=cfg.max_loras, max_lora_rank=cfg.max_lora_rank,
                       worker_extension_cls=WORKER_EXTENSION)
        self.svf = None
        if cfg.svd_cache:
            self.svf = self.llm.collective_rpc("t2ray_load_svf", args=(cfg.svd_cache, self.path))

    @staticmethod
    def _loras(loras: list):
        from vllm.lora.request import LoRARequest

        return [None if x is None else LoRARequest(*x) for x in loras]

    def generate(self, prompts: list[list[int]], params: dict, loras: list) -> list[dict]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seed = params.pop("seed", None)
        sampling = [SamplingParams(**params, detokenize=False,
                                   seed=None if seed is None else seed * 1_000_003 + i)
                    for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sampling,
                                 lora_request=self._loras(loras), use_tqdm=False)
        rows = []
        for o in outs:
            c = o.outputs[0]
            logprobs = (None if c.logprobs is None else
                        [step[t].logprob for step, t in zip(c.logprobs, c.token_ids)])
            rows.append({"token_ids": list(c.token_ids), "logprobs": logprobs})
        return rows

    def prompt_logprobs(self, rows: list[list[int]], loras: list) -> list[list[float]]:
        """log p of every token of each row given the ones before it (the first: 0)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        # One request per call: with LoRA enabled, vLLM 0.32 (CPU) sizes the LoRA logits
        # mapping for the step's sampled tokens, and a step holding the prompt log-probs of
        # several requests fails (einsum size mismatch) and kills the engine core.
        outs = [self.llm.generate([TokensPrompt(prompt_token_ids=r)], params,
                                  lora_request=self._loras([lo]), use_tqdm=False)[0]
                for r, lo in zip(rows, loras)]
        return [[0.0] + [step[t].logprob for step, t in zip(o.prompt_logprobs[1:], r[1:])]
                for o, r in zip(outs, rows)]

    def set_z(self, z: dict[str, bytes] | None, kind: str = "reference",
              max_mult: float = 1.0) -> list[dict]:
        return self.llm.collective_rpc("t2ray_set_z", args=(z, kind, max_mult))

    def reload_checkpoint(self) -> list[dict]:
        return self.llm.collective_rpc("t2ray_reload_checkpoint")

    def info(self) -> dict:
        """Process ids (this actor and what vLLM spawned) and each rank's SVF bytes."""
        import psutil

        me = psutil.Process()
        return {"pids": sorted([me.pid] + [c.pid for c in me.children(recursive=True)]),
                "svf": self.svf}


def start_engine_actor(cfg: VLLMConfig, name: str | None = None):
    """The engine actor (Ray must be running). With `name`, a detached-from-caller named actor
    that other processes (Ray Train ranks, Serve replicas) can join with `ray.get_actor`."""
    import ray

    gpus = cfg.num_gpus
    if gpus is None:
        gpus = cfg.tensor_parallel_size if torch.cuda.is_available() else 0
    options = {"num_cpus": cfg.num_cpus, "num_gpus": gpus}
    if name:
        options.update(name=name, get_if_exists=True)
    return ray.remote(VLLMEngineActor).options(**options).remote(asdict(cfg))


class VLLMEngine(Engine):
    """The engine interface over a `VLLMEngineActor` (started here unless `actor` is given)."""

    adapter_kinds = (EXPERT, LORA, ROW_LORAS)

    def __init__(self, cfg: VLLMConfig | None = None, actor=None):
        super().__init__()
        import ray

        self.cfg = cfg or VLLMConfig()
        self.tokenizer = load_tokenizer(self.cfg.model)
        self.cache = None
        if self.cfg.svd_cache:
            from t2ray.svf.cache import SVDCache

            self.cache = SVDCache(self.cfg.svd_cache)
        self.own_actor = actor is None
        self.actor = actor if actor is not None else start_engine_actor(self.cfg)
        ray.get(self.actor.info.remote())  # wait until the engine is built
        self._lora_dir = Path(tempfile.mkdtemp(prefix="t2ray-vllm-lora-"))
        self._lora_ids = 0
        self._row_loras: list | None = None
        self.last_sync: dict = {}

    # --- adapters
    def _enter(self, kind: str, adapter) -> None:
        if kind == EXPERT:
            self.last_sync = self.sync_z(adapter)
        elif kind in (LORA, ROW_LORAS):
            rows = adapter if kind == ROW_LORAS else [adapter]
            exported: dict[int, tuple] = {}
            for lora in rows:
                if lora is not None and id(lora) not in exported:
                    exported[id(lora)] = self._export(lora)
            self._row_loras = [None if lo is None else exported[id(lo)] for lo in rows]

    def _exit(self, kind: str) -> None:
        if kind == EXPERT:
            self._call("set_z", None)
        self._row_loras = None

    def sync_z(self, expert) -> dict:
        """Send an expert's z to every worker; bytes sent and seconds in the workers."""
        import time

        if self.cache is None:
            raise ValueError("this vLLM engine was built without svd_cache; pass one to run "
                             "SVF experts")
        if expert.base_fingerprint and expert.base_fingerprint != self.cache.fingerprint:
            raise ValueError(f"expert {expert.task!r} was trained on base "
                             f"{expert.base_fingerprint}, this engine's base is "
                             f"{self.cache.fingerprint}; move it with `t2ray svf transfer`")
        check_ranks(expert.ranks(), self.cache.ranks(), what=f"expert {expert.task!r}")
        z = {n: v.detach().float().cpu().contiguous().numpy().tobytes()
             for n, v in expert.z.items()}
        t0 = time.perf_counter()
        ranks = self._call("set_z", z, expert.param.kind, expert.param.max_mult)
        return {"bytes": sum(map(len, z.values())), "seconds": time.perf_counter() - t0,
                "worker_seconds": max(r["seconds"] for r in ranks)}

    def _export(self, lora: LoraWeights) -> tuple:
        from t2ray.lora.peft_io import export_peft

        if lora.rank > self.cfg.max_lora_rank:
            raise ValueError(f"LoRA rank {lora.rank} is above this engine's max_lora_rank "
                             f"{self.cfg.max_lora_rank}; build the engine with a larger one")
        unsupported = sorted(set(lora.target_modules) - set(VLLM_LORA_MODULES))
        if unsupported:
            raise ValueError(f"vLLM applies LoRA to {VLLM_LORA_MODULES}, not {unsupported}")
        self._lora_ids += 1
        name = f"t2ray-{self._lora_ids}"
        path = export_peft(lora, self._lora_dir / name, base_model=self.cfg.model)
        return (name, self._lora_ids, str(path))

    def _loras_for(self, n: int) -> list:
        self._check_rows(n)
        if self._row_loras is None:
            return [None] * n
        return self._row_loras * n if self._kind == LORA else list(self._row_loras)

    def _call(self, method: str, *args):
        import ray

        return ray.get(getattr(self.actor, method).remote(*args))

    # --- the interface
    def generate(self, prompts: Sequence[PromptLike], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | None = None, logprobs: bool = False) -> list[Completion]:
        if not prompts:
            return []
        params = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                  "seed": seed, "logprobs": 0 if logprobs else None}
        rows = self._call("generate", [prompt_ids(self.tokenizer, p) for p in prompts], params,
                          self._loras_for(len(prompts)))
        return [make_completion(self.tokenizer, r["token_ids"], r["logprobs"], stop)
                for r in rows]

    def score(self, prompts: Sequence[PromptLike], continuations: Sequence[str], *,
              per_token: bool = False) -> torch.Tensor:
        rows, spans = continuation_rows(self.tokenizer, prompts, continuations)
        logp = self._call("prompt_logprobs", rows, self._loras_for(len(rows)))
        sums = torch.tensor([sum(lp[a:b]) for lp, (a, b) in zip(logp, spans)],
                            dtype=torch.float32)
        return reduce_scores(sums, spans, per_token)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def describe(self) -> dict:
        return {"engine": "vllm", "model": self.cfg.model,
                "base_fingerprint": self.cache.fingerprint if self.cache else None,
                "svf_targets": sorted(self.cache.matrices) if self.cache else [],
                "adapter_kinds": list(self.adapter_kinds),
                "tensor_parallel_size": self.cfg.tensor_parallel_size,
                "max_lora_rank": self.cfg.max_lora_rank, "dtype": self.cfg.dtype}

    def info(self) -> dict:
        return self._call("info")

    def close(self) -> None:
        """Stop the engine actor if this client started it, and drop the exported LoRAs."""
        import ray

        if self.own_actor:
            ray.kill(self.actor)
        shutil.rmtree(self._lora_dir, ignore_errors=True)
