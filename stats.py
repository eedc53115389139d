"""The statistics of the cross-validated study (SPEC 10): bootstrap intervals, the paired
Wilcoxon test and Holm's correction, as small pure functions.

Self-contained: imports numpy and scipy only.
"""
import math

import numpy as np

__all__ = ["BOOTSTRAP", "bootstrap_ci", "bootstrap_diff_ci", "holm", "mannwhitney_p", "wilcoxon_p"]

BOOTSTRAP = 2000          # resamples of each interval


def bootstrap_ci(values, seed=0):
    """95% percentile bootstrap interval of the mean of ``values`` (one per case), by
    ``scipy.stats.bootstrap`` with BOOTSTRAP resamples; (NaN, NaN) for fewer than 2 values."""
    from scipy.stats import bootstrap
    values = np.asarray(values, float)
    if len(values) < 2:
        return math.nan, math.nan
    if np.all(values == values[0]):                          # every resample has this mean
        return float(values[0]), float(values[0])
    ci = bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=BOOTSTRAP, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


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
    """Two-sided Wilcoxon signed-rank p-value of paired samples (scipy's defaults); NaN when
    every pair ties or there is no pair."""
    from scipy.stats import wilcoxon
    if len(a) == 0 or np.all(a == b):
        return math.nan
    return float(wilcoxon(a, b).pvalue)


def bootstrap_diff_ci(x, y, seed=0):
    """95% percentile bootstrap interval of mean(x) - mean(y) for two independent samples
    (different cases), each resampled on its own; (NaN, NaN) when either has fewer than 2."""
    from scipy.stats import bootstrap
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]) and np.all(y == y[0]):
        return float(x[0] - y[0]), float(x[0] - y[0])
    ci = bootstrap((x, y), lambda a, b: np.mean(a) - np.mean(b), confidence_level=0.95, n_resamples=BOOTSTRAP,
                   method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def mannwhitney_p(x, y):
    """Two-sided Mann-Whitney U p-value of two independent samples (scipy's defaults); NaN
    when either is empty."""
    from scipy.stats import mannwhitneyu
    if len(x) == 0 or len(y) == 0:
        return math.nan
    return float(mannwhitneyu(x, y).pvalue)
