"""The cross-validated study's report (SPEC 10): what was run, the verdicts and what it would
take to tell, lesion by lesion (SPEC 6c) and by lesion burden, recomputed from cases.csv alone.

    write_report(out, rows, losses, title, run=None)  -> cases.csv, summary.csv, comparisons.csv,
        claims.csv, design.csv, groups.csv, group_comparisons.csv, detection.csv, study.json,
        study.md, study.png, detection.png
    read_cases([cases.csv, ...])                       -> the rows of one or more studies (shards)

The statistics are verdicts.py's (the calibrated GPQ test, its families, the paper's claims,
the design table); this file says them: every number beside the verdict it supports (a 95% CI
and p unadjusted, p_holm the verdict's, said in the same line), every "cannot tell" with what
it would take, and every part that could not be tested with why. ``run``: what was run (the
command, the code version, the data, the profile, the epochs and how each run stopped), as
study.py collects it; study.json keeps it for scripts and a methods section.

What each file of a study holds and how to read it: docs/study.md.
"""
import csv
import math
from pathlib import Path

import numpy as np

from evaluate import LESION_COLUMNS
from figures import detection_plot, study_plot
from lesions import GRID_BINS, GROUPS, SIZE_BINS, grid_bin, size_bin
from plumbing import UsageError, fmt, log, write_csv, write_json, write_text
from stats import MIN_CASES, MIN_SEEDS, P_FLOOR, components, gpq_test, wilson
from verdicts import (ALPHA, INDICATORS, LESION, NAMES, claims, comparison_rows, design_rows,
                      group_cases, loss_table, small_lesions_claim, trained, would_take)

REPORTED = ("dice", "msd", "nsd", "challenge_msd", "challenge_nsd") + LESION + INDICATORS
CASE_COLUMNS = ("loss", "seed", "fold", "case", "dice", "msd", "nsd", "challenge_msd", "challenge_nsd", "pred_voxels",
                "target_voxels", "msd_cap", *LESION_COLUMNS)
COMPARISON_COLUMNS = ("family", "loss_a", "loss_b", "metric", "n", "left_out", "seeds", "mean_diff", "ci_low",
                      "ci_high", "p_value", "p_holm", "verdict", "var_seed", "var_case", "var_residual", "mdd",
                      "detect", "seeds_needed", "cases_needed", "seeds_agree", "wilcoxon_p")
STILL_IMPROVING = 2       # decided here: a run at the epoch limit whose best epoch is among its last 2 still improves


def fmt_p(p):
    """A p as the report prints it: below what the draws resolve as "< 0.0001", never 0.000."""
    return "NaN" if math.isnan(p) else f"< {P_FLOOR:g}" if p < P_FLOOR else f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


# --------------------------------------------------------------------------- reading studies back

INTS = ("fold", "pred_voxels", "target_voxels", "lesions", "detected", "missed", "false_lesions")
TEXT = ("loss", "case", "burden_group", "lesion_volumes", "lesion_detected", "scored")


def read_rows(path):
    """The rows of a cases.csv (or a run's cv_cases.csv), with their types back."""
    def typed(k, v):
        if k in ("seed", "fold"):
            return None if v == "" else int(v)
        return int(v) if k in INTS else v if k in TEXT else float(v)
    with open(path) as fh:
        return [{k: typed(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]


def read_cases(paths):
    """The rows of one or more cases.csv files (a study's shards run on different machines):
    a (loss, seed, case) in two files must be the same row, or the files conflict; a missing
    file or column is named. Loss names are taken as given."""
    rows, seen, problems = [], {}, []
    for path in map(Path, paths):
        if not path.is_file():
            raise UsageError(f"{path}: no such file (expected a study's cases.csv)")
        try:
            mine = read_rows(path)
        except (ValueError, KeyError) as e:
            raise UsageError(f"{path}: not a study's cases.csv ({e})") from None
        missing = [c for c in ("loss", "seed", "case", "dice", "msd", "nsd", "pred_voxels", "target_voxels")
                   if mine and c not in mine[0]]
        if missing or not mine:
            raise UsageError(f"{path}: not a study's cases.csv (expected the columns of one; "
                             f"{'no rows' if not mine else 'missing ' + ', '.join(missing)})")
        for r in mine:
            key = (r["loss"], r["seed"], r["case"])
            if key in seen:
                same = seen[key][1] == r
                problems.append(f"{r['loss']} seed {fmt(r['seed'])} case {r['case']}: in {seen[key][0]} and {path}"
                                + ("" if same else ", with different values"))
                continue
            seen[key] = (path, r)
            rows.append(r)
    if problems:
        raise UsageError(f"{len(problems)} duplicate or conflicting row(s): " + " | ".join(problems[:5])
                         + (f" | ... and {len(problems) - 5} more" if len(problems) > 5 else ""))
    return rows


# --------------------------------------------------------------------------- tables

def summary_rows(rows, losses):
    """Per loss: n cases, seeds, and per metric the mean over seeds and cases with its 95% CI
    (the GPQ of its (seeds, cases) table: training and case noise both), the std of the
    per-seed means (the training noise) and the cases left out for a missing value."""
    out = []
    for loss in losses:
        seeds = {r["seed"] for r in rows if r["loss"] == loss}
        row = {"loss": loss, "n": 0, "seeds": 0 if seeds == {None} else len(seeds)}
        for m in REPORTED:
            _, table = loss_table(rows, loss, m)
            test = gpq_test(table)
            row["n"] = max(row["n"], test["cases"])
            row.update({f"{m}_n": test["cases"], f"{m}_mean": test["mean"], f"{m}_ci_low": test["low"],
                        f"{m}_ci_high": test["high"]})
            comp = components(table) if table.size else {"seed": math.nan, "case": math.nan, "residual": math.nan}
            row.update({f"{m}_var_{x}": v for x, v in comp.items()})      # training, case and residual variance
            means = [float(np.nanmean(r)) for r in table if (~np.isnan(r)).any()]
            row[f"{m}_seed_std"] = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
        mine = [r for r in rows if r["loss"] == loss]
        row.update(missed_lesions=sum(r["pred_voxels"] == 0 and r["target_voxels"] > 0 for r in mine),
                   false_alarms=sum(r["pred_voxels"] > 0 and r["target_voxels"] == 0 for r in mine),
                   challenge_nan=sum(math.isnan(r["challenge_msd"]) for r in mine))
        out.append(row)
    return out


def group_tables(rows, losses, detect):
    """(summary rows, comparison rows) within each lesion-burden group that has cases: the same
    statistics as the whole study's, n the group's cases, Holm within the group."""
    summaries, comparisons = [], []
    for group, cases in group_cases(rows).items():
        mine = [r for r in rows if r["case"] in cases]
        summaries += [{"group": group, **r} for r in summary_rows(mine, losses)]
        comparisons += [{"group": group, **r} for r in comparison_rows(mine, losses, detect)]
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
    """Per loss, scale and bin: the label's lesions in the bin (each counted once), the seeds,
    and over the (seed, lesion) pairs the detections (a lesion with >= 1 voxel predicted), the
    fraction and its Wilson 95% interval; by volume in mm^3 and in grid voxels (SPEC 6c)."""
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
            for b, (n, k) in found.items():
                low, high = wilson(k, n)
                out.append({"loss": loss, "unit": unit, "bin": b, "lesions": n // max(len(seeds), 1),
                            "seeds": len(seeds), "lesion_seed_pairs": n, "detected_pairs": k,
                            "fraction": k / n if n else math.nan, "ci_low": low, "ci_high": high})
    return out


# --------------------------------------------------------------------------- what was run

def stopped_lines(run):
    """How each loss's runs stopped, and the undertrained warning (None when all is well)."""
    stops, warn = run.get("stops", {}), None
    lines = []
    limit = [s for loss in stops for s in stops[loss] if s["stopped"] == "epoch limit"]
    improving = [s for s in limit if s["best_epoch"] > s["epochs"] - STILL_IMPROVING]
    for loss, mine in stops.items():
        early = [s for s in mine if s["stopped"] != "epoch limit"]
        cut = [s for s in mine if s["stopped"] == "epoch limit"]
        parts = ([f"{len(early)} stopped early (epochs {min(s['epochs'] for s in early)}-"
                  f"{max(s['epochs'] for s in early)})"] if early else []) + \
                ([f"{len(cut)} at the epoch limit, {sum(s in improving for s in cut)} of them still improving "
                  f"(best epoch among the last {STILL_IMPROVING})"] if cut else [])
        lines.append(f"- {loss}: {len(mine)} run(s): " + "; ".join(parts))
    if improving:
        warn = (f"**Undertrained: {len(improving)} of {sum(map(len, stops.values()))} runs were still improving when "
                f"they reached the epoch limit** ({run.get('epochs')} epochs; a run counts when its best epoch is among "
                f"its last {STILL_IMPROVING}). Their models are not what the losses train to, and a verdict here is "
                f"about undertrained models. Run the same command with more epochs (e.g. `--epochs "
                f"{2 * int(run.get('epochs') or 1)}`): finished runs are reused, cut ones resume.")
    return lines, warn


def run_lines(run):
    """The report's opening: the command, the code, the data, the profile, the epochs, the seeds
    and folds, how the runs stopped (SPEC 10: a report opens with what was run)."""
    if not run:
        return ["## What was run", "", "Not recorded: this report was made from cases.csv alone, without the "
                "study.json beside it.", ""], None
    departures = "; ".join(f"{k} {fmt(v)} (paper: {fmt(p)})" for k, (v, p) in run.get("departures", {}).items())
    lines = ["## What was run", "", f"- command: `{run.get('command', '?')}`",
             f"- code: {run.get('commit', 'not recorded')}",
             f"- data: {run.get('data', '?')} ({run.get('cases', '?')} labelled cases)",
             f"- profile: {run.get('profile', '?')}" + (f", departing from the paper in: {departures}" if departures
                                                          else ", the paper's values"),
             f"- epochs asked for: {run.get('epochs', '?')}; seeds: {', '.join(map(str, run.get('seeds', ['?'])))}; folds: "
             f"{run.get('folds', '?')} (drawn per seed, stratified by lesion volume: folds.csv)",
             f"- wall time: {fmt(run.get('seconds', math.nan), 0)} s over {run.get('invocations', 1)} invocation(s)",
             "", "How the runs stopped:", ""]
    stops, warn = stopped_lines(run)
    return lines + (stops or ["- (no run summaries found)"]) + [""], warn


def seed_warning(seeds):
    """The study's first paragraph when its seeds cannot measure training noise."""
    if seeds >= MIN_SEEDS:
        return []
    return [f"**{seeds} seed(s): no verdict between losses.** Two things vary in a study, the cases and the training "
            f"(the seed, the folds, the data order, the machine). With fewer than {MIN_SEEDS} seeds the training noise "
            f"is not measured, and a test over cases only says whether these trained models differ: the same one-seed "
            f"study has reversed its verdicts on another machine. Every claim between losses reads *cannot tell*; run "
            f"the same command with `--seeds 5` (at least {MIN_SEEDS}) for verdicts.", ""]


# --------------------------------------------------------------------------- the text

def unit(metric):
    return " mm" if metric == "msd" else " per case" if metric == "false_lesions" else ""


def claim_lines(found):
    lines = ["| claim | verdict | gain [95% CI, unadjusted] | p | p_holm (verdict) | what it would take |",
             "|---|---|---|---|---|---|"]
    for c in found:
        take = "; ".join(x for x in (c.get("note"), c.get("would_take")) if x)
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {fmt(c['gain'], 3)} [{fmt(c['ci_low'], 3)}, "
                     f"{fmt(c['ci_high'], 3)}] | {fmt_p(c['p_value'])} | {fmt_p(c['p_holm'])} | {take} |")
    return lines


def comparison_line(c):
    """One pair in words: the verdict, then the numbers that support it, the CI said unadjusted."""
    numbers = (f"{fmt(c['mean_diff'], 3)}{unit(c['metric'])} [{fmt(c['ci_low'], 3)}, {fmt(c['ci_high'], 3)}] "
               f"(a - b, 95% CI unadjusted), p = {fmt_p(c['p_value'])}, p_holm = {fmt_p(c['p_holm'])}")
    agree = f"; {c['seeds_agree']} of {c['seeds']} seeds agree in sign" if c["seeds"] else ""
    take = f"; {would_take(c)}" if c["verdict"].startswith("cannot tell") and would_take(c) else ""
    return f"- {c['loss_a']} vs {c['loss_b']} on {NAMES[c['metric']]}: **{c['verdict']}**: {numbers}{agree}{take}"


OTHERS_SHOWN = 12        # lines of the "others" family in study.md; the rest in comparisons.csv


def comparison_lines(comparisons, fam, every=("dice", "msd", "nsd"), most=None):
    """The family's pairs in words: every pair on the paper's metrics (``every``), told or not,
    with what it would take; on the others the told ones; then what was not tested and why."""
    mine = [c for c in comparisons if c["family"] == fam]
    if not mine:
        return []
    lines = [comparison_line(c) for c in mine if c["metric"] in every or not c["verdict"].startswith("cannot tell")]
    if most and len(lines) > most:
        lines = lines[:most] + [f"- ... and {len(lines) - most} more told: comparisons.csv"]
    untested = {}
    for c in mine:
        why = c["verdict"].partition("cannot tell: ")[2]
        if why:
            untested[why] = untested.get(why, 0) + 1
    if len(mine) > sum(untested.values()) and not any(not c["verdict"].startswith("cannot tell") for c in mine):
        lines.append("- no difference beyond the noise of these seeds and cases on any metric (every pair, with what "
                     "its design could detect: comparisons.csv)")
    return lines + [f"- not tested ({n} of {len(mine)} comparisons): {why}" for why, n in untested.items()]


def needs_line(d):
    """What a design row says it would take to detect its difference."""
    if d["mdd"] <= d["detect"]:
        return "this design"
    if d["seeds_needed"] != "":
        return f"{d['seeds_needed']} seeds"
    return f"more cases, not seeds (about {d['cases_needed']})" if d["cases_needed"] != "" else "-"


def design_lines(design):
    lines = ["## What this study can detect", "",
             "Per metric, over the pairs of trained losses: the variance components (training: seeds; cases; the "
             "rest), the smallest difference this design detects with 80% power at alpha at Holm's first step of "
             "the family, and what a difference worth detecting (--detect METRIC=VALUE; defaults in docs/study.md) "
             "would need.", "",
             "| metric | seeds x cases | var seeds | var cases | var residual | detects (80% power) | to detect | "
             "needs |", "|---|---|---|---|---|---|---|---|"]
    for d in design:
        needs = needs_line(d)
        lines.append(f"| {NAMES[d['metric']]} | {d['seeds']} x {d['cases']} | {d['var_seed']:.2g} | {d['var_case']:.2g} "
                     f"| {d['var_residual']:.2g} | {fmt(d['mdd'], 3)}{unit(d['metric'])} | {d['detect']:g} | {needs} |")
    return lines + [""]


def summary_lines(summary):
    lines = ["| loss | n | seeds | Dice [95% CI] (sd seeds) | MSD mm [95% CI] (sd seeds) | NSD [95% CI] (sd seeds) | "
             "challenge MASD | challenge NSD | missed lesions | false alarms | challenge NaN |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        cell = lambda m: fmt(s[m + "_mean"], 4) if math.isnan(s[m + "_ci_low"]) else \
            f"{fmt(s[m + '_mean'], 4)} [{fmt(s[m + '_ci_low'], 4)}, {fmt(s[m + '_ci_high'], 4)}] ({fmt(s[m + '_seed_std'], 4)})"
        lines.append(f"| {s['loss']} | {s['n']} | {s['seeds'] or '-'} | {cell('dice')} | {cell('msd')} | "
                     f"{cell('nsd')} | {fmt(s['challenge_msd_mean'], 4)} | {fmt(s['challenge_nsd_mean'], 4)} | "
                     f"{s['missed_lesions']} | {s['false_alarms']} | {s['challenge_nan']} |")
    lines += ["", "| loss | lesion sensitivity [95% CI] | lesion F1 [95% CI] | false lesions per case [95% CI] | "
              "cc_dice [95% CI] |", "|---|---|---|---|---|"]
    for s in summary:
        cell = lambda m, d=4: f"{fmt(s[m + '_mean'], d)} [{fmt(s[m + '_ci_low'], d)}, {fmt(s[m + '_ci_high'], d)}]"
        lines.append(f"| {s['loss']} | {cell('lesion_sensitivity')} | {cell('lesion_f1')} | "
                     f"{cell('false_lesions', 2)} | {cell('cc_dice')} |")
    return lines


def group_lines(group_summary, group_comparisons, small, per_loss, voxel):
    lines = ["", "## By lesion burden", "",
             "The same statistics within each group of cases by lesion burden (label voxels / brain voxels, brain = "
             "ADC > 0, in the case's own geometry): n the group's cases, Holm within the group. A group of fewer than "
             f"{MIN_CASES} cases is described, not tested.", "",
             "| group | loss | n | Dice [95% CI] | NSD | lesion sens. | lesion F1 | false lesions | cc_dice |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in group_summary:
        ci = f" [{fmt(s['dice_ci_low'], 4)}, {fmt(s['dice_ci_high'], 4)}]" if s["n"] >= MIN_CASES else " (described)"
        lines.append(f"| {s['group']} | {s['loss']} | {s['n']} | {fmt(s['dice_mean'], 4)}{ci} "
                     f"| {fmt(s['nsd_mean'], 4)} | {fmt(s['lesion_sensitivity_mean'], 4)} "
                     f"| {fmt(s['lesion_f1_mean'], 4)} | {fmt(s['false_lesions_mean'], 2)} "
                     f"| {fmt(s['cc_dice_mean'], 4)} |")
    for group in GROUPS:
        mine = [c for c in group_comparisons if c["group"] == group]
        if mine:
            lines += ["", f"Within {group}, between trained losses:"] + comparison_lines(mine, "losses", every=())
    lines += ["", f"Small lesions are harder? Per trained loss: mean Dice on the 1-5% and >5% cases minus on the <1% "
              f"cases, per seed and averaged (the quantity tested), 95% CI unadjusted, the contrast GPQ with the seeds "
              f"in the test, Holm across the losses; the claim (every loss lower on <1%) is tested with the paper's claims "
              f"above: **{small['verdict']}**"
              + (f" ({small['note']})" if small.get("note") else "") + f". The models see a grid whose voxel is "
              f"{fmt(voxel, 1)} mm³ (median over cases): a lesion smaller than that is below the grid's resolution "
              f"for every loss (detection by size, below).", ""]
    lines += [f"- {r['loss']}: {fmt(r['gain'], 3)} [{fmt(r['ci_low'], 3)}, {fmt(r['ci_high'], 3)}] ({r['n_small']} vs "
              f"{r['n_large']} cases, {r['seeds']} seed(s)), p = {fmt_p(r['p_value'])}, p_holm = {fmt_p(r['p_holm'])}"
              for r in per_loss]
    return lines


def detection_lines(table, losses, voxel):
    lines = ["", "## Detection by lesion size", "",
             "Fraction of the label's lesions (26-connected components) with at least one voxel predicted, over the "
             "(seed, lesion) pairs, with Wilson's 95% interval, by lesion volume in mm³ and in voxels of the grid the "
             f"models see (detection.png draws both). A grid voxel here is {fmt(voxel, 1)} mm³ (the median over "
             "cases): a lesion under one grid voxel is below the grid's resolution, and missing it says nothing about "
             "a loss (the ZADC baseline works at native resolution).", ""]
    for unit_, bins, _ in SCALES:
        head = [f"{b} mm³" for b in bins] if unit_ == "mm3" else \
            [f"{b} grid voxels" + (" (below the grid's resolution)" if b == "<1" else "") for b in bins]
        lines += ["| loss | " + " | ".join(head) + " |", "|---|" + "---|" * len(bins)]
        for loss in losses:
            cells = [next(r for r in table if r["loss"] == loss and r["unit"] == unit_ and r["bin"] == b) for b in bins]
            lines.append(f"| {loss} | " + " | ".join(
                f"{fmt(c['fraction'], 2)} [{fmt(c['ci_low'], 2)}, {fmt(c['ci_high'], 2)}] ({c['lesions']} lesions x "
                f"{c['seeds']} seeds)" if c["lesion_seed_pairs"] else "- (no lesion)" for c in cells) + " |")
        lines.append("")
    return lines[:-1]


# --------------------------------------------------------------------------- the report

def write_report(out, rows, losses, title, surfaces="voxel", run=None, detect=None):
    """Every table, verdict and picture of a study from its rows (SPEC 10); the study and
    ``hie_ref.py report`` both call it. ``run``: what was run (None: not recorded)."""
    dice = {l: loss_table(rows, l, "dice")[1] for l in losses}
    order = sorted(losses, key=lambda l: -np.nanmean(dice[l]) if dice[l].size else 1.0)
    summary = summary_rows(rows, order)
    comparisons = comparison_rows(rows, order, detect)
    small, per_loss = small_lesions_claim(rows, order)
    found = claims(comparisons, rows, order, more=[small])
    design = design_rows(comparisons, detect)
    group_summary, group_comparisons = group_tables(rows, order, detect)
    detection = detection_rows(rows, order)
    seeds = max([len({r["seed"] for r in rows if r["loss"] == l}) for l in trained(rows, order)] or [0])
    opening, undertrained = run_lines(run)
    lines = [f"# {title}", ""] + ([undertrained, ""] if undertrained else []) + seed_warning(seeds) + opening
    lines += ["## The paper's claims", "",
              f"The confirmatory family: each claim an intersection-union test over its pairs (the generalized pivotal "
              f"quantity test over seeds and cases, SPEC 10), Holm across the claims, alpha {ALPHA}: holds, does not "
              f"hold (a loss significantly better), or cannot tell, with what it would take.", ""]
    lines += claim_lines(found) if found else ["(none of the claimed losses were trained together)"]
    lines += ["", *design_lines(design)] if design else [""]
    lines += ["## Summary", "",
              f"Metrics in each case's own geometry on {surfaces} surfaces, the challenge evaluator's MASD and NSD "
              f"beside. Per loss the mean over seeds and cases (n cases), its 95% CI from the GPQ of its (seeds, cases) "
              f"table, and the spread of the per-seed means (sd over seeds: training noise). An infinite MSD counts as "
              f"the case's field-of-view diagonal, fixed before any run.", ""] + summary_lines(summary)
    lines += ["", "Missed lesions: an empty prediction on a lesion case; false alarms: a lesion predicted on a "
              "lesion-free case (each an infinite MSD), over (seed, case); challenge NaN: its MASD then, left out of "
              "its mean.", "", "## Between trained losses", "",
              "Exploratory: every pair, Holm per metric among the trained losses alone (a post-processed row, the "
              "baseline or a --compare folder changes none of these).", ""]
    lines += comparison_lines(comparisons, "losses") or ["- fewer than two trained losses"]
    if any(c["family"] == "post-processing" for c in comparisons):
        lines += ["", "## Post-processing", "", "Each post-processed row (the study's fixed --threshold and "
                  "--min-lesion, chosen before the study) against its raw row, Holm per metric within this family.", ""]
        lines += comparison_lines(comparisons, "post-processing")
    if any(c["family"] == "others" for c in comparisons):
        lines += ["", "## The baseline, --compare folders, post-processed rows against other losses", "",
                  "Every other pair: comparisons.csv (family `others`, Holm per metric within it). What is told:", ""]
        lines += comparison_lines(comparisons, "others", every=(), most=OTHERS_SHOWN)
    lines += group_lines(group_summary, group_comparisons, small, per_loss, grid_voxel(rows))
    lines += detection_lines(detection, order, grid_voxel(rows))
    write_csv(out / "cases.csv", rows, CASE_COLUMNS)
    write_csv(out / "summary.csv", summary, list(summary[0]))
    write_csv(out / "comparisons.csv", comparisons, COMPARISON_COLUMNS)
    write_csv(out / "claims.csv", found, ["claim", "verdict", "gain", "ci_low", "ci_high", "p_value", "p_holm", "note",
                                          "would_take"])
    write_csv(out / "design.csv", design, list(design[0]) if design else ["metric"])
    write_csv(out / "groups.csv", group_summary, ["group"] + list(summary[0]))
    write_csv(out / "group_comparisons.csv", group_comparisons, ("group",) + COMPARISON_COLUMNS)
    write_csv(out / "detection.csv", detection, list(detection[0]) if detection else ["loss"])
    write_json(out / "study.json", {"title": title, "run": run, "undertrained": undertrained, "claims": found,
                                    "design": design})
    study_plot(out / "study.png", summary, comparisons, order, ("dice", "nsd", "msd", "lesion_f1"), NAMES)
    detection_plot(out / "detection.png", detection, order, [(u, bins) for u, bins, _ in SCALES], grid_voxel(rows))
    write_text(out / "study.md", "\n".join(lines) + "\n")           # last: its presence means complete
    log("\n".join(lines))
