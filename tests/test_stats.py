"""Paired significance and seed summaries against hand-computed references."""

import math

import pytest

from t2ray.eval.stats import mcnemar_exact, mean_sd


def test_mcnemar_exact_reference_values():
    # b = 1, c = 9 discordant items: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    a = [True] * 1 + [False] * 9 + [True] * 50
    b = [False] * 1 + [True] * 9 + [True] * 50
    assert mcnemar_exact(a, b) == pytest.approx(22 / 1024)
    assert mcnemar_exact(a, a) == 1.0
    assert mcnemar_exact([True, False], [False, True]) == 1.0
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([True], [True, False])


def test_mean_sd():
    m, sd = mean_sd([1.0, 2.0, 3.0])
    assert m == 2.0 and sd == pytest.approx(1.0)
    assert mean_sd([5.0]) == (5.0, 0.0)
    assert mean_sd([0.0, 10.0])[1] == pytest.approx(math.sqrt(50))


def test_cluster_bootstrap_widens_with_repeated_contents_and_matches_the_analytic_se():
    import random

    from t2ray.eval.stats import cluster_bootstrap

    rng = random.Random(0)
    base = [float(rng.random() < 0.6) for _ in range(400)]
    keys = [str(i) for i in range(400)]
    low, high = cluster_bootstrap(base, keys)
    p = sum(base) / 400
    se = math.sqrt(p * (1 - p) / 400)  # independent items: the binomial standard error
    assert abs((high - low) / (2 * 1.96 * se) - 1) < 0.1 and low < p < high
    # the same 400 contents, each scored 10 times (as a split that repeats its contents):
    # an interval over 4000 "items" would be sqrt(10) times too narrow; clusters are not
    rep_low, rep_high = cluster_bootstrap(base * 10, keys * 10)
    assert abs((rep_high - rep_low) / (high - low) - 1) < 0.15
    # paired: identical methods give a degenerate interval at 0
    assert cluster_bootstrap(base, keys, paired=base) == (0.0, 0.0)


def test_accuracy_interval_names_its_method():
    from t2ray.eval.harness import accuracy_interval, wilson_interval
    from t2ray.tasks import get_task

    verdicts = [True, False, True, True] * 25
    low, high, method = accuracy_interval(verdicts, [str(i) for i in range(100)])
    assert method == "wilson" and (low, high) == wilson_interval(75, 100)
    keys = get_task("code", "v1").content_keys("test", 100)  # v1 code repeats contents
    assert len(set(keys)) < 100
    low, high, method = accuracy_interval(verdicts, keys)
    assert method == "cluster-bootstrap" and low < 0.75 < high


def test_seeds_interval_pairs_a_per_seed_reference_seed_by_seed():
    """Against the direct bootstrap of the seed-by-seed differences; a reference that is the
    same on every seed may be given once."""
    import numpy as np

    from t2ray.eval.harness import seeds_interval
    from t2ray.eval.stats import cluster_bootstrap

    rng = np.random.default_rng(0)
    keys = [f"c{i // 2}" for i in range(40)]  # every content twice
    a = [list(rng.random(40) < 0.7) for _ in range(3)]
    b = [list(rng.random(40) < 0.5) for _ in range(3)]
    diffs = [float(x) - float(y) for sa, sb in zip(a, b) for x, y in zip(sa, sb)]
    assert seeds_interval(a, keys, b) == pytest.approx(cluster_bootstrap(diffs, keys * 3))
    assert seeds_interval(a, keys, b[0]) == seeds_interval(a, keys, [b[0]] * 3)
    low, high = seeds_interval(a, keys, b)
    assert low < np.mean(diffs) < high
