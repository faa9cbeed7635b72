"""`t2ray eval` harness: every strategy scores the test items it should, and the files it writes."""

import json
from dataclasses import replace

import pytest
import torch

from t2ray.engines.hf import HFEngine
from t2ray.eval.harness import evaluate_task
from t2ray.experiments.unseen import STRATEGIES, library_for_seed, run_eval
from t2ray.lora.peft_io import export_peft, import_peft
from t2ray.lora.weights import init_lora
from t2ray.svf.expert import ExpertLibrary, ExpertVector, SVFParam
from t2ray.tasks import get_task


@pytest.fixture(scope="module")
def library(tiny_random, tmp_path_factory):
    _, cache = tiny_random
    root = tmp_path_factory.mktemp("library")
    for seed in (0, 1):
        lib = ExpertLibrary(root / f"seed{seed}")
        for k, name in enumerate(["math", "code", "reasoning", "route"]):
            g = torch.Generator().manual_seed(10 * seed + k)
            z = {n: 1 + 0.3 * torch.randn(r, generator=g) for n, r in cache.ranks().items()}
            lib.add(name, ExpertVector.for_cache(cache, z, SVFParam("linear"), task=name))
    return root


def test_library_per_seed_or_shared(library, tmp_path):
    assert library_for_seed(library, 1).root == library / "seed1"
    assert library_for_seed(tmp_path, 3).root == tmp_path


def test_strategies_without_search_over_seeds(tiny_random, library, tmp_path, monkeypatch):
    import t2ray.experiments.unseen as adaptive

    monkeypatch.setattr(adaptive, "ORACLE_VAL_N", 6)
    path, cache = tiny_random
    strategies = ["none", "expert", "oracle-expert", "prompt", "classifier"]
    every = run_eval(str(path), library, ["reasoning", "math-hard"], strategies, [0, 1],
                     tmp_path, str(cache.root), n_test=6, results_json=tmp_path / "r.json")
    methods = ("base", "svf-rl", "oracle-expert", "prompt", "classifier")
    assert {(r.task, r.method) for r in every} == {
        (t, m) for t in ("reasoning", "math-hard", adaptive.MEAN_TASK) for m in methods}
    rows = [r for r in every if r.task != adaptive.MEAN_TASK]
    for m in methods:  # the unseen mean pools both families' items (equal sizes: mean of means)
        mean = next(r for r in every if (r.task, r.method) == (adaptive.MEAN_TASK, m))
        per_task = [r for r in rows if r.method == m]
        for k in (0, 1):
            assert mean.get("seeds")[k] == pytest.approx(
                sum(r.get("seeds")[k] for r in per_task) / 2, abs=0.01)
        assert mean.n == 12 and mean.n_seeds == 2
        assert set(mean.get("diff_ci95")) == set(methods) - {m}
        if m != "base":  # the observed difference lies in its paired interval
            base = next(r for r in every if (r.task, r.method) == (adaptive.MEAN_TASK, "base"))
            low, high = mean.get("diff_ci95")["base"]
            assert low - 1e-6 <= mean.mean - base.mean <= high + 1e-6
    scores = json.loads((tmp_path / "scores.json").read_text())
    for r in rows:
        assert r.n_seeds == 2 and r.n == 6 and 0 <= r.mean <= 100
        two_pass = r.method in ("prompt", "classifier")
        assert (r.get("first_pass_share") is not None) == two_pass
        low, high = r.get("ci95")
        assert low - 1e-9 <= r.mean <= high + 1e-9
        assert (r.get("diff_vs_base_ci95") is None) == (r.method == "base")
        if two_pass:  # routing accuracy on the route test split, agreement with the oracle
            assert 0 <= r.get("router_test_accuracy") <= 100
            mine = [s for s in scores if (s["task"], s["strategy"]) == (r.task, r.method)]
            oracle = {s["seed"]: s["chosen"] for s in scores
                      if (s["task"], s["strategy"]) == (r.task, "oracle-expert")}
            assert r.get("oracle_route") == [oracle[s["seed"]] for s in mine]
            assert r.get("oracle_route_agreement") == pytest.approx(100 * sum(
                s["routed"].get(oracle[s["seed"]], 0) / 6 for s in mine) / 2, abs=0.01)
    from t2ray.eval.results import read_verdicts

    kept = read_verdicts(tmp_path / "scores" / "unseen.jsonl.gz")
    assert len(kept) == len(rows) * 2
    for k in kept:
        row = next(r for r in rows if (r.task, r.method) == (k["task"], k["method"]))
        assert 100 * k["verdicts"].count("1") / 6 == row.get("seeds")[k["seed"]]
    base = [r for r in rows if r.method == "base"]
    assert all(r.sd == 0 for r in base)  # greedy base: the same on every seed
    assert all(sum(s["routed"].values()) == 6 for s in scores if s["strategy"] == "classifier")
    assert (tmp_path / "table.md").read_text().startswith("| task | method")
    assert json.loads((tmp_path / "r.json").read_text())[0]["table"] == "unseen"

    # a rerun reuses every kept score; other settings are scored afresh
    calls = []
    real = adaptive.evaluate_strategy
    monkeypatch.setattr(adaptive, "evaluate_strategy",
                        lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    again = run_eval(str(path), library, ["reasoning", "math-hard"], strategies, [0, 1],
                     tmp_path, str(cache.root), n_test=6)
    assert calls == [] and [replace(r, command="") for r in again] == [
        replace(r, command="") for r in every]
    run_eval(str(path), library, ["reasoning"], ["expert"], [0], tmp_path, str(cache.root),
             n_test=4)
    assert calls == ["expert"]


def test_few_shot_variants_keep_their_own_scores_and_selection_readings(tiny_random, library,
                                                                         tmp_path, monkeypatch):
    """A mask-space search beside the z-space one: each variant is kept and reused under its own
    method name (neither overwrites the other's score), each row carries the chosen mixture's
    validation selection accuracy, the reading that compares variants without the test split,
    and a variant run alone pairs its rows with the kept base and z-space scores."""
    import t2ray.experiments.unseen as adaptive
    from t2ray.adapt.fewshot import FewShotConfig, FewShotResult

    searched = []

    def search(model, svd_cache, dirs, task, cfg, storage, scorers):
        searched.append(cfg.mix_space)
        alpha, selection = ([0.0, 1.0, 0.0], 0.25) if cfg.mix_space == "z" else ([0.0] * 3, 0.5)
        return FewShotResult(task, alpha, 0.0, selection, [], [], 0, 0.0, 0.0, {})

    monkeypatch.setattr(adaptive, "search_mixture", search)
    monkeypatch.setattr(adaptive, "start_scorers", lambda *a: [])
    path, cache = tiny_random
    tasks = ["reasoning", "math-hard"]
    rows = {}
    for space, strategies in (("z", ["none", "fewshot"]), ("mask", ["fewshot"]),
                              ("z", ["none", "fewshot"])):
        for r in run_eval(str(path), library, tasks, strategies, [0, 1], tmp_path,
                          str(cache.root), n_test=4, fewshot=FewShotConfig(mix_space=space)):
            rows[r.task, r.method] = r
    assert searched == ["z"] * 4 + ["mask"] * 4  # the second z run reused its kept scores
    assert rows["reasoning", "fewshot"].get("selection_accuracy") == [25.0, 25.0]
    assert rows["reasoning", "fewshot-mask"].get("selection_accuracy") == [50.0, 50.0]
    # alpha = 0 in mask space is the base weights: the same verdicts as the base row, so the
    # mask run (which scored no base itself) pairs with the kept base to a difference of zero
    assert rows["reasoning", "fewshot-mask"].get("seeds") == rows["reasoning", "base"].get("seeds")
    assert rows["reasoning", "fewshot-mask"].get("diff_vs_base_ci95") == [0.0, 0.0]
    assert rows["reasoning", "base"].get("selection_accuracy") is None
    mask_mean = rows[adaptive.MEAN_TASK, "fewshot-mask"]
    assert set(mask_mean.get("diff_ci95")) == {"base", "fewshot"}
    assert mask_mean.get("diff_ci95")["base"] == [0.0, 0.0]
    assert set(rows[adaptive.MEAN_TASK, "fewshot"].get("diff_ci95")) == {"base", "fewshot-mask"}


def test_lora_strategy_scores_the_family_adapter(tiny_model, tmp_path):
    """On the trained tiny model (so accuracy is not 0 everywhere): the `lora` row is the score
    of the task family's adapter, and differs from the base row."""
    from t2ray.svf.ops import decompose_model

    model, tok = tiny_model
    g = torch.Generator().manual_seed(0)
    lora = init_lora(model, 2, 4.0, generator=g)
    for b in lora.b.values():
        b.normal_(0, 2.0, generator=g)
    export_peft(lora, tmp_path / "lib" / "lora" / "code")
    rows = run_eval("tiny", tmp_path / "lib", ["code-hard"], ["none", "lora"], [0],
                    tmp_path / "out", str(decompose_model("tiny", "mlp").root), n_test=8)
    engine = HFEngine(model, tok)
    with engine.adapted(import_peft(tmp_path / "lib" / "lora" / "code")):  # code-hard's family
        expected = evaluate_task(engine, get_task("code-hard"), "test", 8)
    by_method = {r.method: r.mean for r in rows}
    assert by_method["lora-rl"] == round(100 * expected.accuracy, 2)
    assert by_method["lora-rl"] != by_method["base"]


def test_the_oracle_expert_is_chosen_on_validation_and_scored_on_test(tiny_random, library,
                                                                       monkeypatch):
    """The expert (or the base) with the best validation accuracy, ties to the base; its test
    score is that adapter's plain score."""
    import t2ray.experiments.unseen as unseen
    from t2ray.adapt.router import BASE
    from t2ray.models import load_model

    monkeypatch.setattr(unseen, "ORACLE_VAL_N", 20)
    path, cache = tiny_random
    engine = HFEngine(*load_model(path), svd_cache=cache)
    lib, task = library_for_seed(library, 0), get_task("reasoning")
    chosen, adapter = unseen.oracle_expert(engine, lib, task, cache.fingerprint)
    val = {}
    for name in (BASE, *unseen.EXPERT_CATEGORIES):
        with engine.adapted(None if name == BASE else lib.get(name)):
            val[name] = evaluate_task(engine, task, "validation", 20).accuracy
    best = max(val.values())
    assert chosen == next(n for n in val if val[n] == best)  # ties: the base, then in order
    score = unseen.evaluate_strategy(engine, cache, lib, "reasoning", "oracle-expert", 0, 6)
    with engine.adapted(adapter):
        assert score.accuracy == evaluate_task(engine, task, "test", 6).accuracy
    assert score.chosen == chosen


def test_unknown_strategy_is_refused(tiny_random, library, tmp_path):
    path, cache = tiny_random
    with pytest.raises(ValueError, match="unknown strategies"):
        run_eval(str(path), library, ["math"], ["magic"], [0], tmp_path, str(cache.root))
    assert "fewshot" in STRATEGIES


def test_fewshot_variants_are_named_apart_in_results():
    from t2ray.adapt.fewshot import FewShotConfig
    from t2ray.experiments.unseen import method_name

    assert method_name("fewshot", FewShotConfig()) == "fewshot"
    assert method_name("fewshot", FewShotConfig(per_matrix=True)) == "fewshot-per-matrix"
    assert method_name("fewshot", FewShotConfig(per_matrix=True, searcher="nevergrad")) == \
        "fewshot-per-matrix-nevergrad"
    assert method_name("classifier", FewShotConfig(per_matrix=True)) == "classifier"
