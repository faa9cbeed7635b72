"""Few-shot mixture search on Ray Tune: shared engine actors, parallel trials, disjoint data."""

import json
import os

import numpy as np
import pytest
import torch
from ray_local import local_ray  # noqa: F401

from t2ray.adapt.anchors import anchor_members
from t2ray.adapt.fewshot import (
    FewShotConfig,
    ShotScorer,
    alpha_mixture,
    scalar_fitness,
    search_mixture,
)
from t2ray.svf.expert import ExpertVector, SVFParam, mix


@pytest.fixture(scope="module")
def experts(tiny_random, tmp_path_factory):
    _, cache = tiny_random
    root = tmp_path_factory.mktemp("experts")
    dirs = []
    for k, task in enumerate(["math", "code", "reasoning"]):
        g = torch.Generator().manual_seed(k)
        z = {n: 1 + 0.5 * torch.randn(r, generator=g) for n, r in cache.ranks().items()}
        dirs.append(ExpertVector.for_cache(cache, z, SVFParam("linear"), task=task)
                    .save(root / task))
    return dirs


def test_scorer_scores_the_mixture_it_is_given(tiny_random, experts, monkeypatch):
    path, cache = tiny_random
    scorer = ShotScorer.load(str(path), str(cache.root), [str(d) for d in experts], threads=1)
    scorer.set_task("reasoning", shots=4, select=3)
    shots, selection = scorer.sets["shots"], scorer.sets["selection"]
    assert len(shots) == 4 and len(selection) == 3
    assert not {e.uid for e in shots} & {e.uid for e in selection}
    n_matrices = len(cache.ranks())
    alpha = torch.rand(3 * n_matrices).tolist()
    want = mix(scorer.experts, torch.tensor(alpha).view(3, n_matrices))
    got = alpha_mixture(scorer.experts, alpha)
    assert all(torch.equal(got.z[n], want.z[n]) for n in want.z)
    result = scorer.score(alpha)
    assert 0 <= result["accuracy"] <= 1 and result["loglik"] < 0
    assert result["fitness"] == scalar_fitness(result["accuracy"], result["loglik"])
    # the same answers again are judged from the scorer's cache, with the same verdicts
    assert len(scorer.verify.scores) == len(shots)
    import t2ray.tasks.rewards as verifier

    calls = []
    real = verifier.rewards
    monkeypatch.setattr(verifier, "rewards", lambda *a: calls.append(a) or real(*a))
    again = scorer.score(alpha)
    assert again["accuracy"] == result["accuracy"] and calls == []


def test_per_layer_alpha_weighs_every_matrix_of_its_layer(experts):
    """K x layers weights equal K x matrices weights with each layer's weight on its matrices."""
    from t2ray.adapt.fewshot import layer_of_matrices

    loaded = [ExpertVector.load(d) for d in experts]
    names = sorted(loaded[0].z)
    layers = layer_of_matrices(names)
    assert layers == [int(n.split(".layers.")[1].split(".")[0]) for n in names]
    n_layers = max(layers) + 1
    per_layer = torch.rand(3, n_layers)
    want = mix(loaded, per_layer[:, layers])
    got = alpha_mixture(loaded, per_layer.flatten().tolist())
    assert all(torch.equal(got.z[n], want.z[n]) for n in names)
    with pytest.raises(ValueError, match="fits neither"):
        alpha_mixture(loaded, [0.5] * (3 * n_layers + 1))
    with pytest.raises(ValueError, match="per_matrix or per_layer"):
        FewShotConfig(per_matrix=True, per_layer=True)


def test_scalar_fitness_keeps_accuracy_first():
    assert scalar_fitness(0.2, 0.0) < scalar_fitness(0.3, -50.0)
    assert scalar_fitness(0.2, -2.0) < scalar_fitness(0.2, -1.0)


@pytest.mark.slow
def test_cem_search_on_tune_runs_every_member_and_selects_on_held_out_items(
        local_ray, tiny_random, experts, tmp_path):  # noqa: F811
    path, cache = tiny_random
    cfg = FewShotConfig(shots=4, select=4, population=6, generations=2, concurrency=2)
    result = search_mixture(str(path), str(cache.root), experts, "reasoning", cfg, tmp_path)
    assert result.trials == 12 and len(result.history) == 2
    # generation 0 starts with the fallbacks: the base (alpha = 0), each expert alone, uniform
    np.testing.assert_allclose([m["alpha"] for m in result.members[:5]], anchor_members(3, 3))
    assert len(result.alpha) == 3 and all(0 <= a <= 1 for a in result.alpha)
    best = [h["best_accuracy"] for h in result.history]
    assert best == sorted(best)  # the incumbent carries over
    assert result.selection_accuracy is not None
    # every member is kept in the result, in suggestion order, instead of Tune's per-trial logs
    assert [(m["generation"], m["member"]) for m in result.members] == [
        (g, k) for g in range(2) for k in range(6)]
    assert result.alpha in [m["alpha"] for m in result.members]
    assert max(m["accuracy"] for m in result.members) == result.history[-1]["best_accuracy"]
    assert not list(tmp_path.rglob("progress.csv")) and not list(tmp_path.rglob("events.out*"))
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ
    json.dumps(result.as_dict())


@pytest.mark.slow
def test_per_layer_search_weighs_each_expert_per_layer(local_ray, tiny_random, experts,  # noqa: F811
                                                       tmp_path):
    from t2ray.experiments.unseen import method_name

    path, cache = tiny_random
    cfg = FewShotConfig(shots=2, select=2, population=5, generations=1, concurrency=2,
                        per_layer=True)
    result = search_mixture(str(path), str(cache.root), experts, "reasoning", cfg, tmp_path)
    n_layers = len({n.split(".layers.")[1].split(".")[0] for n in cache.ranks()})
    assert len(result.alpha) == 3 * n_layers
    np.testing.assert_allclose([m["alpha"] for m in result.members],
                               anchor_members(3, 3 * n_layers))
    assert method_name("fewshot", cfg) == "fewshot-per-layer"


@pytest.mark.slow
@pytest.mark.parametrize("searcher", ["optuna-cmaes", "nevergrad"])
def test_other_searchers_run_on_tune_within_the_clamp(local_ray, tiny_random, experts, tmp_path,  # noqa: F811
                                                      searcher):
    path, cache = tiny_random
    cfg = FewShotConfig(shots=2, select=2, population=3, generations=2, concurrency=2,
                        searcher=searcher)
    result = search_mixture(str(path), str(cache.root), experts, "reasoning", cfg, tmp_path)
    assert result.trials == 6 and len(result.members) == 6
    assert all(len(m["alpha"]) == 3 and all(0 <= a <= 1 for a in m["alpha"])
               for m in result.members)
    # the first point is the uniform mixture the searchers are started from
    assert [1 / 3] * 3 in [m["alpha"] for m in result.members]
    assert result.alpha in [m["alpha"] for m in result.members]


def test_unknown_searcher_is_refused():
    with pytest.raises(ValueError, match="searcher"):
        FewShotConfig(searcher="grid")


def test_the_trial_side_imports_no_model_stack():
    """Trial actors import `member` (the trainable and the engine actors' class); torch or
    transformers there would cost every trial actor seconds of imports (docs/benchmarks.md)."""
    import subprocess
    import sys

    code = ("import sys, t2ray.adapt.member; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
