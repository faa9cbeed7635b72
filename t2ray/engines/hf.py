"""Hugging Face generation engine: batched greedy or sampled decoding on CPU or GPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # generated ids, eos excluded


def format_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """The model's own prompt template around one user turn, ready for the assistant's answer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class HFEngine:
    """Batched generation with a transformers model. Prompts are already templated text.

    `set_expert` recomposes W' into the weights (one expert or mixture for every request);
    `set_lora` applies one LoRA to every request. Both undo the previous adaptation first.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, svd_cache=None):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.svd_cache = svd_cache
        self._saved_weights: dict | None = None
        self._lora = None

    def set_expert(self, expert) -> None:
        """Adapt to an ExpertVector (None: back to the base weights)."""
        from t2ray.svf.apply import apply_expert, restore_weights

        if self._saved_weights is not None:
            restore_weights(self.model, self._saved_weights)
            self._saved_weights = None
        if expert is not None:
            if self.svd_cache is None:
                raise ValueError("this engine was built without an SVD cache; pass svd_cache=")
            self._saved_weights = apply_expert(self.model, self.svd_cache, expert)

    def set_lora(self, lora) -> None:
        """Apply one LoraWeights to every request (None: no LoRA)."""
        self._lora = lora

    def reset(self) -> None:
        """Back to the base model."""
        self.set_expert(None)
        self.set_lora(None)

    @torch.inference_mode()
    def generate(
        self, prompts: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Completion]:
        if seed is not None:
            torch.manual_seed(seed)
        tok, out = self.tokenizer, []
        device = next(self.model.parameters()).device
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0 else {"do_sample": False}
            )
            with self._adapted(len(batch)):
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id, **sampling,
                )
            for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                if tok.eos_token_id in row:
                    row = row[: row.index(tok.eos_token_id)]
                row = [t for t in row if t != tok.pad_token_id]
                out.append(Completion(tok.decode(row, skip_special_tokens=True), row))
        return out

    def _adapted(self, batch_size: int):
        from contextlib import nullcontext

        from t2ray.lora.weights import batched_lora

        return nullcontext() if self._lora is None else batched_lora(
            self.model, [self._lora] * batch_size)
