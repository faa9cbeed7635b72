"""The engine interface. Every caller (evaluation, routers, the two-pass runner, the few-shot
search, RL rollouts, serving) reaches a model through these methods and nothing else, so an
in-process Hugging Face model, a lock-step ZeRO-3 policy and a remote vLLM actor are
interchangeable:

- `generate(prompts, ...)`: completions (text, token ids, optional per-token log-probs, finish
  reason) for chat prompts, templated by the engine with its model's own template;
- `score(prompts, continuations, per_token=...)`: log p(continuation + eos | prompt) per pair,
  in one forward per batch (routers, label-set rollouts and few-shot tie-breaks use it);
- `adapted(adapter)`: a context manager that runs the engine with an adapter and gives back the
  base model exactly on exit. An adapter is None, an `ExpertVector` (a mixture is one), a
  `LoraWeights`, or a list with one of those per prompt row (the factorized SVF path / batched
  LoRA). `adapter_kind` is the one place that tells adapters apart;
- `count_tokens(texts)`: token counts (callers size `max_new_tokens` without a tokenizer);
- `describe()`: model id, base fingerprint, SVF targets and the adapter kinds it takes;
- `close()`: release an engine actor or other outside resources (a no-op in-process).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch

from t2ray.lora.weights import LoraWeights
from t2ray.models import tensors_fingerprint
from t2ray.models.prompt import Prompt
from t2ray.svf.expert import ExpertVector

NONE, EXPERT, LORA, ROW_EXPERTS, ROW_LORAS = "none", "expert", "lora", "row-experts", "row-loras"
ADAPTER_KINDS = (EXPERT, LORA, ROW_EXPERTS, ROW_LORAS)
Adapter = Union[None, ExpertVector, LoraWeights, Sequence[Union[None, ExpertVector, LoraWeights]]]
PromptLike = Union[str, Prompt]


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # generated ids, eos excluded
    logprobs: list[float] | None = None  # log p of each generated token (T = 1), if asked for
    finish_reason: str = "stop"  # "stop": eos or a stop string; "length": max_new_tokens


def adapter_kind(adapter: Adapter) -> str:
    """What an adapter is: none, expert, lora, row-experts or row-loras. A per-row list may hold
    None rows (the base model for that row) but not both experts and LoRAs."""
    if adapter is None:
        return NONE
    if isinstance(adapter, ExpertVector):
        return EXPERT
    if isinstance(adapter, LoraWeights):
        return LORA
    if isinstance(adapter, (list, tuple)):
        if any(isinstance(a, (list, tuple)) for a in adapter):
            raise TypeError("a per-row adapter list holds single adapters, not lists")
        kinds = {adapter_kind(a) for a in adapter} - {NONE}
        if not kinds:
            return NONE
        if len(kinds) > 1:
            raise ValueError("one batch mixes SVF experts and LoRAs; run them as separate "
                             "batches")
        return ROW_EXPERTS if kinds == {EXPERT} else ROW_LORAS
    raise TypeError(f"unknown adapter {type(adapter).__name__}: expected None, an ExpertVector, "
                    "a LoraWeights or a per-row list of them")


def adapter_fingerprint(adapter: Adapter) -> str:
    """Content hash of an adapter (its tensors and how they apply): what a kept score was made
    with, so that a changed adapter is never matched with a stale score."""
    kind = adapter_kind(adapter)
    if kind == NONE and not isinstance(adapter, (list, tuple)):
        return "none"
    if kind == EXPERT:
        return tensors_fingerprint(adapter.z, f"{adapter.param}|{adapter.base_fingerprint}")
    if kind == LORA:
        return tensors_fingerprint({**{f"A.{k}": v for k, v in adapter.a.items()},
                                    **{f"B.{k}": v for k, v in adapter.b.items()}},
                                   f"lora|{adapter.scale}")
    return "rows:" + ",".join(adapter_fingerprint(a) for a in adapter)


class Engine(ABC):
    """Generation and scoring for one base model, adaptable per `adapted` block."""

    #: the adapter kinds `adapted` takes besides None
    adapter_kinds: tuple[str, ...] = ADAPTER_KINDS

    def __init__(self):
        self._kind, self._adapter = NONE, None
        self._active = False

    @abstractmethod
    def generate(self, prompts: Sequence[PromptLike], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | None = None, logprobs: bool = False) -> list[Completion]:
        """Completions of each prompt: greedy at temperature 0, else sampled (reproducible for a
        seed). Text stops before the first `stop` string; eos is never part of a completion."""

    @abstractmethod
    def score(self, prompts: Sequence[PromptLike], continuations: Sequence[str], *,
              per_token: bool = False) -> torch.Tensor:
        """(N,) float32: log p(continuation + eos | prompt) for each pair, divided by the
        continuation's token count (eos included) when `per_token`."""

    @abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text under this engine's tokenizer (no special tokens added)."""

    @abstractmethod
    def describe(self) -> dict:
        """{"engine", "model", "base_fingerprint", "svf_targets", "adapter_kinds", ...}."""

    def close(self) -> None:  # noqa: B027 (engines that own processes override it)
        """Release what the engine holds outside this process (an engine actor, temp files)."""

    @contextmanager
    def adapted(self, adapter: Adapter) -> Iterator["Engine"]:
        """Run with `adapter` inside the block; the base model again on exit (also on error)."""
        kind = adapter_kind(adapter)
        if kind != NONE and kind not in self.adapter_kinds:
            raise ValueError(f"{type(self).__name__} does not take {kind} adapters "
                             f"(it takes {list(self.adapter_kinds) or 'none'})")
        if self._active:
            raise RuntimeError("this engine is already adapted: leave the current adapted() "
                               "block before entering another")
        self._enter(kind, adapter)
        self._kind, self._adapter, self._active = kind, adapter, True
        try:
            yield self
        finally:
            self._kind, self._adapter, self._active = NONE, None, False
            self._exit(kind)

    def _enter(self, kind: str, adapter: Adapter) -> None:  # noqa: B027 (optional hook)
        """Install an adapter that applies to the whole engine (per-row kinds apply per batch)."""

    def _exit(self, kind: str) -> None:  # noqa: B027 (optional hook)
        """Undo `_enter` exactly."""

    def _check_rows(self, n: int) -> None:
        if self._kind in (ROW_EXPERTS, ROW_LORAS) and len(self._adapter) != n:
            raise ValueError(f"{len(self._adapter)} per-row adapters for {n} prompts")


def label_scores(engine: Engine, prompts: Sequence[PromptLike], labels: Sequence[str],
                 per_token: bool = True) -> torch.Tensor:
    """(len(prompts), len(labels)): log p(label + eos | prompt) for every pair, divided by the
    label's token count when `per_token`. Unnormalised sums rank a label by its length as much
    as by its meaning: with the bundled character-level tokenizer `reasoning` is 10 tokens
    against 5 for `math`, and the sum leaves it a probability near 1e-7."""
    pairs = [(p, label) for p in prompts for label in labels]
    scores = engine.score([p for p, _ in pairs], [a for _, a in pairs], per_token=per_token)
    return scores.view(len(prompts), len(labels))
