"""The cross-validated study's report (SPEC 10): statistics over cases, the paper's claims.

    write_report(out, rows, losses, title)  -> cases.csv, summary.csv, comparisons.csv, claims.csv,
                                               study.md, study.png

The unit of analysis is the case. ``rows`` holds one row per (loss, seed, fold, case), or
per case for a deterministic row (the ZADC baseline, a folder of masks: seed None). Per
loss and case a metric is first averaged over the seeds, an infinite MSD (a missed lesion
or a false alarm) counted as the study's worst finite MSD + 1 mm, a NaN (the challenge's
MASD of a case with one empty mask) left out; every mean, interval and test is then over
cases (n = the number of cases). The seeds measure training noise: the spread of the
per-seed means.
"""
import itertools
import math

import numpy as np

from figures import dice_plot
from plumbing import fmt, log, write_csv, write_text
from stats import bootstrap_ci, holm, wilcoxon_p

METRICS = ("dice", "msd", "nsd")
REPORTED = METRICS + ("challenge_msd", "challenge_nsd")
HIGHER_IS_BETTER = {"dice": True, "msd": False, "nsd": True}
NAMES = {"dice": "Dice", "msd": "MSD", "nsd": "NSD"}
CASE_COLUMNS = ("loss", "seed", "fold", "case", "dice", "msd", "nsd", "challenge_msd", "challenge_nsd", "pred_voxels",
                "target_voxels")
COMPARISON_COLUMNS = ("loss_a", "loss_b", "metric", "n", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm")
ALPHA = 0.05


# --------------------------------------------------------------------------- one value per case

def worst_msd(rows):
    """What an infinite MSD counts as: the study's largest finite MSD + 1 mm."""
    finite = [r["msd"] for r in rows if math.isfinite(r["msd"])]
    return (max(finite) if finite else 0.0) + 1.0


def per_case(rows, loss, metric, worst):
    """{case: the metric of ``loss`` on it, averaged over the seeds} (inf MSD as ``worst``,
    NaN left out; NaN when every seed is NaN)."""
    values = {}
    for r in rows:
        if r["loss"] == loss:
            v = r[metric]
            values.setdefault(r["case"], []).append(worst if metric == "msd" and math.isinf(v) else v)
    return {c: float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan for c, v in values.items()}


def per_seed_means(rows, loss, metric, worst):
    """The mean over cases of each seed's values (same substitutions as ``per_case``)."""
    seeds = sorted({r["seed"] for r in rows if r["loss"] == loss and r["seed"] is not None})
    means = []
    for s in seeds:
        v = np.array([worst if metric == "msd" and math.isinf(r[metric]) else r[metric]
                      for r in rows if r["loss"] == loss and r["seed"] == s], float)
        means.append(np.nanmean(v) if (~np.isnan(v)).any() else math.nan)
    return means


def counts(rows, loss):
    """Where a loss's infinite MSDs come from, over its (seed, case) rows."""
    mine = [r for r in rows if r["loss"] == loss]
    return {"missed_lesions": sum(r["pred_voxels"] == 0 and r["target_voxels"] > 0 for r in mine),
            "false_alarms": sum(r["pred_voxels"] > 0 and r["target_voxels"] == 0 for r in mine),
            "challenge_nan": sum(math.isnan(r["challenge_msd"]) for r in mine)}


# --------------------------------------------------------------------------- tables

def summary_rows(rows, losses, worst):
    """Per loss: n cases, seeds, and per metric the mean over cases with its 95% bootstrap
    CI and the std of the per-seed means; the counts behind infinite and NaN MSDs."""
    out = []
    for loss in losses:
        seeds = {r["seed"] for r in rows if r["loss"] == loss}
        row = {"loss": loss, "n": 0, "seeds": 0 if seeds == {None} else len(seeds)}
        for m in REPORTED:
            v = np.array(list(per_case(rows, loss, m, worst).values()), float)
            row["n"] = max(row["n"], len(v))
            v = v[~np.isnan(v)]
            row[f"{m}_mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = bootstrap_ci(v)
            spread = per_seed_means(rows, loss, m, worst)
            row[f"{m}_seed_std"] = float(np.std(spread, ddof=1)) if len(spread) > 1 else math.nan
        row.update(counts(rows, loss))
        out.append(row)
    return out


def paired(rows, a, b, metric, worst):
    """(x, y): the per-case values of losses a and b on their common cases, in case order."""
    va, vb = per_case(rows, a, metric, worst), per_case(rows, b, metric, worst)
    cases = sorted(set(va) & set(vb))
    return np.array([va[c] for c in cases], float), np.array([vb[c] for c in cases], float)


def comparison_rows(rows, losses, worst):
    """Every pair of losses and metric, paired over cases: mean difference a - b with its 95%
    bootstrap CI, the two-sided Wilcoxon p-value, Holm across the pairs of the metric."""
    out = []
    for metric in METRICS:
        block = []
        for a, b in itertools.combinations(losses, 2):
            x, y = paired(rows, a, b, metric, worst)
            low, high = bootstrap_ci(x - y)
            block.append({"loss_a": a, "loss_b": b, "metric": metric, "n": len(x),
                          "mean_diff": float((x - y).mean()) if len(x) else math.nan,
                          "ci_low": low, "ci_high": high, "p_value": wilcoxon_p(x, y)})
        for row, p in zip(block, holm([r["p_value"] for r in block])):
            row["p_holm"] = p
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
        if not c["p_holm"] < alpha:
            continue
        better_a = (c["mean_diff"] > 0) == HIGHER_IS_BETTER[c["metric"]]
        winner, loser = (c["loss_a"], c["loss_b"]) if better_a else (c["loss_b"], c["loss_a"])
        g, lo, hi, p = gain(c, winner)
        unit = " mm" if c["metric"] == "msd" else ""
        out.append(f"- {winner} beats {loser} on {NAMES[c['metric']]} by {g:.3f}{unit} [{lo:.3f}, {hi:.3f}], "
                   f"p_holm = {p:.3g}")
    return out


# --------------------------------------------------------------------------- the paper's claims

def _verdict(comparisons, winner, others, metric, alpha):
    """Does ``winner`` beat each of ``others`` on ``metric``? holds (all significantly),
    does not hold (one significantly better than it), or cannot tell; with the closest pair."""
    found = [c for c in comparisons if c["metric"] == metric and {c["loss_a"], c["loss_b"]} & {winner}
             and ({c["loss_a"], c["loss_b"]} - {winner}) & set(others)]
    if len(found) < len(others):
        return None
    gains = [gain(c, winner) for c in found]
    if any(g < 0 and p < alpha for g, _, _, p in gains):
        verdict = "does not hold"
        g, lo, hi, p = min((x for x in gains if x[0] < 0 and x[3] < alpha), key=lambda x: x[0])
    else:
        verdict = "holds" if all(g > 0 and p < alpha for g, _, _, p in gains) else "cannot tell"
        g, lo, hi, p = max(gains, key=lambda x: (x[3], -x[0]))           # the pair that decides it
    return verdict, g, lo, hi, p


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
            verdict, g, lo, hi, p = answer
            out.append({"claim": text, "verdict": verdict, "gain": g, "ci_low": lo, "ci_high": hi, "p_holm": p})
    if "hdt" in losses:
        mine = [r for r in rows if r["loss"] == "hdt"]
        seeds = sorted({r["seed"] for r in mine}, key=str)
        missing = [sum(r["pred_voxels"] == 0 and r["target_voxels"] > 0 for r in mine if r["seed"] == s) for s in seeds]
        verdict = "holds" if all(missing) else "does not hold" if not any(missing) else "cannot tell"
        out.append({"claim": "hdt alone misses lesions (inf MSD)", "verdict": verdict, "gain": sum(missing),
                    "ci_low": math.nan, "ci_high": math.nan, "p_holm": math.nan,
                    "seeds_missing": sum(1 for m in missing if m), "seeds": len(seeds)})
    return out


def claim_lines(found):
    lines = []
    for c in found:
        if c["claim"].startswith("hdt alone"):
            detail = (f"{int(c['gain'])} lesion case(s) predicted empty; in {c['seeds_missing']} of {c['seeds']} "
                      f"seed(s) at least one (holds: in every seed; does not hold: in none)")
        else:
            detail = f"gain {c['gain']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}], p_holm = {c['p_holm']:.3g}"
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {detail} |")
    return lines


# --------------------------------------------------------------------------- the report

def write_report(out, rows, losses, title, surfaces="voxel", seconds=None):
    worst = worst_msd(rows)
    order = sorted(losses, key=lambda l: -np.nanmean(list(per_case(rows, l, "dice", worst).values())))
    summary = summary_rows(rows, order, worst)
    comparisons = comparison_rows(rows, order, worst)
    found = claims(comparisons, rows, losses)
    lines = [f"# {title}", "", "## The paper's claims", "",
             f"Each answered at alpha {ALPHA} after Holm's correction across the pairs of a metric: holds (significant, "
             f"in the claimed direction, against every loss named), does not hold (a loss significantly better), "
             f"cannot tell. For the losses this study ran.", "", "| claim | verdict | evidence |", "|---|---|---|"]
    lines += claim_lines(found) or ["| (none of the claimed losses were run together) | | |"]
    lines += ["", "## Summary", "",
              f"Metrics in each case's own geometry on {surfaces} surfaces, the challenge evaluator's MASD and NSD "
              f"beside. Per loss and case the mean over seeds; then the mean over cases (n), its 95% bootstrap CI "
              f"over cases, and the spread of the per-seed means (sd over seeds: training noise). An infinite MSD "
              f"counts as {worst:.3f} mm (the study's worst finite MSD + 1 mm).", "",
              "| loss | n | seeds | Dice [95% CI] (sd seeds) | MSD mm [95% CI] (sd seeds) | NSD [95% CI] (sd seeds) | "
              "challenge MASD | challenge NSD | missed lesions | false alarms | challenge NaN |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        cell = lambda m: (f"{fmt(s[m + '_mean'], 4)} [{fmt(s[m + '_ci_low'], 4)}, {fmt(s[m + '_ci_high'], 4)}] "
                          f"({fmt(s[m + '_seed_std'], 4)})") if not math.isnan(s[m + "_ci_low"]) else \
            fmt(s[m + "_mean"], 4)
        lines.append(f"| {s['loss']} | {s['n']} | {s['seeds'] or '-'} | {cell('dice')} | {cell('msd')} | "
                     f"{cell('nsd')} | {fmt(s['challenge_msd_mean'], 4)} | {fmt(s['challenge_nsd_mean'], 4)} | "
                     f"{s['missed_lesions']} | {s['false_alarms']} | {s['challenge_nan']} |")
    lines += ["", "Missed lesions: an empty prediction on a lesion case; false alarms: a lesion predicted on a "
              "lesion-free case (each an infinite MSD), counted over (seed, case); challenge NaN: the challenge "
              "evaluator's MASD of such a case, left out of its mean."]
    lines += ["", "## Significant differences", "",
              "Wilcoxon signed-rank over cases (the seed-averaged values), Holm-corrected, p_holm < 0.05; the winner "
              "by the mean difference, with its 95% bootstrap CI over cases.", ""]
    lines += sentences(comparisons) or ["- none: no pair of losses differs beyond what these cases can show"]
    if seconds is not None:
        lines += ["", f"Wall time: {seconds:.0f} s."]
    write_csv(out / "cases.csv", rows, CASE_COLUMNS)
    write_csv(out / "summary.csv", summary, list(summary[0]))
    write_csv(out / "comparisons.csv", comparisons, COMPARISON_COLUMNS)
    write_csv(out / "claims.csv", found, ["claim", "verdict", "gain", "ci_low", "ci_high", "p_holm"])
    dice_plot(out / "study.png", rows, order)
    write_text(out / "study.md", "\n".join(lines) + "\n")           # last: its presence means complete
    log("\n".join(lines))
