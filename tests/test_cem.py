"""CEM over mixture weights: the optimiser on known objectives, and the Ray Tune searcher."""

import numpy as np
import pytest

from t2ray.adapt.cem import CEM, CEMConfig, CEMSearcher


def _run(cem: CEM, objective) -> None:
    while not cem.done:
        members = cem.ask()
        cem.tell(members, [objective(m) for m in members])


def test_cem_finds_the_optimum_of_a_known_objective_inside_the_clamp():
    target = np.array([0.9, 0.1, 0.6])
    cem = CEM(CEMConfig(dim=3, n_experts=3, generations=25, seed=0))
    first = None

    def objective(a):
        return (-float(np.abs(a - target).sum()), 0.0)

    members = cem.ask()
    first = max(objective(m) for m in members)[0]
    cem.tell(members, [objective(m) for m in members])
    _run(cem, objective)
    best_fitness, best = cem.best
    assert best_fitness[0] > first  # fitness improved over the first generation
    np.testing.assert_allclose(best, target, atol=0.05)
    # best accuracy never decreases: member 0 carries the incumbent
    accs = [h["best_accuracy"] for h in cem.history]
    assert accs == sorted(accs)


def test_cem_respects_the_clamp_when_the_optimum_lies_outside():
    cem = CEM(CEMConfig(dim=2, n_experts=2, generations=15, seed=1))
    seen = []

    def objective(a):
        seen.append(a.copy())
        return (float(a[0] - a[1]), 0.0)  # pushes alpha_0 up and alpha_1 down without bound

    _run(cem, objective)
    seen = np.array(seen)
    assert seen.min() >= 0.0 and seen.max() <= 1.0
    np.testing.assert_allclose(cem.best[1], [1.0, 0.0], atol=1e-6)


def test_loglik_only_breaks_accuracy_ties():
    cem = CEM(CEMConfig(dim=1, n_experts=1, population=4, generations=1, seed=0))
    members = np.array([[0.1], [0.2], [0.3], [0.4]])
    cem.tell(members, [(0.5, -9.0), (0.5, -1.0), (0.4, 0.0), (0.2, 5.0)])
    assert cem.best[0] == (0.5, -1.0) and cem.best[1][0] == pytest.approx(0.2)


def test_initial_distribution_and_state_round_trip():
    cfg = CEMConfig(dim=6, n_experts=3, seed=3)
    cem = CEM(cfg)
    np.testing.assert_allclose(cem.mean, 1 / 3)
    np.testing.assert_allclose(cem.std, 0.5)
    members = cem.ask()
    cem.tell(members, [(float(m.sum()), 0.0) for m in members])
    clone = CEM.from_state(cem.state())
    np.testing.assert_array_equal(clone.ask(), cem.ask())  # same rng state, same incumbent


def test_searcher_runs_generations_and_waits_between_them():
    cfg = CEMConfig(dim=2, n_experts=2, population=4, generations=2, seed=0)
    s = CEMSearcher(cfg)
    first = [s.suggest(f"t{i}") for i in range(4)]
    assert all(len(c["alpha"]) == 2 for c in first)
    assert s.suggest("t4") is None  # the generation is still running
    for i, c in enumerate(first):
        s.on_trial_complete(f"t{i}", {"accuracy": c["alpha"][0], "loglik": 0.0})
    second = [s.suggest(f"u{i}") for i in range(4)]
    assert second[0]["generation"] == 1
    best = max(first, key=lambda c: c["alpha"][0])["alpha"]
    assert second[0]["alpha"] == pytest.approx(best)  # member 0 is the incumbent
    s.on_trial_complete("u1", error=True)  # a failed trial does not stall the generation
    for i in (0, 2, 3):
        s.on_trial_complete(f"u{i}", {"accuracy": 0.0, "loglik": 0.0})
    assert s.suggest("v0") == CEMSearcher.FINISHED


def test_generation_zero_holds_the_base_each_expert_and_the_uniform_mix():
    cem = CEM(CEMConfig(dim=6, n_experts=2, population=8, seed=0))  # per-matrix: 2 x 3
    members = cem.ask()
    np.testing.assert_array_equal(members[:4], [[0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                                [0, 0, 0, 1, 1, 1], [0.5] * 6])
    assert not np.isin(members[4:], [0.0, 0.5, 1.0]).all()  # the rest are drawn
    with pytest.raises(ValueError, match="cannot hold generation 0's 5 anchors"):
        CEMConfig(dim=3, n_experts=3, population=4)


def test_an_objective_where_the_base_is_best_returns_alpha_zero():
    """Every mixture is worse than alpha = 0 (any expert weight costs accuracy): the search
    returns the base exactly, not a small alpha the sampling happened to reach."""
    cem = CEM(CEMConfig(dim=6, n_experts=3, population=8, generations=1, seed=0))
    _run(cem, lambda a: (-float(np.abs(a).sum()), 0.0))
    assert cem.best[0][0] == 0.0  # one generation: clamped draws are all-zero ~0.02% of the time
    np.testing.assert_array_equal(cem.best[1], np.zeros(6))
