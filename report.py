"""The cross-validated study's report (SPEC 10): statistics over cases, the paper's claims,
lesion by lesion (SPEC 6c) and by lesion burden.

    write_report(out, rows, losses, title)  -> cases.csv, summary.csv, comparisons.csv, claims.csv,
                                               groups.csv, group_comparisons.csv, detection.csv,
                                               study.md, study.png, detection.png

Two things vary: the cases and the training (SPEC 10). ``rows`` holds one row per (loss,
seed, fold, case), or per case for a fixed row (the ZADC baseline, a folder of masks: seed
None, one run, the same in every seed). Per loss a (seeds, cases) table of a metric, an
infinite MSD (a missed lesion or a false alarm) counted as the study's worst finite MSD + 1
mm, a NaN (the challenge's MASD of a case with one empty mask) left out; per pair the table
of paired differences, same seed and same case. Means, intervals and verdicts come from the
hierarchical bootstrap over that table (stats.hierarchical_bootstrap: seeds, then cases),
Holm across the pairs of a metric; with fewer than MIN_SEEDS seeds no pair of losses gets a
verdict ("cannot tell"), and the per-seed Wilcoxon over cases describes those trained
models only. The spread of the per-seed means is the training noise. The lesion-wise
metrics (lesion sensitivity, lesion F1, false lesions per case, cc_dice) are reported like
Dice; the summary and the comparisons are given again within each lesion-burden group,
and detection by lesion size per loss, in mm^3 and in voxels of the grid the models see.

What each file of a study holds and how to read it: docs/study.md.
"""
import itertools
import math

import numpy as np

from evaluate import LESION_COLUMNS
from figures import detection_plot, dice_plot
from lesions import GRID_BINS, GROUPS, SIZE_BINS, grid_bin, size_bin
from plumbing import fmt, log, write_csv, write_text
from stats import MIN_CASES, MIN_SEEDS, bootstrap_diff_ci, hierarchical_bootstrap, holm, mannwhitney_p, wilcoxon_p

LESION = ("lesion_sensitivity", "lesion_f1", "false_lesions", "cc_dice")
METRICS = ("dice", "msd", "nsd") + LESION                        # compared pair by pair
REPORTED = ("dice", "msd", "nsd", "challenge_msd", "challenge_nsd") + LESION
HIGHER_IS_BETTER = {"dice": True, "msd": False, "nsd": True, "lesion_sensitivity": True, "lesion_f1": True,
                    "false_lesions": False, "cc_dice": True}
NAMES = {"dice": "Dice", "msd": "MSD", "nsd": "NSD", "lesion_sensitivity": "lesion sensitivity",
         "lesion_f1": "lesion F1", "false_lesions": "false lesions", "cc_dice": "cc_dice"}
CASE_COLUMNS = ("loss", "seed", "fold", "case", "dice", "msd", "nsd", "challenge_msd", "challenge_nsd", "pred_voxels",
                "target_voxels", *LESION_COLUMNS)
COMPARISON_COLUMNS = ("loss_a", "loss_b", "metric", "n", "seeds", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm",
                      "verdict", "seeds_agree", "wilcoxon_p")
ALPHA = 0.05
PP = "+pp("                     # a post-processed row's name: LOSS+pp(threshold=...,min_lesion=...)
too_few = f"cannot tell: {{}} seed(s), training noise not measured; use --seeds {MIN_SEEDS} or more".format


# --------------------------------------------------------------------------- a table per loss and pair

def worst_msd(rows):
    """What an infinite MSD counts as: the study's largest finite MSD + 1 mm."""
    finite = [r["msd"] for r in rows if math.isfinite(r["msd"])]
    return (max(finite) if finite else 0.0) + 1.0


def by_seed(rows, loss, metric, worst):
    """{seed: {case: value}} of ``loss`` (an infinite MSD as ``worst``); the one seed None of a
    fixed row (the ZADC baseline, a folder of masks: one run, the same in every seed)."""
    values = {}
    for r in rows:
        if r["loss"] == loss:
            v = r[metric]
            values.setdefault(r["seed"], {})[r["case"]] = worst if metric == "msd" and math.isinf(v) else v
    return values


def per_case(rows, loss, metric, worst):
    """{case: the metric of ``loss`` on it, averaged over the seeds} (NaN left out; NaN when
    every seed is NaN): what the plots and the unpaired small-lesion test use."""
    values = {}
    for cases in by_seed(rows, loss, metric, worst).values():
        for c, v in cases.items():
            values.setdefault(c, []).append(v)
    return {c: float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan for c, v in values.items()}


def per_seed_means(table):
    """The mean over cases of each seed's row (NaN left out): the spread of these is training noise."""
    return [float(np.nanmean(row)) for row in table if (~np.isnan(row)).any()]


def loss_table(rows, loss, metric, worst):
    """The (seeds, cases) table of one loss's values, NaN where a seed has no value."""
    values = [v for _, v in sorted(by_seed(rows, loss, metric, worst).items(), key=lambda i: str(i[0]))]
    cases = sorted(set().union(*values))
    return np.array([[v.get(c, math.nan) for c in cases] for v in values], float).reshape(len(values), len(cases))


def pair_table(rows, a, b, metric, worst):
    """The paired differences D[s, c] = a[s, c] - b[s, c] (SPEC 10): the same seed (so the same
    folds) and the same case. A fixed row (seed None) is one run, taken as it is in every seed
    of the trained loss it meets. Returns (seeds, cases, D): seeds [None] when both are fixed;
    the cases with a value in some seed."""
    va, vb = by_seed(rows, a, metric, worst), by_seed(rows, b, metric, worst)
    trained = [set(v) for v in (va, vb) if None not in v]          # a fixed row has no seeds of its own
    seeds = sorted(set.intersection(*trained)) if trained else [None]
    get = lambda v, s, c: v[None if None in v else s].get(c, math.nan)
    cases = sorted(set().union(*va.values()) & set().union(*vb.values())) if va and vb else []
    d = np.array([[get(va, s, c) - get(vb, s, c) for c in cases] for s in seeds], float).reshape(len(seeds), len(cases))
    keep = ~np.isnan(d).all(axis=0)
    return seeds, [c for c, k in zip(cases, keep) if k], d[:, keep]


def decides(comparison):
    """May a comparison give a verdict: both rows fixed or >= MIN_SEEDS seeds (SPEC 10), >= MIN_CASES cases."""
    return (comparison["seeds"] == 0 or comparison["seeds"] >= MIN_SEEDS) and comparison["n"] >= MIN_CASES


def counts(rows, loss):
    """Where a loss's infinite MSDs come from, over its (seed, case) rows."""
    mine = [r for r in rows if r["loss"] == loss]
    return {"missed_lesions": sum(r["pred_voxels"] == 0 and r["target_voxels"] > 0 for r in mine),
            "false_alarms": sum(r["pred_voxels"] > 0 and r["target_voxels"] == 0 for r in mine),
            "challenge_nan": sum(math.isnan(r["challenge_msd"]) for r in mine)}


# --------------------------------------------------------------------------- tables

def summary_rows(rows, losses, worst):
    """Per loss: n cases, seeds, and per metric the mean over seeds and cases with its 95%
    hierarchical bootstrap CI (seeds, then cases) and the std of the per-seed means; the
    counts behind infinite and NaN MSDs."""
    out = []
    for loss in losses:
        seeds = {r["seed"] for r in rows if r["loss"] == loss}
        row = {"loss": loss, "n": 0, "seeds": 0 if seeds == {None} else len(seeds)}
        for m in REPORTED:
            table = loss_table(rows, loss, m, worst)
            row["n"] = max(row["n"], table.shape[1])
            row[f"{m}_n"] = int((~np.isnan(table)).any(axis=0).sum())
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"], _ = hierarchical_bootstrap(table)
            spread = per_seed_means(table)
            row[f"{m}_seed_std"] = float(np.std(spread, ddof=1)) if len(spread) > 1 else math.nan
        row.update(counts(rows, loss))
        out.append(row)
    return out


def compare(rows, a, b, metric, worst):
    """One pair on one metric: the mean of D with its hierarchical 95% CI and bootstrap p
    (the verdict's evidence), the seeds whose own mean difference has the overall sign, and
    per seed the Wilcoxon signed-rank p over cases (a description of those trained models)."""
    seeds, cases, d = pair_table(rows, a, b, metric, worst)
    mean, low, high, p = hierarchical_bootstrap(d) if d.size else (math.nan,) * 4
    own = per_seed_means(d)
    return {"loss_a": a, "loss_b": b, "metric": metric, "n": len(cases), "seeds": 0 if seeds == [None] else len(seeds),
            "mean_diff": mean, "ci_low": low, "ci_high": high, "p_value": p,
            "seeds_agree": sum(np.sign(m) == np.sign(mean) and m != 0 for m in own),
            "wilcoxon_p": ";".join(fmt(wilcoxon_p(row[~np.isnan(row)], np.zeros((~np.isnan(row)).sum())), 3)
                                   for row in d)}


def comparison_rows(rows, losses, worst):
    """Every pair of losses and metric (``compare``), Holm across the pairs of the metric, and
    the verdict: the better loss, "cannot tell", or too few seeds to tell."""
    out = []
    for metric in METRICS:
        block = [compare(rows, a, b, metric, worst) for a, b in itertools.combinations(losses, 2)]
        for row, p in zip(block, holm([r["p_value"] for r in block])):
            row["p_holm"] = p
            better_a = (row["mean_diff"] > 0) == HIGHER_IS_BETTER[metric]
            row["verdict"] = (too_few(row["seeds"]) if 0 < row["seeds"] < MIN_SEEDS else
                              f"cannot tell: {row['n']} case(s), fewer than {MIN_CASES}" if not decides(row) else
                              f"{row['loss_a'] if better_a else row['loss_b']} better" if p < ALPHA else "cannot tell")
        out += block
    return out


def gain(c, winner):
    """(mean gain of ``winner`` over the other loss in comparison ``c``, CI, p_holm), > 0 when better."""
    sign = (1 if winner == c["loss_a"] else -1) * (1 if HIGHER_IS_BETTER[c["metric"]] else -1)
    low, high = sorted((sign * c["ci_low"], sign * c["ci_high"]))
    return sign * c["mean_diff"], low, high, c["p_holm"]


def sentences(comparisons, alpha=ALPHA):
    """The significant differences, in words."""
    out = []
    for c in comparisons:
        if not (c["p_holm"] < alpha and decides(c)):
            continue
        better_a = (c["mean_diff"] > 0) == HIGHER_IS_BETTER[c["metric"]]
        winner, loser = (c["loss_a"], c["loss_b"]) if better_a else (c["loss_b"], c["loss_a"])
        g, lo, hi, p = gain(c, winner)
        unit = " mm" if c["metric"] == "msd" else " per case" if c["metric"] == "false_lesions" else ""
        agree = f"; {c['seeds_agree']} of {c['seeds']} seeds agree" if c["seeds"] else ""
        out.append(f"- {winner} beats {loser} on {NAMES[c['metric']]} by {g:.3f}{unit} [{lo:.3f}, {hi:.3f}], "
                   f"p_holm = {p:.3g}{agree}")
    return out


# --------------------------------------------------------------------------- the paper's claims

def _verdict(comparisons, winner, others, metric, alpha):
    """Does ``winner`` beat each of ``others`` on ``metric``? holds (all significantly),
    does not hold (one significantly better than it), or cannot tell; with the closest pair."""
    found = [c for c in comparisons if c["metric"] == metric and {c["loss_a"], c["loss_b"]} & {winner}
             and ({c["loss_a"], c["loss_b"]} - {winner}) & set(others)]
    if len(found) < len(others):
        return None
    if not all(map(decides, found)):                          # training noise not measured
        g, lo, hi, p = max((gain(c, winner) for c in found), key=lambda x: (x[3], -x[0]))
        return "cannot tell", g, lo, hi, p, next(c["verdict"] for c in found if not decides(c))
    gains = [gain(c, winner) for c in found]
    if any(g < 0 and p < alpha for g, _, _, p in gains):
        verdict = "does not hold"
        g, lo, hi, p = min((x for x in gains if x[0] < 0 and x[3] < alpha), key=lambda x: x[0])
    else:
        verdict = "holds" if all(g > 0 and p < alpha for g, _, _, p in gains) else "cannot tell"
        g, lo, hi, p = max(gains, key=lambda x: (x[3], -x[0]))           # the pair that decides it
    return verdict, g, lo, hi, p, ""


def claims(comparisons, rows, losses, alpha=ALPHA):
    """The paper's claims for the losses the study ran, each answered at ``alpha`` after Holm."""
    trained = [l for l in losses if l in ("dice", "dice_focal", "tversky", "hdt", "dice_focal_hdt", "tversky_hdt")]
    asked = []
    for compound, part in (("dice_focal_hdt", "dice_focal"), ("tversky_hdt", "tversky")):
        for metric in ("dice", "nsd"):
            asked.append((f"{compound} beats {part} on {NAMES[metric]}", compound, [part], metric))
    for metric in ("dice", "nsd"):
        asked.append((f"tversky_hdt has the highest {NAMES[metric]}", "tversky_hdt",
                      [l for l in trained if l != "tversky_hdt"], metric))
    asked.append(("dice_focal_hdt has the lowest MSD", "dice_focal_hdt",
                  [l for l in trained if l != "dice_focal_hdt"], "msd"))
    out = []
    for text, winner, others, metric in asked:
        if winner not in losses or not others or any(o not in losses for o in others):
            continue
        answer = _verdict(comparisons, winner, others, metric, alpha)
        if answer:
            verdict, g, lo, hi, p, note = answer
            out.append({"claim": text, "verdict": verdict, "gain": g, "ci_low": lo, "ci_high": hi, "p_holm": p,
                        "note": note})
    if "hdt" in losses:
        mine = [r for r in rows if r["loss"] == "hdt"]
        seeds = sorted({r["seed"] for r in mine}, key=str)
        missing = [sum(r["pred_voxels"] == 0 and r["target_voxels"] > 0 for r in mine if r["seed"] == s) for s in seeds]
        verdict = "holds" if all(missing) else "does not hold" if not any(missing) else "cannot tell"
        few = len(seeds) < MIN_SEEDS                               # one seed's misses are one model's
        out.append({"claim": "hdt alone misses lesions (inf MSD)", "verdict": "cannot tell" if few else verdict,
                    "gain": sum(missing), "ci_low": math.nan, "ci_high": math.nan, "p_holm": math.nan,
                    "note": too_few(len(seeds)) if few else "",
                    "seeds_missing": sum(1 for m in missing if m), "seeds": len(seeds)})
    return out


def small_lesions_claim(rows, losses, alpha=ALPHA):
    """The paper's first limitation as a claim, "small lesions are harder" (SPEC 10): for each
    trained loss, its seed-averaged Dice on the <1% cases against that on the 1-5% and >5%
    cases (different cases: two-sided Mann-Whitney U), Holm across the losses. Holds when
    every loss is significantly lower on <1%, does not hold when any is significantly
    higher, else cannot tell. Returns (the claim's row, a row per loss)."""
    groups = case_groups(rows)
    trained = [l for l in losses if PP not in l and any(r["loss"] == l and r["seed"] is not None for r in rows)]
    per_loss = []
    for loss in trained:
        dice = per_case(rows, loss, "dice", math.inf)
        small = np.array([v for c, v in dice.items() if groups.get(c) == "<1%"], float)
        large = np.array([v for c, v in dice.items() if groups.get(c) in ("1-5%", ">5%")], float)
        low, high = bootstrap_diff_ci(large, small)
        per_loss.append({"loss": loss, "n_small": len(small), "n_large": len(large),
                         "gain": float(large.mean() - small.mean()) if len(small) and len(large) else math.nan,
                         "ci_low": low, "ci_high": high, "p_value": mannwhitney_p(small, large)})
    for row, p in zip(per_loss, holm([r["p_value"] for r in per_loss])):
        row["p_holm"] = p
    significant = [r for r in per_loss if r["p_holm"] < alpha]
    if per_loss and len(significant) == len(per_loss) and all(r["gain"] > 0 for r in significant):
        verdict, deciding = "holds", max(per_loss, key=lambda r: r["p_holm"])
    elif any(r["gain"] < 0 for r in significant):
        verdict, deciding = "does not hold", min((r for r in significant if r["gain"] < 0), key=lambda r: r["gain"])
    else:
        verdict = "cannot tell"
        deciding = max(per_loss, key=lambda r: (np.nan_to_num(r["p_holm"], nan=2.0), -np.nan_to_num(r["gain"]))) \
            if per_loss else {"gain": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_holm": math.nan}
    claim = {"claim": "small lesions are harder (Dice on <1% cases lower than on 1-5% and >5%)", "verdict": verdict,
             "gain": deciding["gain"], "ci_low": deciding["ci_low"], "ci_high": deciding["ci_high"],
             "p_holm": deciding["p_holm"], "note": ""}
    return claim, per_loss


def claim_lines(found):
    lines = []
    for c in found:
        if c["claim"].startswith("hdt alone"):
            detail = (f"{int(c['gain'])} lesion case(s) predicted empty; in {c['seeds_missing']} of {c['seeds']} "
                      f"seed(s) at least one (holds: in every seed; does not hold: in none)")
        else:
            detail = (f"gain {fmt(c['gain'], 3)} [{fmt(c['ci_low'], 3)}, {fmt(c['ci_high'], 3)}], "
                      f"p_holm = {fmt(c['p_holm'], 3)}")
        if c.get("note"):
            detail = f"{c['note']}; {detail}"
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {detail} |")
    return lines


# --------------------------------------------------------------------------- by burden group, by lesion size

def case_groups(rows):
    """{case: its lesion-burden group} from the rows that carry one."""
    return {r["case"]: r["burden_group"] for r in rows if r.get("burden_group")}


def group_tables(rows, losses, worst):
    """(summary rows, comparison rows) within each lesion-burden group that has cases: the
    same statistics as the whole study's, n the group's cases, Holm within the group."""
    groups = case_groups(rows)
    summaries, comparisons = [], []
    for group in GROUPS:
        cases = {c for c, g in groups.items() if g == group}
        if not cases:
            continue
        mine = [r for r in rows if r["case"] in cases]
        summaries += [{"group": group, **r} for r in summary_rows(mine, losses, worst)]
        comparisons += [{"group": group, **r} for r in comparison_rows(mine, losses, worst)]
    return summaries, comparisons


def lesions_of(row):
    """[(volume mm^3, volume in grid voxels, detected)] of the label's lesions in one case row."""
    volumes, found = row["lesion_volumes"].split(";"), row["lesion_detected"].split(";")
    voxel = row.get("grid_voxel_mm3", math.nan)
    return [(float(v), float(v) / voxel, d == "1") for v, d in zip(volumes, found)] if row["lesion_volumes"] else []


def grid_voxel(rows):
    """The median over cases of the volume of one grid voxel, mm^3 (NaN when unknown)."""
    per_case = {r["case"]: r.get("grid_voxel_mm3", math.nan) for r in rows}
    known = [v for v in per_case.values() if isinstance(v, float) and math.isfinite(v)]
    return float(np.median(known)) if known else math.nan


SCALES = (("mm3", SIZE_BINS, size_bin), ("grid_voxels", GRID_BINS, grid_bin))      # detection by size, two ways


def detection_rows(rows, losses):
    """Per loss, scale and bin: the label's lesions in the bin and the fraction detected (a
    lesion with >= 1 voxel predicted), each (seed, lesion) pair counted once; the bins by
    volume in mm^3 and in voxels of the grid the models see (SPEC 6c)."""
    out = []
    for loss in losses:
        seeds = {r["seed"] for r in rows if r["loss"] == loss}
        mine = [lesion for r in rows if r["loss"] == loss for lesion in lesions_of(r)]
        for unit, bins, which in SCALES:
            found = {b: [0, 0] for b in bins}
            for size, detected in ((mm3 if unit == "mm3" else voxels, d) for mm3, voxels, d in mine):
                if math.isfinite(size):
                    found[which(size)][0] += 1
                    found[which(size)][1] += detected
            out += [{"loss": loss, "unit": unit, "bin": b, "lesions": n // max(len(seeds), 1), "detections": k,
                     "fraction": k / n if n else math.nan} for b, (n, k) in found.items()]
    return out


def post_lines(comparisons, losses, alpha=ALPHA):
    """Does post-processing help? Each post-processed row against its raw row, per metric:
    helps / hurts (significantly better / worse after Holm) / cannot tell."""
    pairs = [(l, l.split(PP)[0]) for l in losses if PP in l and l.split(PP)[0] in losses]
    if not pairs:
        return []
    lines = ["", "## Post-processing", "",
             "Each post-processed row (the same predictions, thresholded and cleaned with the study's fixed "
             "--threshold and --min-lesion, chosen before the study: nothing tuned on these cases) against its raw "
             "row, paired over seeds and cases (the hierarchical bootstrap), Holm across the pairs of each metric: "
             "helps, hurts, or cannot tell.", "",
             "| post-processed | " + " | ".join(NAMES[m] for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for post, raw in pairs:
        cells = []
        for m in METRICS:
            c = next(c for c in comparisons if c["metric"] == m and {c["loss_a"], c["loss_b"]} == {post, raw})
            g, lo, hi, p = gain(c, post)
            verdict = "cannot tell" if not (p < alpha and decides(c)) else "helps" if g > 0 else "hurts"
            cells.append(f"{verdict}: {fmt(g, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]")
        lines.append(f"| {post} vs {raw} | " + " | ".join(cells) + " |")
    return lines


def group_lines(group_summary, group_comparisons, small, per_loss, voxel):
    lines = ["", "## By lesion burden", "",
             "The same statistics within each group of cases by lesion burden (label voxels / brain voxels, brain = "
             "ADC > 0, in the case's own geometry): n the group's cases, Holm within the group. Lesion sensitivity "
             "leaves out the cases without a lesion.", "",
             "| group | loss | n | Dice [95% CI] | NSD | lesion sens. | lesion F1 | false lesions | cc_dice |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in group_summary:
        lines.append(f"| {s['group']} | {s['loss']} | {s['n']} | {fmt(s['dice_mean'], 4)} [{fmt(s['dice_ci_low'], 4)}, "
                     f"{fmt(s['dice_ci_high'], 4)}] | {fmt(s['nsd_mean'], 4)} | {fmt(s['lesion_sensitivity_mean'], 4)} "
                     f"| {fmt(s['lesion_f1_mean'], 4)} | {fmt(s['false_lesions_mean'], 2)} "
                     f"| {fmt(s['cc_dice_mean'], 4)} |")
    for group in GROUPS:
        said = sentences([c for c in group_comparisons if c["group"] == group])
        if any(s["group"] == group for s in group_summary):
            lines += ["", f"Significant differences within {group}:"] + (said or ["- none"])
    lines += ["", f"Small lesions are harder? Per loss: mean Dice on the 1-5% and >5% cases minus on the <1% cases, "
              f"95% bootstrap CI, Mann-Whitney U, Holm across losses: **{small['verdict']}**. The models see a grid "
              f"whose voxel is {fmt(voxel, 1)} mm³ (median over cases): a lesion smaller than that is below the grid's "
              f"resolution for every loss (detection by size, below).", ""]
    lines += [f"- {r['loss']}: {fmt(r['gain'], 3)} [{fmt(r['ci_low'], 3)}, {fmt(r['ci_high'], 3)}] "
              f"({r['n_small']} vs {r['n_large']} cases), p_holm = {fmt(r['p_holm'], 3)}" for r in per_loss]
    return lines


def detection_lines(table, losses, voxel):
    lines = ["", "## Detection by lesion size", "",
             "Fraction of the label's lesions (26-connected components) with at least one voxel predicted, over seeds "
             "and cases, by lesion volume in mm³ and in voxels of the grid the models see (detection.png draws both). "
             f"A grid voxel here is {fmt(voxel, 1)} mm³ (the median over cases). A model sees the grid, not the case: "
             "a lesion under one grid voxel is below the grid's resolution, and missing it says nothing about a loss "
             "(the ZADC baseline works at native resolution).", ""]
    for unit, bins, _ in SCALES:
        head = [f"{b} mm³" for b in bins] if unit == "mm3" else \
            [f"{b} grid voxels" + (" (below the grid's resolution)" if b == "<1" else "") for b in bins]
        lines += ["| loss | " + " | ".join(head) + " |", "|---|" + "---|" * len(bins)]
        for loss in losses:
            cells = [next(r for r in table if r["loss"] == loss and r["unit"] == unit and r["bin"] == b) for b in bins]
            lines.append(f"| {loss} | " + " | ".join(f"{fmt(c['fraction'], 3)} (of {c['lesions']})" for c in cells)
                         + " |")
        lines.append("")
    return lines[:-1]


# --------------------------------------------------------------------------- the report

def seed_warning(seeds):
    """The study's first paragraph when its seeds cannot measure training noise."""
    if seeds >= MIN_SEEDS:
        return []
    return [f"**{seeds} seed(s): no verdict between losses.** Two things vary in a study, the cases and the training "
            f"(the seed, the data order, the machine: CPU kernels differ, so the same command trains another model on "
            f"another CPU). With fewer than {MIN_SEEDS} seeds the training noise is not measured, and a test over cases "
            f"only says whether these trained models differ: the same one-seed study has reversed its verdicts on "
            f"another machine. Every claim between losses reads *cannot tell*; run the same command with `--seeds "
            f"{MIN_SEEDS}` (or more) for verdicts.", ""]


def write_report(out, rows, losses, title, surfaces="voxel", seconds=None):
    worst = worst_msd(rows)
    order = sorted(losses, key=lambda l: -np.nanmean(list(per_case(rows, l, "dice", worst).values())))
    summary = summary_rows(rows, order, worst)
    comparisons = comparison_rows(rows, order, worst)
    small, per_loss = small_lesions_claim(rows, order)
    found = claims(comparisons, rows, losses) + [small]
    group_summary, group_comparisons = group_tables(rows, order, worst)
    detection = detection_rows(rows, order)
    seeds = len({r["seed"] for r in rows if r["seed"] is not None})
    lines = [f"# {title}", ""] + seed_warning(seeds) + ["## The paper's claims", "",
             f"Each answered at alpha {ALPHA} after Holm across the pairs of a metric, from the hierarchical bootstrap "
             f"over seeds and cases: holds (significant, the claimed way, against every loss named), does not hold (a "
             f"loss significantly better), cannot tell.", "", "| claim | verdict | evidence |", "|---|---|---|"]
    lines += claim_lines(found) or ["| (none of the claimed losses were run together) | | |"]
    lines += ["", "## Summary", "",
              f"Metrics in each case's own geometry on {surfaces} surfaces, the challenge evaluator's MASD and NSD "
              f"beside. Per loss the mean over seeds and cases (n cases), its 95% CI from the hierarchical bootstrap "
              f"(seeds, then cases), and the spread of the per-seed means (sd over seeds: training noise). An infinite MSD "
              f"counts as {worst:.3f} mm (the study's worst finite MSD + 1 mm).", "",
              "| loss | n | seeds | Dice [95% CI] (sd seeds) | MSD mm [95% CI] (sd seeds) | NSD [95% CI] (sd seeds) | "
              "challenge MASD | challenge NSD | missed lesions | false alarms | challenge NaN |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        cell = lambda m: fmt(s[m + "_mean"], 4) if math.isnan(s[m + "_ci_low"]) else \
            f"{fmt(s[m + '_mean'], 4)} [{fmt(s[m + '_ci_low'], 4)}, {fmt(s[m + '_ci_high'], 4)}] ({fmt(s[m + '_seed_std'], 4)})"
        lines.append(f"| {s['loss']} | {s['n']} | {s['seeds'] or '-'} | {cell('dice')} | {cell('msd')} | "
                     f"{cell('nsd')} | {fmt(s['challenge_msd_mean'], 4)} | {fmt(s['challenge_nsd_mean'], 4)} | "
                     f"{s['missed_lesions']} | {s['false_alarms']} | {s['challenge_nan']} |")
    lines += ["", "Missed lesions: an empty prediction on a lesion case; false alarms: a lesion predicted on a lesion-"
              "free case (each an infinite MSD), over (seed, case); challenge NaN: its MASD then, left out of its mean.", "",
              "Lesion by lesion (SPEC 6c), the same statistics: lesion sensitivity (n: the cases with a lesion), "
              "lesion F1, false lesions per case, per-component Dice.", "",
              "| loss | lesion sensitivity [95% CI] | lesion F1 [95% CI] | false lesions per case [95% CI] | "
              "cc_dice [95% CI] |", "|---|---|---|---|---|"]
    for s in summary:
        cell = lambda m, d=4: f"{fmt(s[m + '_mean'], d)} [{fmt(s[m + '_ci_low'], d)}, {fmt(s[m + '_ci_high'], d)}]"
        lines.append(f"| {s['loss']} | {cell('lesion_sensitivity')} | {cell('lesion_f1')} | "
                     f"{cell('false_lesions', 2)} | {cell('cc_dice')} |")
    lines += ["", "## Significant differences", "",
              "Paired over seeds and cases, the hierarchical bootstrap's two-sided p, Holm-corrected, p_holm < 0.05, "
              "with at least 3 seeds; the winner by the mean difference, its 95% CI and the seeds agreeing in sign. "
              "comparisons.csv has every pair, with per seed the Wilcoxon p over cases: a description, no verdict.", ""]
    lines += sentences(comparisons) or [
        "- none: no pair of losses differs beyond the noise of these cases and seeds" if seeds >= MIN_SEEDS else
        f"- none can be told: {seeds} seed(s); see the note at the top"]
    lines += post_lines(comparisons, order)
    lines += group_lines(group_summary, group_comparisons, small, per_loss, grid_voxel(rows))
    lines += detection_lines(detection, order, grid_voxel(rows))
    if seconds is not None:
        lines += ["", f"Wall time: {seconds:.0f} s."]
    write_csv(out / "cases.csv", rows, CASE_COLUMNS)
    write_csv(out / "summary.csv", summary, list(summary[0]))
    write_csv(out / "comparisons.csv", comparisons, COMPARISON_COLUMNS)
    write_csv(out / "claims.csv", found, ["claim", "verdict", "gain", "ci_low", "ci_high", "p_holm", "note"])
    write_csv(out / "groups.csv", group_summary, ["group"] + list(summary[0]))
    write_csv(out / "group_comparisons.csv", group_comparisons, ("group",) + COMPARISON_COLUMNS)
    write_csv(out / "detection.csv", detection, ["loss", "unit", "bin", "lesions", "detections", "fraction"])
    dice_plot(out / "study.png", rows, order)
    detection_plot(out / "detection.png", detection, order, [(u, bins) for u, bins, _ in SCALES], grid_voxel(rows))
    write_text(out / "study.md", "\n".join(lines) + "\n")           # last: its presence means complete
    log("\n".join(lines))
