"""A loss against itself, on real training: the seeds of one loss in a study's cases.csv split into
two groups named as two losses, every split of them compared on every metric by the study's own
code (verdicts.comparison_rows). Every verdict is a false one; at alpha 0.05 about 5 % of the
comparisons (fewer: the metrics are correlated and each split reuses the same runs) may be.

    python bench/self_comparison.py runs/study-cv/cases.csv --loss dice
    python bench/self_comparison.py runs/study-cv/cases.csv --loss dice --method bootstrap   # the old test

Prints, per metric, the splits compared and the false verdicts.
"""
import argparse
import itertools
import sys

import numpy as np

import common  # noqa: F401  (puts the project on the path)

import report
import verdicts
from calibration import hierarchical_bootstrap_p


def splits(seeds):
    """Every split of ``seeds`` into two halves (each once, the first seed always in group A)."""
    half = len(seeds) // 2
    first, rest = seeds[0], seeds[1:]
    for others in itertools.combinations(rest, half - 1):
        a = (first, *others)
        yield a, tuple(s for s in seeds if s not in a)[:half]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", help="a study's cases.csv")
    p.add_argument("--loss", required=True, help="the loss whose seeds are split")
    p.add_argument("--method", choices=("gpq", "bootstrap"), default="gpq",
                   help="the study's test (gpq) or the hierarchical bootstrap it used before")
    a = p.parse_args(argv)
    rows = [r for r in report.read_cases([a.cases]) if r["loss"] == a.loss]
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) < 6:
        sys.exit(f"{a.cases}: {a.loss} has {len(seeds)} seed(s): expected at least 6 (3 a group)")
    false, total = {}, {}
    for group_a, group_b in splits(seeds):
        named = [{**r, "loss": "A"} for r in rows if r["seed"] in group_a] + \
                [{**r, "loss": "B"} for r in rows if r["seed"] in group_b]
        for c in verdicts.comparison_rows(named, ["A", "B"]):
            if verdicts.too_few(c["seeds"], c["n"]):             # not tested (a metric with too few cases)
                continue
            if a.method == "bootstrap":
                _, _, d = verdicts.pair_table(named, "A", "B", c["metric"])
                told = d.size and hierarchical_bootstrap_p(d[:, ~np.isnan(d).any(axis=0)], seed=0) < verdicts.ALPHA
            else:
                told = not c["verdict"].startswith("cannot tell")
            total[c["metric"]] = total.get(c["metric"], 0) + 1
            false[c["metric"]] = false.get(c["metric"], 0) + bool(told)
    print(f"# {a.loss}: seeds {seeds}, every split into {len(seeds) // 2} + {len(seeds) // 2}, method {a.method}")
    print("| metric | splits tested | false verdicts |\n|---|---|---|")
    for m in total:
        print(f"| {m} | {total[m]} | {false[m]} |")
    print(f"all metrics: {sum(false.values())} false verdict(s) in {sum(total.values())} tested comparisons")


if __name__ == "__main__":
    main()
