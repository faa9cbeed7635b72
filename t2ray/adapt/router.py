"""Pass 1 of two-pass adaptation: decide which expert (or the base weights) answers a question.

`prompt` strategy: the base model reads the routing prompt and we score each category label's
log-probability as the answer in one forward pass over all (question, label) pairs - no free
generation, so no unparseable output. `classifier` strategy: the same scoring with the classifier
expert applied (an SVF expert trained with the RL trainer on the `route` task). The category
`other` routes to the base weights, and so does any question whose top label's probability
(softmax over the labels' scores) is below `threshold`: a router that is unsure abstains.
`choose_threshold` picks it on validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2ray.engines.base import Engine, label_scores
from t2ray.tasks.route import CATEGORIES, question_of, route_prompt

BASE = "other"  # the category that keeps the base weights


@dataclass
class Router:
    """Scores the routing prompt's labels with the engine's current weights (base or classifier)."""

    engine: Engine
    classifier: object | None = None  # ExpertVector for the `classifier` strategy
    categories: tuple[str, ...] = CATEGORIES
    threshold: float = 0.0  # below this top-label probability: `other` (0 never abstains)

    def scores(self, questions: list[str]):
        """(len(questions), len(categories)): each label's per-token log-probability."""
        with self.engine.adapted(self.classifier):
            return label_scores(self.engine, [route_prompt(q) for q in questions],
                                list(self.categories))

    def pick(self, scores) -> list[str]:
        """The category of each row of `scores`: the label scored highest, or `other` where its
        probability among the labels is below the threshold."""
        return pick_labels(scores, self.categories, self.threshold)

    def route(self, questions: list[str]) -> list[str]:
        return self.pick(self.scores(questions))

    def accuracy(self, split: str = "test", n: int | None = None) -> float:
        """Routing accuracy on the routing task's `split` (with the current threshold)."""
        from t2ray.tasks import get_task

        examples = get_task("route").examples(split, n)
        picks = self.route([question_of(e.prompt) for e in examples])
        return sum(p == e.answer for p, e in zip(picks, examples)) / len(examples)

    def calibrate(self, n: int = 200) -> float:
        """Set `threshold` to the best one on the routing task's first `n` validation items (the
        test split stays unseen); returns the routing accuracy there."""
        from t2ray.tasks import get_task

        examples = get_task("route").examples("validation", n)
        scores = self.scores([question_of(e.prompt) for e in examples])
        self.threshold, accuracy = choose_threshold(scores, [e.answer for e in examples],
                                                    self.categories)
        return accuracy


def calibrate_routers(engine: Engine, classifier=None, n: int = 200) -> dict[str, dict]:
    """The `prompt` router's and (with a classifier expert) the `classifier` router's
    thresholds, each chosen on the routing task's first `n` validation items:
    {strategy: {"threshold", "route_val_accuracy", "n"}} (what a serving library keeps)."""
    routers = {"prompt": Router(engine)}
    if classifier is not None:
        routers["classifier"] = Router(engine, classifier)
    return {name: {"route_val_accuracy": round(r.calibrate(n), 4), "threshold": r.threshold,
                   "n": n} for name, r in routers.items()}


def confidence(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the top label's probability among the labels, its index) per row of `scores`."""
    return scores.float().softmax(-1).max(-1)


def pick_labels(scores: torch.Tensor, categories: tuple[str, ...], threshold: float) -> list[str]:
    top, best = confidence(scores)
    return [BASE if c < threshold else categories[i] for c, i in zip(top.tolist(), best.tolist())]


def choose_threshold(scores: torch.Tensor, truth: list[str], categories: tuple[str, ...] =
                     CATEGORIES, grid: tuple[float, ...] = tuple(i / 20 for i in range(20))
                     ) -> tuple[float, float]:
    """(threshold, routing accuracy) with the best accuracy on these (validation) scores; ties go
    to the lowest threshold, the router that abstains least."""
    def accuracy(t: float) -> float:
        picks = pick_labels(scores, categories, t)
        return sum(p == y for p, y in zip(picks, truth)) / len(truth)

    return max(((t, accuracy(t)) for t in grid), key=lambda ta: (ta[1], -ta[0]))
