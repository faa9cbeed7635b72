"""Hugging Face engine: batched greedy or sampled decoding with a transformers model (CPU/GPU).

Adapters: one expert (or mixture) is recomposed into the weights for the whole `adapted` block
and the saved base tensors are written back bit-exactly on exit; per-row experts run on the
factorized path (each row its own singular values, no weight rebuilt); one LoRA or per-row
LoRAs run as a batched low-rank update beside the frozen weights.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from typing import Sequence

import torch

from t2ray.engines.base import (
    EXPERT,
    LORA,
    ROW_EXPERTS,
    ROW_LORAS,
    Completion,
    Engine,
    PromptLike,
)
from t2ray.engines.local import count_tokens, make_completion, sequence_logprobs
from t2ray.lora.weights import batched_lora
from t2ray.models import weights_fingerprint
from t2ray.models.prompt import templated
from t2ray.svf.apply import (
    apply_expert,
    compose_weights,
    factorized,
    restore_weights,
    uninstall_factorized,
)


class HFEngine(Engine):
    def __init__(self, model, tokenizer, batch_size: int = 64, svd_cache=None,
                 name: str | None = None, keep_recomposed: int = 0):
        """`keep_recomposed`: how many experts' W' to keep (least recently used dropped), so
        that entering a kept expert again writes W' without recomposing it."""
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.svd_cache = svd_cache
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self._saved: dict | None = None  # base weights under a recomposed expert
        self._fingerprint = svd_cache.fingerprint if svd_cache is not None else None
        self.keep_recomposed = keep_recomposed
        # id(expert) -> (expert, W'); the entry holds the expert, so its id is not reused
        self._kept: OrderedDict[int, tuple] = OrderedDict()

    # --- adapters
    def _enter(self, kind: str, adapter) -> None:
        if kind in (EXPERT, ROW_EXPERTS) and self.svd_cache is None:
            raise ValueError("this engine was built without an SVD cache; pass svd_cache= to "
                             "run SVF experts")
        if kind == EXPERT:
            self._saved = apply_expert(self.model, self.svd_cache, adapter,
                                       self._kept_weights(adapter))

    def _kept_weights(self, expert) -> dict | None:
        if not self.keep_recomposed:
            return None
        kept = self._kept.get(id(expert))
        if kept is None or kept[0] is not expert:
            dtype = next(self.model.parameters()).dtype
            kept = self._kept[id(expert)] = (expert, compose_weights(self.svd_cache, expert,
                                                                     dtype))
            while len(self._kept) > self.keep_recomposed:
                self._kept.popitem(last=False)
        self._kept.move_to_end(id(expert))
        return kept[1]

    def _exit(self, kind: str) -> None:
        if self._saved is not None:
            restore_weights(self.model, self._saved)
            self._saved = None
        if kind == ROW_EXPERTS:  # give back the model's own modules
            uninstall_factorized(self.model)

    def _rows(self, rows: slice):
        """The adapter context of one batch: the rows `rows` of this call's prompts."""
        n = rows.stop - rows.start
        if self._kind == LORA:
            return batched_lora(self.model, [self._adapter] * n)
        if self._kind == ROW_LORAS:
            return batched_lora(self.model, self._adapter[rows])
        if self._kind == ROW_EXPERTS:
            return factorized(self.model, self.svd_cache, self._adapter[rows])
        return nullcontext()

    # --- the interface
    @torch.inference_mode()
    def generate(self, prompts: Sequence[PromptLike], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | None = None, logprobs: bool = False) -> list[Completion]:
        self._check_rows(len(prompts))
        if seed is not None:
            torch.manual_seed(seed)
        tok, out = self.tokenizer, []
        device = next(self.model.parameters()).device
        texts = [templated(tok, p) for p in prompts]
        sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
                    if temperature > 0 else {"do_sample": False})
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with self._rows(slice(start, start + len(batch))):
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id, return_dict_in_generate=True,
                    output_logits=logprobs, **sampling)
            new = gen.sequences[:, enc["input_ids"].shape[1] :]
            token_logp = None
            if logprobs:  # log p under the model itself (T = 1), as vLLM reports them
                steps = torch.stack(gen.logits, dim=1).float().log_softmax(-1)
                token_logp = steps.gather(-1, new[:, : steps.shape[1], None])[..., 0].tolist()
            for i, row in enumerate(new.tolist()):
                out.append(make_completion(tok, row, token_logp[i] if logprobs else None, stop))
        return out

    def score(self, prompts: Sequence[PromptLike], continuations: Sequence[str], *,
              per_token: bool = False) -> torch.Tensor:
        self._check_rows(len(prompts))
        device = next(self.model.parameters()).device

        def forward(ids, mask, rows):
            with self._rows(rows):
                return self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits

        return sequence_logprobs(forward, self.tokenizer, prompts, continuations,
                                 self.batch_size, per_token)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def describe(self) -> dict:
        if self._fingerprint is None:
            if self._active:
                raise RuntimeError("describe() hashes the base weights: call it outside an "
                                   "adapted() block")
            self._fingerprint = weights_fingerprint(self.model)
        return {"engine": "hf", "model": self.name, "base_fingerprint": self._fingerprint,
                "svf_targets": sorted(self.svd_cache.matrices) if self.svd_cache else [],
                "adapter_kinds": list(self.adapter_kinds),
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "device": str(next(self.model.parameters()).device)}
