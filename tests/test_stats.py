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
