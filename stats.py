"""The statistics of the cross-validated study (SPEC 10): the hierarchical bootstrap over
seeds and cases, the paired Wilcoxon test, Mann-Whitney and Holm's correction, as small pure
functions.

Two things vary in a study: the cases (which patients) and the training (seed, data order,
the machine's kernels). A table of values has one row per seed and one column per case, and
the cases are crossed with the seeds (every seed predicts the same patients), so one
bootstrap replicate draws the seeds with replacement and the cases with replacement and takes
the mean of the table's cells at those rows and columns. A test over cases alone (one
column per case, one trained model) is silent on the training: it says whether *these
models* differ, not whether the losses do.

Self-contained: imports numpy and scipy only.
"""
import math

import numpy as np

__all__ = ["BOOTSTRAP", "MIN_CASES", "MIN_SEEDS", "bootstrap_diff_ci", "hierarchical_bootstrap", "holm", "mannwhitney_p",
           "wilcoxon_p"]

BOOTSTRAP = 2000          # resamples of an interval over cases alone
HIERARCHICAL = 10000      # replicates of the hierarchical bootstrap: p-values down to 2e-4
MIN_SEEDS = 3             # fewer seeds cannot tell training noise from a difference of losses
MIN_CASES = 10            # fewer cases: the percentile bootstrap cannot see their spread (decided here)


def hierarchical_bootstrap(table, seed=0, n=HIERARCHICAL):
    """The mean of a (seeds, cases) table with its 95% percentile interval and the two-sided
    bootstrap p-value of "the mean is 0", resampling seeds, then cases (SPEC 10).

    Replicate b draws S row indices and C column indices with replacement (rows first, from
    ``numpy.random.default_rng(seed)``) and takes the mean of the cells at those rows and
    columns, a NaN cell left out (a lesion-free case has no lesion sensitivity). p = the
    smaller tail, (1 + #{mean_b <= 0}) or (1 + #{mean_b >= 0}), over (1 + n), doubled and
    capped at 1. A table of one row is the case bootstrap; of one column, the seed
    bootstrap. Returns (mean, ci_low, ci_high, p); NaN for a table without a value.
    """
    t = np.atleast_2d(np.asarray(table, float))
    valid = ~np.isnan(t)
    if not valid.any():
        return math.nan, math.nan, math.nan, math.nan
    rows, cols = t.shape
    rng = np.random.default_rng(seed)
    # each replicate's draws as counts (how often each seed and case was drawn): then the mean
    # of the drawn cells is a weighted sum, one einsum for all replicates
    w_rows, w_cols = _counts(rng.integers(0, rows, (n, rows)), rows), _counts(rng.integers(0, cols, (n, cols)), cols)
    total = np.einsum("bs,sc,bc->b", w_rows, np.where(valid, t, 0.0), w_cols)
    weight = np.einsum("bs,sc,bc->b", w_rows, valid.astype(float), w_cols)
    means = total[weight > 0] / weight[weight > 0]
    low, high = np.percentile(means, [2.5, 97.5])
    tail = min(np.count_nonzero(means <= 0), np.count_nonzero(means >= 0))
    p = min(1.0, 2 * (1 + tail) / (1 + len(means)))
    return float(t[valid].mean()), float(low), float(high), p


def _counts(draws, size):
    """(n, size) counts of each index in each row of ``draws`` (n, k)."""
    offset = np.arange(len(draws))[:, None] * size
    return np.bincount((draws + offset).ravel(), minlength=len(draws) * size).reshape(len(draws), size).astype(float)


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
    every pair ties or there is no pair. Over the cases of one seed it describes those trained
    models; it is no verdict on the losses (SPEC 10)."""
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
