"""One few-shot population member as a Ray Tune trial.

Kept apart from `fewshot.py` on purpose: a trial only borrows an engine actor and forwards alpha
to it, so its module imports Ray alone. Tune's trial actors import the trainable's module; with
torch and transformers behind it each trial actor would spend seconds importing a model stack it
never uses, on the same cores the engine actors need.
"""

from __future__ import annotations


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
