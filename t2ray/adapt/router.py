"""Pass 1 of two-pass adaptation: decide which expert (or the base weights) answers a question.

`prompt` strategy: the base model reads the routing prompt and we score each category label's
log-probability as the answer in one forward pass over all (question, label) pairs - no free
generation, so no unparseable output. `classifier` strategy: the same scoring with the classifier
expert applied (an SVF expert trained with the RL trainer on the `route` task). The category
`other` routes to the base weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from t2ray.engines.base import Engine, label_scores
from t2ray.tasks.route import CATEGORIES, route_prompt

BASE = "other"  # the category that keeps the base weights


@dataclass
class Router:
    """Scores the routing prompt's labels with the engine's current weights (base or classifier)."""

    engine: Engine
    classifier: object | None = None  # ExpertVector for the `classifier` strategy
    categories: tuple[str, ...] = CATEGORIES

    def scores(self, questions: list[str]):
        """(len(questions), len(categories)): each label's per-token log-probability."""
        with self.engine.adapted(self.classifier):
            return label_scores(self.engine, [route_prompt(q) for q in questions],
                                list(self.categories))

    def pick(self, scores) -> list[str]:
        """The category of each row of `scores`: the label scored highest."""
        return [self.categories[i] for i in scores.argmax(-1).tolist()]

    def route(self, questions: list[str]) -> list[str]:
        return self.pick(self.scores(questions))
