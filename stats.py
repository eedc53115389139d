"""The statistics of the cross-validated study (SPEC 10): bootstrap intervals, the paired
Wilcoxon test and Holm's correction, as small pure functions.

Self-contained: imports numpy and scipy only.
"""
import math

import numpy as np

__all__ = ["BOOTSTRAP", "bootstrap_ci", "holm", "wilcoxon_p", "ranked"]

BOOTSTRAP = 2000          # resamples of each interval


def ranked(values, worst):
    """MSD's inf (a missed lesion) as ``worst``: above every finite MSD of the study, so
    that it ranks worse than any, in the tests and the intervals alike."""
    return np.where(np.isinf(values), worst, values)


def bootstrap_ci(values, groups, seed=0):
    """95% percentile interval of the mean of ``values``, resampling the groups (cases)."""
    values, groups = np.asarray(values, float), np.asarray(groups)
    names, index = np.unique(groups, return_inverse=True)
    sums, counts = np.bincount(index, values), np.bincount(index)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), (BOOTSTRAP, len(names)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def holm(p_values):
    """Holm's step-down correction of a list of p-values (NaN stays NaN)."""
    p = np.asarray(p_values, float)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok])]
    out = np.full(p.shape, math.nan)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p[j]))
        out[j] = running
    return out.tolist()


def wilcoxon_p(a, b):
    """Two-sided Wilcoxon signed-rank p-value (scipy's defaults); NaN when every pair ties."""
    from scipy.stats import wilcoxon
    if np.all(a == b):
        return math.nan
    return float(wilcoxon(a, b).pvalue)
