"""Two-pass inference: pass 1 picks the expert per question, pass 2 answers with it.

A batch is grouped by the chosen expert so that each group runs with one recomposed W' (the
cheap path when requests share experts); `other` (and any category without an expert) runs on
the base weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from t2ray.adapt.router import BASE, Router


@dataclass
class TwoPassResult:
    categories: list[str]
    completions: list[str]
    first_pass_s: float
    second_pass_s: float
    group_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def first_pass_share(self) -> float:
        total = self.first_pass_s + self.second_pass_s
        return self.first_pass_s / total if total else 0.0


class TwoPass:
    def __init__(self, engine, experts: dict, router: Router):
        unknown = set(experts) - set(router.categories)
        if unknown:
            raise ValueError(f"experts {sorted(unknown)} are not router categories "
                             f"{list(router.categories)}")
        self.engine, self.experts, self.router = engine, experts, router

    def expert_for(self, category: str):
        """The expert a category routes to; None (base weights) for `other` or no expert."""
        return None if category == BASE else self.experts.get(category)

    def run(self, questions: list[str], max_new_tokens: int) -> TwoPassResult:
        t0 = time.perf_counter()
        categories = self.router.route(questions)
        t1 = time.perf_counter()
        completions: list[str] = [""] * len(questions)
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(categories):
            groups.setdefault(c, []).append(i)
        for category, idx in groups.items():
            with self.engine.adapted(self.expert_for(category)):
                outs = self.engine.generate([questions[i] for i in idx],
                                            max_new_tokens=max_new_tokens)
            for i, o in zip(idx, outs):
                completions[i] = o.text
        return TwoPassResult(categories, completions, t1 - t0, time.perf_counter() - t1,
                             {c: len(i) for c, i in groups.items()})
