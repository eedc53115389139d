"""The calibration harness of the study's test (SPEC 10): false verdicts on seeded null tables of
paired differences D[seed, case] (two losses equal by construction) and power on tables with a
known difference, for stats.gpq_test and, as the negative control, the hierarchical percentile
bootstrap that SPEC 10 used before.

    python bench/calibration.py                  # the full table: 30 null settings x 2,000 tables
    python bench/calibration.py --tables 300     # quicker

It passes when every null setting's false-verdict rate is at most 0.06 and the power for a true
Dice difference of 0.02 (seed sd 0.03, 10 seeds, 80 cases) is at least 0.30; it exits 1
otherwise. tests/test_calibration.py runs a small seeded version of the same settings.
"""
import argparse
import sys
import time

import numpy as np

from common import header

import stats

ALPHA = 0.05
KINDS = ("normal seed sd 0.01", "normal seed sd 0.03", "normal seed sd 0.2", "dice-like", "msd-like")
SEEDS = (3, 5, 10)
CASES = (40, 80)
MAX_FALSE = 0.06            # a null setting's false-verdict rate may be at most this (2,000 tables: 0.05 + 2 SE)
MIN_POWER = 0.30


def normal_table(rng, seeds, cases, seed_sd, case_sd=0.05, cell_sd=0.10, shift=0.0):
    """D = shift + seed effect + case effect + cell noise."""
    return (shift + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, case_sd, (1, cases))
            + rng.normal(0, cell_sd, (seeds, cases)))


def dice_like(rng, seeds, cases, shift=0.0):
    """Two losses' Dice, bounded in [0, 1] with a point mass at 0 (a missed lesion, more often in
    hard cases), each loss with its own seed effects; D = A - B (+ shift on A before the bounds)."""
    difficulty = rng.beta(5, 3, cases)
    miss = np.clip(0.25 - difficulty / 3, 0.0, None)          # hard cases are missed more often

    def loss(extra):
        value = difficulty + extra + rng.normal(0, 0.04, (seeds, 1)) + rng.normal(0, 0.08, (seeds, cases))
        return np.where(rng.random((seeds, cases)) < miss, 0.0, np.clip(value, 0.0, 1.0))
    return loss(shift) - loss(0.0)


def msd_like(rng, seeds, cases):
    """Two losses' MSD in mm: heavy-tailed (log-normal), multiplicative seed effects, and now
    and then a missed lesion, counted as the case's fixed cap (its field-of-view diagonal)."""
    base, cap = rng.lognormal(1.0, 0.8, cases), rng.uniform(150, 300, cases)

    def loss():
        value = base * np.exp(rng.normal(0, 0.2, (seeds, 1))) * rng.lognormal(0, 0.5, (seeds, cases))
        return np.where(rng.random((seeds, cases)) < 0.03, cap, value)
    return loss() - loss()


def null_table(kind, rng, seeds, cases):
    if kind.startswith("normal"):
        return normal_table(rng, seeds, cases, float(kind.split()[-1]))
    return dice_like(rng, seeds, cases) if kind == "dice-like" else msd_like(rng, seeds, cases)


def gpq_p(table, seed, draws=stats.DRAWS):
    return stats.gpq_test(table, seed=seed, draws=draws)["p"]


def hierarchical_bootstrap_p(table, seed, n=1000):
    """The negative control: SPEC 10's earlier hierarchical percentile bootstrap (seeds with
    replacement, then cases with replacement; p = twice the smaller tail)."""
    rng = np.random.default_rng(seed)
    rows, cols = table.shape
    draws = [table[np.ix_(rng.integers(0, rows, rows), rng.integers(0, cols, cols))].mean() for _ in range(n)]
    means = np.array(draws)
    tail = min(np.count_nonzero(means <= 0), np.count_nonzero(means >= 0))
    return min(1.0, 2 * (1 + tail) / (1 + n))


def rate(method, kind, seeds, cases, tables, seed=0, make=None):
    """The fraction of ``tables`` seeded tables on which ``method`` gives p < ALPHA."""
    rng = np.random.default_rng([seed, seeds, cases, KINDS.index(kind) if kind in KINDS else 99])
    make = make or (lambda: null_table(kind, rng, seeds, cases))
    return float(np.mean([method(make(), seed=i) < ALPHA for i in range(tables)]))


def power(tables, seed=0):
    """Power for a true Dice difference of 0.02: seed sd 0.03, 10 seeds, 80 cases."""
    rng = np.random.default_rng([seed, 7])
    return rate(gpq_p, "power", 10, 80, tables, seed, lambda: normal_table(rng, 10, 80, 0.03, shift=0.02))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", type=int, default=2000, help="tables per setting (default 2000)")
    p.add_argument("--control-tables", type=int, default=300, help="tables per setting for the bootstrap (default "
                                                                      "300: it is slower)")
    a = p.parse_args(argv)
    header(f"calibration: false p < {ALPHA} on null tables, {a.tables} per setting (bootstrap: {a.control_tables})")
    print("| null setting | seeds | cases | GPQ | hierarchical bootstrap |")
    print("|---|---|---|---|---|")
    start, worst = time.perf_counter(), 0.0
    for kind in KINDS:
        for seeds in SEEDS:
            for cases in CASES:
                gpq = rate(gpq_p, kind, seeds, cases, a.tables)
                boot = rate(hierarchical_bootstrap_p, kind, seeds, cases, a.control_tables)
                worst = max(worst, gpq)
                print(f"| {kind} | {seeds} | {cases} | {gpq:.3f} | {boot:.3f} |", flush=True)
    pw = power(a.tables)
    print(f"\npower, true Dice difference 0.02 (seed sd 0.03, case sd 0.05, cell sd 0.10; 10 seeds, 80 cases): "
          f"{pw:.3f} (needs >= {MIN_POWER})")
    ok = worst <= MAX_FALSE and pw >= MIN_POWER
    print(f"worst null setting {worst:.3f} (needs <= {MAX_FALSE}): {'PASS' if ok else 'FAIL'}; "
          f"{time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
