"""The evaluation harness: intervals against a reference, accuracy of known completions."""

import math

import pytest

from t2ray.eval.harness import wilson_interval
from t2ray.eval.results import ResultRow, merge_results


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


def test_results_rows_merge(tmp_path):
    from t2ray.eval.harness import EvalRow

    path = tmp_path / "results.json"
    rows = [EvalRow("math", "test", 100, 40, 0.4, 0.31, 0.5, 1.0)]
    merge_results(path, [ResultRow.from_eval(r, "base", "base", "t2ray demo") for r in rows])
    merge_results(path, [ResultRow.from_eval(EvalRow("math", "test", 100, 50, 0.5, 0.4, 0.6, 1.0),
                                             "base", "base", "t2ray demo"),
                         ResultRow("seen", "math", "svf-rl", 70.0, 1.5, 3, 1296, "x", n=100,
                                   extra={"seeds": [69.0, 70.0, 71.0]})])
    import json

    data = json.loads(path.read_text())
    assert len(data) == 2 and data[0]["mean"] == 50.0 and data[0]["table"] == "base"
    assert data[0]["ci95"] == [40.0, 60.0] and data[1]["seeds"] == [69.0, 70.0, 71.0]
    with pytest.raises(TypeError, match="ResultRow"):
        merge_results(path, [data[0]])


def test_result_rows_refuse_what_the_schema_forbids():
    with pytest.raises(ValueError, match="n_seeds"):
        ResultRow("seen", "math", "base", 50.0, 0.0, 0, None, "x")
    with pytest.raises(ValueError, match="metric"):
        ResultRow("seen", "math", "base", 50.0, 0.0, 1, None, "x", metric="bleu")
    with pytest.raises(ValueError, match="shadow"):
        ResultRow("seen", "math", "base", 50.0, 0.0, 1, None, "x", extra={"mean": 3})


def test_the_shipped_results_json_round_trips_through_result_rows():
    """Every row of docs/results.json is a ResultRow: reading and writing it changes nothing."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "results.json"
    rows = json.loads(path.read_text())
    assert [ResultRow.from_dict(r).as_dict() for r in rows] == rows
