"""An engine with no model and no tokenizer: answers and scores come from functions of the
prompt and the adapter it runs under. Callers that pass their tests on it use the engine
interface only."""

from t2ray.engines.base import ADAPTER_KINDS, Completion, Engine
from t2ray.models.prompt import as_prompt


class FakeEngine(Engine):
    adapter_kinds = ADAPTER_KINDS

    def __init__(self, answer, score=lambda prompt, continuation, adapter: -1.0):
        """`answer(prompt, adapter) -> text`, `score(prompt, continuation, adapter) -> float`
        (the summed log-probability of the continuation + eos)."""
        super().__init__()
        self._answer, self._score = answer, score
        self.calls: list[tuple[str, object, int]] = []  # (method, adapter, number of prompts)

    def _row_adapters(self, n: int) -> list:
        self._check_rows(n)
        return list(self._adapter) if self._kind.startswith("row-") else [self._adapter] * n

    def generate(self, prompts, *, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=None,
                 stop=None, logprobs=False):
        self.calls.append(("generate", self._adapter, len(prompts)))
        texts = [self._answer(as_prompt(p), a)[: max_new_tokens]
                 for p, a in zip(prompts, self._row_adapters(len(prompts)))]
        return [Completion(t, [ord(c) for c in t], [-0.1] * len(t) if logprobs else None)
                for t in texts]

    def score(self, prompts, continuations, *, per_token=False):
        import torch

        self.calls.append(("score", self._adapter, len(prompts)))
        sums = [self._score(as_prompt(p), c, a) for p, c, a in
                zip(prompts, continuations, self._row_adapters(len(prompts)))]
        out = torch.tensor(sums, dtype=torch.float32)
        return out / torch.tensor([len(c) + 1.0 for c in continuations]) if per_token else out

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def describe(self):
        return {"engine": "fake", "model": "fake", "base_fingerprint": "f" * 16,
                "svf_targets": [], "adapter_kinds": list(self.adapter_kinds)}
