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


def cluster_bootstrap(values: Sequence[float], clusters: Sequence[str],
                      paired: Sequence[float] | None = None, n_boot: int = 4000,
                      level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of `values` (or of the mean difference values - paired,
    item by item) that resamples whole clusters with replacement: items that share a content key
    are not independent draws, and an interval over items would overstate the precision."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if paired is not None:
        if len(paired) != len(v):
            raise ValueError("a paired interval needs both methods scored on the same items")
        v = v - np.asarray(paired, dtype=np.float64)
    if len(clusters) != len(v) or not len(v):
        raise ValueError(f"{len(v)} values but {len(clusters)} cluster keys")
    ids = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    index = np.fromiter((ids[c] for c in clusters), dtype=np.int64, count=len(v))
    sums = np.bincount(index, weights=v, minlength=len(ids))
    counts = np.bincount(index, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)
    means = (draws @ sums) / (draws @ counts)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
