"""`t2ray eval` harness: every strategy scores the test items it should, and the files it writes."""

import json

import pytest
import torch

from t2ray.eval.adaptive import STRATEGIES, library_for_seed, run_eval
from t2ray.svf.expert import ExpertLibrary, ExpertVector, SVFParam


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


def test_strategies_without_search_over_seeds(tiny_random, library, tmp_path):
    path, cache = tiny_random
    strategies = ["none", "expert", "prompt", "classifier"]
    rows = run_eval(str(path), library, ["reasoning", "math-hard"], strategies, [0, 1],
                    tmp_path, str(cache.root), n_test=6, results_json=tmp_path / "r.json")
    assert {(r["task"], r["method"]) for r in rows} == {
        (t, m) for t in ("reasoning", "math-hard")
        for m in ("base", "svf-rl", "prompt", "classifier")}
    for r in rows:
        assert r["n_seeds"] == 2 and r["n"] == 6 and 0 <= r["mean"] <= 100
        two_pass = r["method"] in ("prompt", "classifier")
        assert (r["first_pass_share"] is not None) == two_pass
    base = [r for r in rows if r["method"] == "base"]
    assert all(r["sd"] == 0 for r in base)  # greedy base: the same on every seed
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert all(sum(s["routed"].values()) == 6 for s in scores if s["strategy"] == "classifier")
    assert (tmp_path / "table.md").read_text().startswith("| task | method")
    assert json.loads((tmp_path / "r.json").read_text())[0]["table"] == "unseen"


def test_unknown_strategy_is_refused(tiny_random, library, tmp_path):
    path, cache = tiny_random
    with pytest.raises(ValueError, match="unknown strategies"):
        run_eval(str(path), library, ["math"], ["magic"], [0], tmp_path, str(cache.root))
    assert "fewshot" in STRATEGIES
