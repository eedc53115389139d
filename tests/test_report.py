"""The study's verdicts (SPEC 10): the hierarchical bootstrap over seeds and cases, worked
against a direct implementation, and hand-made studies whose seeds agree or reverse."""
import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

import report
import stats


def study_rows(diffs, base=0.5, noise=0.01, seed=0, a="tversky_hdt", b="tversky"):
    """Rows of two trained losses over len(diffs) seeds and 30 cases: loss ``a`` is ``b`` plus
    diffs[s] (+ small noise) in seed s, every metric alike."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, d in enumerate(diffs):
        for c in range(30):
            v = base + rng.uniform(-0.2, 0.2)
            for loss, value in ((b, v), (a, v + d + rng.normal(0, noise))):
                rows.append({"loss": loss, "seed": s, "fold": c % 2, "case": f"c{c:02d}", "dice": value,
                             "nsd": value, "msd": 5 - value, "pred_voxels": 10, "target_voxels": 10,
                             "challenge_msd": 1.0, "challenge_nsd": 1.0, "lesion_sensitivity": value,
                             "lesion_f1": value, "false_lesions": 1 - value, "cc_dice": value})
    return rows


def verdicts(rows, losses=("tversky_hdt", "tversky")):
    comparisons = report.comparison_rows(rows, list(losses), report.worst_msd(rows))
    found = {c["claim"]: c for c in report.claims(comparisons, rows, list(losses))}
    return comparisons, found


def test_the_bootstrap_equals_its_direct_definition():
    # a (3 seeds, 5 cases) table with a NaN cell: every replicate drawn by hand and averaged
    table = np.array([[0.1, 0.3, -0.2, 0.4, 0.0], [0.2, np.nan, 0.1, 0.3, -0.1], [0.0, 0.2, 0.2, 0.5, 0.1]])
    mean, low, high, p = stats.hierarchical_bootstrap(table, seed=7, n=500)
    rng = np.random.default_rng(7)
    seeds, cases = rng.integers(0, 3, (500, 3)), rng.integers(0, 5, (500, 5))     # seeds first, then cases
    means = np.array([np.nanmean(table[np.ix_(s, c)]) for s, c in zip(seeds, cases)])
    assert mean == pytest.approx(np.nanmean(table))
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    tail = min((means <= 0).sum(), (means >= 0).sum())
    assert p == pytest.approx(min(1.0, 2 * (1 + tail) / 501))
    # one row: the bootstrap over cases; every cell 0: nothing to tell
    assert stats.hierarchical_bootstrap(np.zeros((1, 4)))[3] == 1.0
    assert all(math.isnan(v) for v in stats.hierarchical_bootstrap(np.full((2, 2), np.nan)))


def test_one_seed_reversing_the_others_is_significant_over_cases_but_not_over_seeds():
    # seeds 0 and 1: tversky_hdt better by 0.1 on every case; seed 2: worse by 0.3 on every case
    rows = study_rows([0.1, 0.1, -0.3])
    x = report.per_case(rows, "tversky_hdt", "dice", math.inf)
    y = report.per_case(rows, "tversky", "dice", math.inf)
    cases = sorted(x)
    over_cases = wilcoxon([x[c] for c in cases], [y[c] for c in cases]).pvalue
    assert over_cases < 1e-5                   # the seed-averaged cases alone: "tversky beats tversky_hdt"
    comparisons, found = verdicts(rows)
    dice = next(c for c in comparisons if c["metric"] == "dice")
    assert dice["seeds"] == 3 and dice["n"] == 30
    assert dice["p_value"] > 0.05 and dice["verdict"] == "cannot tell"
    assert dice["seeds_agree"] == 1            # the overall mean is < 0, as in seed 2 alone
    assert dice["ci_low"] < 0 < dice["ci_high"]
    per_seed = [float(p) for p in dice["wilcoxon_p"].split(";")]     # each seed's models do differ: described
    assert len(per_seed) == 3 and all(p < 1e-5 for p in per_seed)
    assert found["tversky_hdt beats tversky on Dice"]["verdict"] == "cannot tell"
    assert not report.sentences(comparisons)


def test_every_seed_agreeing_holds():
    rows = study_rows([0.1, 0.08, 0.12])
    comparisons, found = verdicts(rows)
    dice = next(c for c in comparisons if c["metric"] == "dice")
    assert dice["seeds_agree"] == 3 and dice["verdict"] == "tversky_hdt better" and dice["p_holm"] < 0.05
    assert dice["mean_diff"] == pytest.approx(0.1, abs=0.01)
    assert found["tversky_hdt beats tversky on Dice"]["verdict"] == "holds"
    assert found["tversky_hdt beats tversky on NSD"]["verdict"] == "holds"
    assert any("3 of 3 seeds agree" in s for s in report.sentences(comparisons))


def test_a_verdict_needs_ten_cases():
    # every seed agrees, but over 5 cases: a bootstrap cannot see the cases' spread
    rows = [r for r in study_rows([0.1, 0.08, 0.12]) if r["case"] < "c05"]
    comparisons, found = verdicts(rows)
    assert {c["verdict"] for c in comparisons} == {"cannot tell: 5 case(s), fewer than 10"}
    assert found["tversky_hdt beats tversky on Dice"]["verdict"] == "cannot tell"


def test_fewer_than_three_seeds_tell_nothing_between_losses(tmp_path):
    for diffs in ([0.1], [0.1, 0.12]):                        # significant over cases, in every seed
        rows = study_rows(diffs)
        comparisons, found = verdicts(rows)
        assert all(c["verdict"].startswith(f"cannot tell: {len(diffs)} seed(s)") for c in comparisons)
        assert {c["verdict"] for c in found.values()} == {"cannot tell"}
        assert all("--seeds 3" in c["note"] for c in found.values())
        assert not report.sentences(comparisons)
    rows = [{**r, "burden_group": "<1%" if r["case"] < "c15" else ">5%", "lesions": 1, "detected": 1, "missed": 0,
             "lesion_volumes": "50.0", "lesion_detected": "1"} for r in study_rows([0.1])]
    report.write_report(tmp_path, rows, ["tversky_hdt", "tversky"], "one seed")
    text = (tmp_path / "study.md").read_text()
    assert "**1 seed(s): no verdict between losses.**" in text and "--seeds 3" in text


def test_a_fixed_row_meets_each_seed_of_a_trained_loss():
    # a folder of masks (seed None) is one run: D[s, c] = trained[s, c] - folder[c]
    rows = [{"loss": "dice", "seed": s, "case": c, "dice": v} for s, vs in enumerate([(0.5, 0.7), (0.6, 0.9)])
            for c, v in zip("ab", vs)]
    rows += [{"loss": "mine", "seed": None, "case": c, "dice": v} for c, v in zip("ab", (0.4, 0.8))]
    rows += [{"loss": "zadc_threshold", "seed": None, "case": c, "dice": v} for c, v in zip("ab", (0.3, 0.2))]
    seeds, cases, d = report.pair_table(rows, "dice", "mine", "dice", 0.0)
    assert seeds == [0, 1] and cases == ["a", "b"]
    assert d == pytest.approx(np.array([[0.1, -0.1], [0.2, 0.1]]))
    seeds, _, d = report.pair_table(rows, "zadc_threshold", "mine", "dice", 0.0)
    assert seeds == [None] and d == pytest.approx(np.array([[-0.1, -0.6]]))
    assert not report.decides(report.compare(rows, "dice", "mine", "dice", 0.0))              # two seeds
    assert not report.decides(report.compare(rows, "zadc_threshold", "mine", "dice", 0.0))    # two cases
    many = [{"loss": n, "seed": None, "case": f"c{i:02d}", "dice": v + 0.01 * i} for i in range(12)
            for n, v in (("zadc_threshold", 0.3), ("mine", 0.5))]
    fixed = report.compare(many, "zadc_threshold", "mine", "dice", 0.0)
    assert fixed["seeds"] == 0 and fixed["n"] == 12 and report.decides(fixed)               # no training in it
