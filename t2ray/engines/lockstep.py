"""Generation through a training policy's own forward, in lock-step across ranks (ZeRO-3).

Under ZeRO-3 every forward gathers the partitioned weights, a collective, so every rank must run
the same number of forwards: a rank whose completions have all ended keeps stepping until every
rank's have. The weights are partitioned, so nothing is recomposed in place and there is no KV
cache: each new token re-runs the sequence (quadratic in length). That is fine for the models a
CPU run trains; at 70B the rollouts belong on a separate engine that follows z.

The engine *is* the policy being trained: it always runs the policy's current weights and takes
no other adapter (`adapted(None)` is the only block it accepts, and changes nothing).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist

from t2ray.engines.base import Completion, Engine, PromptLike
from t2ray.engines.local import count_tokens, make_completion, sequence_logprobs
from t2ray.models.prompt import prompt_ids


def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_ranks(value: int, op) -> int:
    if _group_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, op=op)
    return int(t.item())


def _same_on_every_rank(n: int) -> None:
    if _all_ranks(n, dist.ReduceOp.MAX) != n or _all_ranks(n, dist.ReduceOp.MIN) != n:
        raise ValueError("every rank must generate or score the same number of prompts "
                         "(each forward is a collective under ZeRO-3)")


class LockstepEngine(Engine):
    """The engine interface over `forward(ids, attention_mask) -> logits`. Every rank must call
    `generate` and `score` with the same number of prompts."""

    adapter_kinds = ()

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 tokenizer, batch_size: int = 64, name: str = "policy"):
        super().__init__()
        self.forward, self.tokenizer, self.batch_size = forward, tokenizer, batch_size
        self.name = name

    @torch.no_grad()
    def generate(self, prompts: Sequence[PromptLike], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | None = None, logprobs: bool = False) -> list[Completion]:
        if top_p != 1.0:
            raise ValueError("the lock-step engine samples from the full distribution (top_p 1)")
        n = len(prompts)
        _same_on_every_rank(n)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        out: list[Completion] = []
        for start in range(0, n, self.batch_size):
            out += self._batch(prompts[start : start + self.batch_size], max_new_tokens,
                               temperature, generator, stop, logprobs)
        return out

    def _batch(self, prompts, max_new_tokens, temperature, generator, stop,
               logprobs) -> list[Completion]:
        tok = self.tokenizer
        encoded = [prompt_ids(tok, p) for p in prompts]
        # Right padding: positions stay 0..len-1 with no position ids to pass, and the causal
        # mask keeps trailing pads out of every real token's view.
        lengths = torch.tensor([len(e) for e in encoded])
        ids = torch.full((len(encoded), int(lengths.max()) + max_new_tokens), tok.pad_token_id)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
        generated: list[list[int]] = [[] for _ in encoded]
        token_logp: list[list[float]] = [[] for _ in encoded]
        done = torch.zeros(len(encoded), dtype=torch.bool)
        rows = torch.arange(len(encoded))
        for _ in range(max_new_tokens):
            width = int(lengths.max())
            attn = (torch.arange(width)[None, :] < lengths[:, None]).long()
            logits = self.forward(ids[:, :width], attn)[rows, lengths - 1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = logits.argmax(-1)
            step_logp = torch.log_softmax(logits, -1).gather(-1, nxt[:, None])[:, 0]
            for i in torch.nonzero(~done)[:, 0].tolist():
                generated[i].append(int(nxt[i]))
                token_logp[i].append(float(step_logp[i]))
                if int(nxt[i]) == tok.eos_token_id:
                    done[i] = True
                else:
                    ids[i, lengths[i]] = nxt[i]
                    lengths[i] += 1
            if _all_ranks(int(done.all()), dist.ReduceOp.MIN):
                break
        return [make_completion(tok, g, lp if logprobs else None, stop)
                for g, lp in zip(generated, token_logp)]

    def score(self, prompts: Sequence[PromptLike], continuations: Sequence[str], *,
              per_token: bool = False) -> torch.Tensor:
        _same_on_every_rank(len(prompts))
        return sequence_logprobs(lambda ids, mask, rows: self.forward(ids, mask), self.tokenizer,
                                 prompts, continuations, self.batch_size, per_token)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def describe(self) -> dict:
        return {"engine": "lockstep", "model": self.name, "base_fingerprint": None,
                "svf_targets": [], "adapter_kinds": []}
