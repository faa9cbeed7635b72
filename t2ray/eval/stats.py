"""Paired significance on the same test items, and summaries over seeds."""

from __future__ import annotations

import math
from typing import Sequence


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for two methods scored on the same items.

    Only discordant items count: b = a right & b wrong, c = a wrong & b right; under the null
    hypothesis each discordant item goes either way with probability 1/2.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError("both methods must be scored on the same items")
    b = sum(x and not y for x, y in zip(a_correct, b_correct))
    c = sum(y and not x for x, y in zip(a_correct, b_correct))
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
