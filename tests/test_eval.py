"""The evaluation harness: intervals against a reference, accuracy of known completions."""

import math

import pytest

from t2ray.engines.hf import Completion
from t2ray.eval.harness import evaluate_task, wilson_interval
from t2ray.eval.report import merge_results, result_rows
from t2ray.tasks import get_task


def _wilson_reference(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    # Closed form from Wilson (1927), computed independently of the implementation.
    p = k / n
    a = p + z * z / (2 * n)
    b = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    c = 1 + z * z / n
    return (a - b) / c, (a + b) / c


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (500, 1000), (999, 1000), (1000, 1000)])
def test_wilson_interval(k, n):
    lo, hi = wilson_interval(k, n)
    ref_lo, ref_hi = _wilson_reference(k, n)
    assert lo == pytest.approx(max(0.0, ref_lo), abs=1e-4)
    assert hi == pytest.approx(min(1.0, ref_hi), abs=1e-4)
    assert lo <= k / n <= hi


class ScriptedEngine:
    """Answers the reference solution for the first `n_right` prompts, garbage after."""

    def __init__(self, task, n_right, tokenizer):
        self.task, self.n_right, self.tokenizer = task, n_right, tokenizer

    def generate(self, prompts, max_new_tokens=64, **_):
        examples = self.task.examples("test", len(prompts))
        return [Completion(e.solution if i < self.n_right else "???", [])
                for i, e in enumerate(examples)]


def test_evaluate_task_counts_what_the_verifier_accepts():
    from t2ray.models.tokenizer import build_char_tokenizer

    task = get_task("math")
    row = evaluate_task(ScriptedEngine(task, 30, build_char_tokenizer()), task, "test", n=40)
    assert (row.n, row.correct) == (40, 30)
    assert row.accuracy == 0.75 and row.ci_low < 0.75 < row.ci_high
    assert row.item_correct == (True,) * 30 + (False,) * 10 and "item_correct" not in row.as_dict()


def test_results_rows_merge(tmp_path):
    from t2ray.eval.harness import EvalRow

    path = tmp_path / "results.json"
    rows = [EvalRow("math", "test", 100, 40, 0.4, 0.31, 0.5, 1.0)]
    merge_results(path, result_rows(rows, "base", "base", "t2ray demo"))
    merge_results(path, result_rows([EvalRow("math", "test", 100, 50, 0.5, 0.4, 0.6, 1.0)],
                                    "base", "base", "t2ray demo"))
    import json

    data = json.loads(path.read_text())
    assert len(data) == 1 and data[0]["mean"] == 50.0 and data[0]["table"] == "base"
