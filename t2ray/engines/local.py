"""What the in-process engines (HF, lock-step) share: templating and counting with their
tokenizer, turning generated ids into a `Completion`, and scoring given continuations from a
forward function in batched passes (no generation)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from t2ray.engines.base import Completion, PromptLike
from t2ray.models.prompt import prompt_ids

# forward(input_ids, attention_mask, rows) -> logits; `rows` is the slice of the call's
# prompts in this batch, so per-row adapters can pick their rows.
Forward = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]


def count_tokens(tokenizer, texts: Sequence[str]) -> list[int]:
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def make_completion(tokenizer, ids: list[int], logprobs: list[float] | None,
                    stop: Sequence[str] | None) -> Completion:
    """A completion from generated ids: cut at eos (excluded), drop pads, cut before the first
    stop string (the ids then cover exactly the text kept)."""
    finish = "length"
    if tokenizer.eos_token_id in ids:
        cut = ids.index(tokenizer.eos_token_id)
        ids, finish = ids[:cut], "stop"
        logprobs = logprobs[:cut] if logprobs is not None else None
    keep = [i for i, t in enumerate(ids) if t != tokenizer.pad_token_id]
    ids = [ids[i] for i in keep]
    logprobs = [logprobs[i] for i in keep] if logprobs is not None else None
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [text.find(s) for s in stop or () if s and s in text]
    if hits:
        text, finish = text[: min(hits)], "stop"
        n = 0  # the longest id prefix whose text fits in what is kept
        while n < len(ids) and len(tokenizer.decode(ids[: n + 1], skip_special_tokens=True)) \
                <= len(text):
            n += 1
        ids = ids[:n]
        logprobs = logprobs[:n] if logprobs is not None else None
    return Completion(text, ids, logprobs, finish)


def continuation_rows(tokenizer, prompts: Sequence[PromptLike],
                      continuations: Sequence[str]) -> tuple[list[list[int]], list[tuple]]:
    """Token ids of each templated prompt + continuation + eos, and the (start, end) of the
    continuation tokens (eos included) in each row: what every engine's `score` sums over."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    rows, spans = [], []
    for p, a in zip(prompts, continuations):
        ctx = prompt_ids(tokenizer, p)
        ans = tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(ctx + ans)
        spans.append((len(ctx), len(ctx) + len(ans)))
    return rows, spans


def reduce_scores(sums: torch.Tensor, spans: list[tuple], per_token: bool) -> torch.Tensor:
    if not per_token:
        return sums
    return sums / torch.tensor([b - a for a, b in spans], dtype=torch.float32)


@torch.inference_mode()
def sequence_logprobs(forward: Forward, tokenizer, prompts: Sequence[PromptLike],
                      continuations: Sequence[str], batch_size: int = 64,
                      per_token: bool = False) -> torch.Tensor:
    """Per (prompt, continuation) pair: sum of log p(continuation tokens + eos | templated
    prompt), or that sum over the token count when `per_token`. One forward per batch."""
    rows, spans = continuation_rows(tokenizer, prompts, continuations)
    sums = torch.empty(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        logits = forward(ids, mask, slice(start, start + len(chunk)))
        logp = torch.log_softmax(logits.float(), -1).cpu()
        for i, (a, b) in enumerate(spans[start : start + len(chunk)]):
            # the token at position t is predicted by the logits at t - 1
            sums[start + i] = logp[i, a - 1 : b - 1].gather(-1, ids[i, a:b, None]).sum()
    return reduce_scores(sums, spans, per_token)
