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


def test_kept_results_are_reused_only_under_the_same_key(tmp_path):
    from t2ray.eval.results import kept_json

    calls = []
    compute = lambda: calls.append(1) or {"acc": len(calls)}  # noqa: E731
    key = {"base": "b1", "adapter": "a1", "items": "i1"}
    assert kept_json(tmp_path / "s.json", key, compute) == {"acc": 1}
    assert kept_json(tmp_path / "s.json", key, compute) == {"acc": 1} and len(calls) == 1
    assert kept_json(tmp_path / "s.json", {**key, "base": "b2"}, compute) == {"acc": 2}
    (tmp_path / "old.json").write_text('{"acc": 9}')  # a score kept before keys existed
    assert kept_json(tmp_path / "old.json", key, compute) == {"acc": 3}


def test_adapter_fingerprint_sees_every_change():
    import torch

    from t2ray.engines.base import adapter_fingerprint
    from t2ray.lora.weights import LoraWeights
    from t2ray.svf.expert import ExpertVector, SVFParam

    e = ExpertVector({"m": torch.zeros(4)}, SVFParam("reference"), "fp")
    changed = ExpertVector({"m": torch.tensor([0.0, 0, 0, 1e-6])}, SVFParam("reference"), "fp")
    other_param = ExpertVector({"m": torch.zeros(4)}, SVFParam("linear"), "fp")
    lora = LoraWeights({"m": torch.ones(2, 3)}, {"m": torch.zeros(3, 2)}, 2, 4.0, False)
    scaled = LoraWeights({"m": torch.ones(2, 3)}, {"m": torch.zeros(3, 2)}, 2, 8.0, False)
    prints = [adapter_fingerprint(a) for a in (None, e, changed, other_param, lora, scaled,
                                                [e, None])]
    assert len(set(prints)) == len(prints) and prints[0] == "none"
    assert adapter_fingerprint(e) == adapter_fingerprint(
        ExpertVector({"m": torch.zeros(4)}, SVFParam("reference"), "fp"))


def test_verdicts_are_kept_compactly_and_rederive_the_rows(tmp_path):
    from t2ray.eval.results import read_verdicts, verdict_entry, write_verdicts

    def row(task, bits, seed=None):
        return verdict_entry(task, "base", "test", [b == "1" for b in bits], seed)

    path = tmp_path / "scores" / "base.jsonl.gz"
    write_verdicts(path, "base", [row("math", "0110"), row("code", "1")], "c")
    write_verdicts(path, "base", [row("math", "1111")], "c2")  # replaces math
    write_verdicts(path, "base", [row("math", "0001", seed=1)], "c3")  # another seed: kept beside
    kept = {(d["task"], d["method"], d["seed"]): d for d in read_verdicts(path)}
    assert kept[("math", "base", None)]["verdicts"] == "1111"
    assert kept[("math", "base", None)]["command"] == "c2"
    assert kept[("math", "base", 1)]["verdicts"] == "0001" and kept[("math", "base", 1)]["n"] == 4
    assert kept[("code", "base", None)]["n"] == 1 and len(kept) == 3
