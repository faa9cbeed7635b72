"""The trial side of the few-shot search: one population member per Ray Tune trial.

Kept apart from `fewshot.py` on purpose, and importing Ray alone. Tune's trial actors import the
trainable's module, and unpickling an actor handle imports the module of the actor's class; if
either pulled in torch and transformers, every trial actor would spend seconds importing a model
stack it never uses, on the cores the engine actors need (measured in docs/benchmarks.md). So
trials run `score_member` from here and hold handles of `EngineActor`, which imports the scorer
only inside its own process.
"""

from __future__ import annotations


class EngineActor:
    """A `ShotScorer` behind a Ray actor: one model copy, lent to one trial at a time."""

    def __init__(self, *args):
        from t2ray.adapt.fewshot import ShotScorer

        self.scorer = ShotScorer.load(*args)

    def set_task(self, task: str, shots: int, select: int, mix_space: str = "z") -> None:
        self.scorer.set_task(task, shots, select, mix_space)

    def score(self, alpha: list[float], on: str = "shots") -> dict:
        return self.scorer.score(alpha, on)


def score_member(config: dict, pool, dim: int) -> None:
    """Borrow an engine actor from `pool`, score alpha on the shots, report the result."""
    import ray
    from ray import tune

    alpha = config["alpha"] if "alpha" in config else [config[f"a{i}"] for i in range(dim)]
    actor = pool.get()
    try:
        result = ray.get(actor.score.remote(alpha))
    finally:
        pool.put(actor)
    tune.report({**result, "alpha": alpha})
