"""HumanEval's canonical solutions pass the code verifier (through the sandbox pool), and
trivially wrong bodies fail: the verifier neither rejects correct code nor accepts non-answers."""

from __future__ import annotations

from t2ray.tasks.loaders import eval_reference_humaneval, load_humaneval
from t2ray.tasks.rewards import CORRECT, rewards


def test_canonical_solutions_pass():
    assert eval_reference_humaneval() == (164, 164)


def test_return_none_bodies_fail():
    examples = load_humaneval()
    scores = rewards("code", examples, ["    return None\n"] * len(examples))
    accepted = [ex.meta["task_id"] for ex, s in zip(examples, scores) if s == CORRECT]
    # Observed: no HumanEval check() accepts None for every case (0 of 164 pass).
    assert accepted == []
