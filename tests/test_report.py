"""The study's verdicts (SPEC 10): the GPQ test against scipy's t-test and a table worked by
hand, the variance components and the design by hand, the families that do not move, values
fixed per case, the claims, and the report recomputed from cases.csv."""
import csv
import math
import re

import numpy as np
import pytest
from scipy import stats as sp

import hie_ref
import report
import stats
import verdicts


def study_rows(diffs, base=0.5, noise=0.01, seed=0, a="tversky_hdt", b="tversky", cases=30):
    """Rows of two trained losses over len(diffs) seeds and ``cases`` cases: loss ``a`` is ``b``
    plus diffs[s] (+ small noise) in seed s, every metric alike."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, d in enumerate(diffs):
        for c in range(cases):
            v = base + rng.uniform(-0.2, 0.2)
            for loss, value in ((b, v), (a, v + d + rng.normal(0, noise))):
                rows.append(row(loss, s, f"c{c:02d}", value))
    return rows


def row(loss, seed, case, v, pred=10, target=10, **extra):
    return {"loss": loss, "seed": seed, "fold": 0, "case": case, "dice": v, "nsd": v, "msd": 5 - v, "pred_voxels": pred,
            "target_voxels": target, "msd_cap": 100.0, "challenge_msd": 1.0, "challenge_nsd": 1.0,
            "lesion_sensitivity": v, "lesion_f1": v, "false_lesions": int(10 * (1 - v)), "cc_dice": v, **extra}


def verdict_of(comparisons, a, b, metric="dice"):
    return next(c for c in comparisons if c["metric"] == metric and {c["loss_a"], c["loss_b"]} == {a, b})


# --------------------------------------------------------------------------- the test itself

def test_one_row_is_the_t_test_over_cases():
    x = np.random.default_rng(1).normal(0.1, 1, 25)
    gpq = stats.gpq_test(x[None, :], draws=200000)
    t = sp.ttest_1samp(x, 0)
    low, high = t.confidence_interval()
    assert gpq["p"] == pytest.approx(t.pvalue, abs=0.003)
    assert (gpq["low"], gpq["high"]) == pytest.approx((low, high), abs=0.01)
    # one column: the t-test over seeds
    assert stats.gpq_test(x[:6, None], draws=200000)["p"] == pytest.approx(sp.ttest_1samp(x[:6], 0).pvalue, abs=0.003)


def test_sums_of_squares_and_components_by_hand():
    # D = [[1, 2, 3], [3, 4, 8]]: mean 3.5; rows 2, 5; columns 2, 3, 5.5
    d = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 8.0]])
    ss = stats._sums_of_squares(d)
    assert ss["seed"] == (pytest.approx(3 * (1.5 ** 2 + 1.5 ** 2)), 1)                    # 13.5
    assert ss["case"] == (pytest.approx(2 * (1.5 ** 2 + 0.5 ** 2 + 2 ** 2)), 2)           # 13
    # residuals D - r - c + mean: [[0.5, 0.5, -1], [-0.5, -0.5, 1]]
    assert ss["residual"] == (pytest.approx(3.0), 2)
    comp = stats.components(d)
    assert comp == pytest.approx({"seed": (13.5 - 1.5) / 3, "case": (6.5 - 1.5) / 2, "residual": 1.5})
    # SE(2, 3)^2 = 4/2 + 2.5/3 + 1.5/6 = 3.0833; Satterthwaite from MS 13.5, 6.5, 1.5 with df 1, 2, 2
    se, nu = stats._se_and_df(comp, 2, 3)
    assert se == pytest.approx(math.sqrt(4 / 2 + 2.5 / 3 + 1.5 / 6))
    assert nu == pytest.approx((13.5 + 6.5 - 1.5) ** 2 / (13.5 ** 2 / 1 + 6.5 ** 2 / 2 + 1.5 ** 2 / 2))
    assert stats.mdd(comp, 2, 3, 0.05) == pytest.approx((sp.t.ppf(0.975, nu) + sp.t.ppf(0.8, nu)) * se)


def test_a_nan_case_is_left_out_and_counted():
    d = np.array([[0.1, np.nan, 0.3, 0.2], [0.2, 0.1, 0.1, 0.0]])
    out = stats.gpq_test(d)
    assert (out["cases"], out["left_out"]) == (3, 1) and out["mean"] == pytest.approx(np.mean(d[:, [0, 2, 3]]))
    assert stats.gpq_test(np.zeros((3, 12)))["p"] == 1.0              # nothing varies and nothing differs


def test_verdict_p_and_interval_agree():
    rng = np.random.default_rng(4)
    for shift in np.linspace(0, 0.08, 9):
        out = stats.gpq_test(rng.normal(shift, 0.1, (5, 40)) + rng.normal(0, 0.03, (5, 1)), seed=3)
        assert (out["p"] < 0.05) == (out["low"] > 0 or out["high"] < 0)


def test_seeds_needed_and_when_cases_are_what_is_missing():
    comp = {"seed": 0.03 ** 2, "case": 0.05 ** 2, "residual": 0.1 ** 2}
    need = stats.seeds_needed(comp, 80, 0.02, 0.05)
    assert stats.mdd(comp, need, 80, 0.05) <= 0.02 < stats.mdd(comp, need - 1, 80, 0.05)
    # case sd 0.2 over 20 cases: (1.96 + 0.84) 0.2 / sqrt(20) = 0.125 > 0.05 whatever the seeds
    assert stats.seeds_needed({**comp, "case": 0.04}, 20, 0.05, 0.05) is None
    cases = stats.cases_needed({**comp, "case": 0.04}, 5, 0.05, 0.05)
    z = sp.norm.ppf(0.975) + sp.norm.ppf(0.8)
    assert z * math.sqrt(comp["seed"] / 5 + 0.04 / cases + comp["residual"] / (5 * cases)) <= 0.05


def test_contrast_of_two_groups_with_one_seed_is_welch_like():
    rng = np.random.default_rng(2)
    x = rng.normal(0.6, 0.1, 60)
    y = rng.normal(0.5, 0.2, 40)
    out = stats.contrast_test(np.concatenate([x, y])[None, :], np.arange(100) < 60, draws=100000)
    welch = sp.ttest_ind(x, y, equal_var=False)
    assert out["mean"] == pytest.approx(x.mean() - y.mean())
    assert out["p"] == pytest.approx(welch.pvalue, abs=0.01)


def test_wilson_against_scipy():
    for k, n in ((0, 5), (3, 8), (8, 8), (40, 72)):
        ci = sp.binomtest(k, n).proportion_ci(method="wilson")
        assert stats.wilson(k, n) == pytest.approx((ci.low, ci.high))


# --------------------------------------------------------------------------- verdicts in a study

def test_one_seed_reversing_the_others_cannot_tell():
    # seeds 0 and 1: tversky_hdt better by 0.1 on every case; seed 2: worse by 0.3 on every case
    comparisons = verdicts.comparison_rows(study_rows([0.1, 0.1, -0.3]), ["tversky_hdt", "tversky"])
    dice = verdict_of(comparisons, "tversky_hdt", "tversky")
    assert dice["seeds"] == 3 and dice["n"] == 30 and dice["family"] == "losses"
    assert dice["verdict"] == "cannot tell" and dice["seeds_agree"] == 1
    assert dice["ci_low"] < 0 < dice["ci_high"]
    assert all(float(p) < 1e-5 for p in dice["wilcoxon_p"].split(";"))     # each seed's models differ: described


def test_three_agreeing_seeds_are_not_enough_when_training_noise_is_large():
    # the hierarchical bootstrap's failure: three seeds sharing a sign, nothing resamples across zero
    comparisons = verdicts.comparison_rows(study_rows([0.1, 0.02, 0.3], noise=0.05), ["tversky_hdt", "tversky"])
    dice = verdict_of(comparisons, "tversky_hdt", "tversky")
    assert dice["seeds_agree"] == 3 and dice["verdict"] == "cannot tell"
    assert "seeds at 30 cases" in verdicts.would_take(dice) or "this design detects" in verdicts.would_take(dice)


def test_a_consistent_difference_holds():
    rows = study_rows([0.1, 0.09, 0.11, 0.1, 0.1])
    comparisons = verdicts.comparison_rows(rows, ["tversky_hdt", "tversky"])
    dice = verdict_of(comparisons, "tversky_hdt", "tversky")
    assert dice["verdict"] == "tversky_hdt better" and dice["mean_diff"] == pytest.approx(0.1, abs=0.01)
    found = {c["claim"]: c for c in verdicts.claims(comparisons, rows, ["tversky_hdt", "tversky"])}
    assert found["tversky_hdt beats tversky on Dice"]["verdict"] == "holds"
    assert found["tversky_hdt beats tversky on NSD"]["verdict"] == "holds"


def test_fewer_than_three_seeds_or_ten_cases_tell_nothing(tmp_path):
    for diffs in ([0.1], [0.1, 0.12]):
        rows = study_rows(diffs)
        comparisons = verdicts.comparison_rows(rows, ["tversky_hdt", "tversky"])
        assert all(c["verdict"].startswith(f"cannot tell: {len(diffs)} seed(s)") for c in comparisons)
        assert {c["verdict"] for c in verdicts.claims(comparisons, rows, ["tversky_hdt", "tversky"])} == {"cannot tell"}
    rows = [r for r in study_rows([0.1, 0.08, 0.12, 0.1]) if r["case"] < "c05"]
    told = {c["metric"]: c["verdict"] for c in verdicts.comparison_rows(rows, ["tversky_hdt", "tversky"])}
    assert told.pop("false_alarm") == "cannot tell: no case where it can happen"        # no lesion-free case
    assert set(told.values()) == {"cannot tell: 5 case(s), fewer than 10"}


def test_families_do_not_move_when_rows_are_added():
    # two trained losses close to a verdict; a post-processed row, a baseline and a folder are added
    rows = study_rows([0.03, 0.01, 0.04, 0.02, 0.03], noise=0.05, seed=5)
    base = {c["metric"]: c for c in verdicts.comparison_rows(rows, ["tversky_hdt", "tversky"])}
    more = rows + [{**r, "loss": r["loss"] + "+pp(min_lesion=20)", "dice": r["dice"] + 0.01} for r in rows]
    more += [row(name, None, f"c{c:02d}", v) for c in range(30) for name, v in (("zadc_threshold", 0.2),
                                                                                ("mine", 0.5 + c / 100))]
    losses = ["tversky_hdt", "tversky", "tversky_hdt+pp(min_lesion=20)", "tversky+pp(min_lesion=20)",
              "zadc_threshold", "mine"]
    after = verdicts.comparison_rows(more, losses)
    for metric, c in base.items():
        again = verdict_of(after, "tversky_hdt", "tversky", metric)
        assert (again["verdict"], again["family"]) == (c["verdict"], "losses")
        assert again["p_holm"] == pytest.approx(c["p_holm"], nan_ok=True)
    assert verdict_of(after, "tversky_hdt+pp(min_lesion=20)", "tversky_hdt")["family"] == "post-processing"
    assert verdict_of(after, "zadc_threshold", "mine")["family"] == "others"
    assert verdict_of(after, "zadc_threshold", "mine")["seeds"] == 0      # two fixed rows: over cases alone


def test_an_infinite_msd_counts_as_its_case_cap_whatever_else_is_run():
    rows = study_rows([0.0, 0.0, 0.0])
    rows[0] = {**rows[0], "msd": math.inf, "pred_voxels": 0, "msd_cap": 321.0}    # tversky misses c00 in seed 0
    c = verdict_of(verdicts.comparison_rows(rows, ["tversky_hdt", "tversky"]), "tversky_hdt", "tversky", "msd")
    _, cases, d = verdicts.pair_table(rows, "tversky_hdt", "tversky", "msd")
    assert d[0, 0] == pytest.approx(rows[1]["msd"] - 321.0)
    worse = rows + [row("zadc_threshold", None, f"c{i:02d}", 0.1, msd=900.0) for i in range(30)]
    again = verdict_of(verdicts.comparison_rows(worse, ["tversky_hdt", "tversky", "zadc_threshold"]), "tversky_hdt",
                       "tversky", "msd")
    assert (again["mean_diff"], again["p_value"]) == (c["mean_diff"], c["p_value"])


def test_hdt_misses_lesions_is_a_test_against_each_other_loss():
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(5):
        for i in range(40):
            for loss, rate in (("hdt", 0.3), ("dice", 0.05), ("tversky", 0.05)):
                missed = rng.random() < rate
                rows.append(row(loss, seed, f"c{i:02d}", 0.0 if missed else 0.6, pred=0 if missed else 10))
    comparisons = verdicts.comparison_rows(rows, ["hdt", "dice", "tversky"])
    found = {c["claim"]: c for c in verdicts.claims(comparisons, rows, ["hdt", "dice", "tversky"])}
    claim = next(c for t, c in found.items() if t.startswith("hdt alone misses lesions"))
    assert claim["verdict"] == "holds" and claim["gain"] == pytest.approx(0.25, abs=0.05)
    # every loss misses as often: one empty prediction per seed no longer makes it hold
    same = [{**r, "loss": "hdt"} for r in rows if r["loss"] == "dice"] + [r for r in rows if r["loss"] != "hdt"]
    comparisons = verdicts.comparison_rows(same, ["hdt", "dice", "tversky"])
    claim = next(c for c in verdicts.claims(comparisons, same, ["hdt", "dice", "tversky"])
                 if c["claim"].startswith("hdt alone"))
    assert claim["verdict"] == "cannot tell" and abs(claim["gain"]) < 0.06


def test_the_small_lesion_claim_reports_the_quantity_it_tests():
    rng = np.random.default_rng(3)
    rows, groups = [], ["<1%"] * 12 + ["1-5%"] * 8 + [">5%"] * 6 + ["none"] * 2
    for loss, shift in (("dice", 0.3), ("tversky", 0.25)):
        for seed in range(3):
            for i, g in enumerate(groups):
                v = rng.uniform(0, 0.3) + (shift if g in ("1-5%", ">5%") else 0)
                rows.append(row(loss, seed, f"c{i:02d}", v, burden_group=g))
    claim, per_loss = verdicts.small_lesions_claim(rows, ["dice", "tversky"])
    for loss in ("dice", "tversky"):
        table = {(r["seed"], r["case"]): r["dice"] for r in rows if r["loss"] == loss}
        per_seed = [np.mean([table[s, f"c{i:02d}"] for i, g in enumerate(groups) if g in ("1-5%", ">5%")])
                    - np.mean([table[s, f"c{i:02d}"] for i, g in enumerate(groups) if g == "<1%"]) for s in range(3)]
        mine = next(r for r in per_loss if r["loss"] == loss)
        assert mine["gain"] == pytest.approx(np.mean(per_seed)) and (mine["n_small"], mine["n_large"]) == (12, 14)
        assert mine["ci_low"] < mine["gain"] < mine["ci_high"]
    assert [r["p_holm"] for r in per_loss] == pytest.approx(stats.holm([r["p_value"] for r in per_loss]))
    # the claim, every loss lower on <1%: an intersection-union test (the largest p), in the claims' family
    assert claim["p_value"] == max(r["p_value"] for r in per_loss)
    assert verdicts.claims([], rows, ["dice", "tversky"], more=[claim])[-1]["verdict"] == "holds"
    flipped = [{**r, "dice": 1 - r["dice"]} if r["loss"] == "tversky" else r for r in rows]
    claim = verdicts.small_lesions_claim(flipped, ["dice", "tversky"])[0]
    assert verdicts.claims([], flipped, ["dice", "tversky"], more=[claim])[-1]["verdict"] == "does not hold"


def test_a_loss_against_itself_split_by_seeds_is_rarely_called():
    # one loss, 10 seeds, split into two groups named as two losses (disjoint seeds: paired by order)
    false = 0
    for trial in range(40):
        rng = np.random.default_rng(trial)
        case, rows = rng.normal(0.6, 0.15, 60), []
        for seed in range(10):
            effect = rng.normal(0, 0.05)
            for i in range(60):
                rows.append(row("A" if seed % 2 else "B", seed, f"c{i:02d}", case[i] + effect + rng.normal(0, 0.08)))
        c = verdict_of(verdicts.comparison_rows(rows, ["A", "B"]), "A", "B")
        assert c["seeds"] == 5
        false += c["verdict"] != "cannot tell"
    assert false <= 5                       # about 2 expected at alpha 0.05; the bootstrap calls 3-4x that


# --------------------------------------------------------------------------- the report and its command

def write_cases(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, report.CASE_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**{k: "" for k in report.CASE_COLUMNS}, **r} for r in rows)


def lesions(rows):
    return [{**r, "lesions": 1, "detected": 1, "missed": 0, "lesion_volumes": "50.0", "lesion_detected": "1",
             "burden_group": "<1%" if r["case"] < "c15" else ">5%", "burden": 0.01, "grid_voxel_mm3": 10.0}
            for r in rows]


def test_report_from_cases_csv_alone_and_from_shards(tmp_path, capsys):
    rows = lesions(study_rows([0.1, 0.09, 0.11]))
    study = tmp_path / "study"
    study.mkdir()
    write_cases(study / "cases.csv", rows)
    assert hie_ref.main(["report", str(study / "cases.csv")]) == 0
    text = (study / "study.md").read_text()
    assert "Not recorded: this report was made from cases.csv alone" in text
    assert "## What this study can detect" in text and not re.search(r"p(_holm)? = 0\.0+(?![0-9])", text)
    one = list(csv.DictReader(open(study / "comparisons.csv")))
    # two shards (one seed each way) give the same report
    write_cases(tmp_path / "a.csv", [r for r in rows if r["seed"] < 2])
    write_cases(tmp_path / "b.csv", [r for r in rows if r["seed"] == 2])
    assert hie_ref.main(["report", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "two")]) == 0
    assert list(csv.DictReader(open(tmp_path / "two" / "comparisons.csv"))) == one
    # a row in both shards is refused, naming it; with other values it says so
    write_cases(tmp_path / "c.csv", [r for r in rows if r["seed"] == 2][:1])
    capsys.readouterr()
    assert hie_ref.main(["report", str(tmp_path / "b.csv"), str(tmp_path / "c.csv"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "1 duplicate or conflicting row(s)" in err and "tversky seed 2 case c00" in err and len(err.splitlines()) == 1
    write_cases(tmp_path / "c.csv", [{**[r for r in rows if r["seed"] == 2][0], "dice": 0.99}])
    assert hie_ref.main(["report", str(tmp_path / "b.csv"), str(tmp_path / "c.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "with different values" in capsys.readouterr().err
    assert hie_ref.main(["report", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert hie_ref.main(["report", str(tmp_path / "a.csv"), "--out", str(study)]) == 2     # another study's report
    assert "--force" in capsys.readouterr().err


def test_no_p_prints_as_zero_and_untested_is_never_none(tmp_path):
    assert report.fmt_p(0.0) == "< 0.0001" and report.fmt_p(0.00031) == "0.00031" and report.fmt_p(0.2) == "0.200"
    rows = lesions(study_rows([0.3, 0.31, 0.29], cases=30))
    rows = [{**r, "burden_group": "<1%" if r["case"] < "c05" else ">5%"} for r in rows]     # 5 small-lesion cases
    report.write_report(tmp_path, rows, ["tversky_hdt", "tversky"], "t")
    text = (tmp_path / "study.md").read_text()
    assert not re.search(r"p(_holm)? = 0\.0+(?![0-9])", text)
    within = text.split("Within <1%, between trained losses:")[1].split("\n\n")[0]
    assert "not tested (8 of 9 comparisons): 5 case(s), fewer than 10" in within and "none" not in within
    assert "not tested (1 of 9 comparisons): no case where it can happen" in within      # false alarms: no lesion-free case
