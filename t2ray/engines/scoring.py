"""Scoring given answers instead of generating: log p(answer + eos | templated prompt) for many
(prompt, answer) pairs in batched forwards. The router decides with it, the few-shot search
breaks ties with it, and RL on a closed answer set samples from it."""

from __future__ import annotations

import torch

from t2ray.engines.hf import format_prompt


@torch.inference_mode()
def answer_logprobs(model, tokenizer, prompts: list[str], answers: list[str],
                    batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (prompt, answer) pair: sum of log p(answer tokens + eos | templated prompt), and the
    number of those tokens. One forward pass per batch of pairs; no generation."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    rows, spans = [], []
    for p, a in zip(prompts, answers):
        ctx = tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
        ans = tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(ctx + ans)
        spans.append((len(ctx), len(ctx) + len(ans)))
    sums = torch.empty(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(device),
                                       attention_mask=mask.to(device)).logits.float(), -1).cpu()
        for i, (a, b) in enumerate(spans[start : start + len(chunk)]):
            # the token at position t is predicted by the logits at t - 1
            sums[start + i] = logp[i, a - 1 : b - 1].gather(-1, ids[i, a:b, None]).sum()
    return sums, torch.tensor([b - a for a, b in spans], dtype=torch.float32)


def label_logprobs(model, tokenizer, prompts: list[str], labels: list[str],
                   batch_size: int = 64, per_token: bool = True) -> torch.Tensor:
    """(len(prompts), len(labels)): log p(label + eos | templated prompt), divided by the
    label's token count when `per_token`. Unnormalised sums rank a label by its length as much
    as by its meaning: with the bundled character-level tokenizer `reasoning` is 10 tokens
    against 5 for `math`, and the sum leaves it a probability near 1e-7."""
    pairs = [(p, label) for p in prompts for label in labels]
    sums, counts = answer_logprobs(model, tokenizer, [p for p, _ in pairs],
                                   [a for _, a in pairs], batch_size)
    return (sums / counts if per_token else sums).view(len(prompts), len(labels))
