"""What the study's earlier statistics called a verdict that the calibrated ones do not (and back):
the same paired tables D[seed, case] of a study's cases.csv, tested by the hierarchical percentile
bootstrap with Holm over every pair of a metric (SPEC 10 before), and by the GPQ test with the
families of verdicts.py (now).

    python bench/old_verdicts.py runs/study-cv/cases.csv

Prints the pairs on which the two disagree.
"""
import argparse

import numpy as np

import common  # noqa: F401  (puts the project on the path)

import report
import stats
import verdicts
from calibration import hierarchical_bootstrap_p


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", help="a study's cases.csv")
    a = p.parse_args(argv)
    rows = report.read_cases([a.cases])
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    new = verdicts.comparison_rows(rows, losses)
    print("| pair | metric | old: bootstrap p_holm (all pairs) | now: GPQ p_holm (its family) | now: verdict |")
    print("|---|---|---|---|---|")
    differ = 0
    for metric in verdicts.METRICS:
        mine = [c for c in new if c["metric"] == metric]
        old = []
        for c in mine:
            _, _, d = verdicts.pair_table(rows, c["loss_a"], c["loss_b"], metric)
            d = d[:, ~np.isnan(d).any(axis=0)] if d.size else d
            old.append(hierarchical_bootstrap_p(d, seed=0, n=2000) if d.size else np.nan)
        for c, p_old in zip(mine, stats.holm(old)):
            said_old = p_old < verdicts.ALPHA and not verdicts.too_few(c["seeds"], c["n"])
            said_new = not c["verdict"].startswith("cannot tell")
            if said_old != said_new:
                differ += 1
                print(f"| {c['loss_a']} vs {c['loss_b']} | {metric} | {report.fmt_p(p_old)} | "
                      f"{report.fmt_p(c['p_holm'])} | {c['verdict']} |")
    print(f"\n{differ} pair(s) on which the two disagree, of {len(new)}")


if __name__ == "__main__":
    main()
