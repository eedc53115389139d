"""The study's verdicts (SPEC 10): a (seeds, cases) table per loss and per pair, the calibrated
test of each (stats.gpq_test), the families Holm corrects within, the paper's claims and what a
design could have detected.

    comparison_rows(rows, losses, detect)   -> every pair and metric: difference, CI, p, Holm, verdict, design
    claims(comparisons, rows, losses)       -> the paper's claims, the confirmatory family
    design_rows(comparisons, detect)        -> per metric: what the study can detect, what it would take

``rows`` holds one row per (loss, seed, fold, case), or per case for a fixed row (the ZADC
baseline, a folder of masks: seed None, one run, the same in every seed). A value is fixed per
case before any run: an infinite MSD (a missed lesion or a false alarm) counts as the case's
``msd_cap``, the diagonal of its field of view in the study's units (decided here, as BraTS
2023's lesion-wise evaluation does), never as something the other rows move.

Families (SPEC 10): the paper's claims are the confirmatory family, Holm across them. The
pairwise comparisons are exploratory, Holm per metric within one of three families: the
trained losses among themselves ("losses"), each post-processed row against its raw row
("post-processing"), and every pair with the baseline, a --compare folder or a post-processed
row ("others"). Adding a row to the last two changes no verdict between two trained losses.

Imports stats.py, the burden groups of lesions.py and plumbing's number format.
"""
import itertools
import math

import numpy as np

from lesions import GROUPS
from plumbing import fmt
from stats import (MIN_CASES, MIN_SEEDS, cases_needed, components, contrast_test, gpq_test, holm, mdd, seeds_needed,
                   wilcoxon_p)

LESION = ("lesion_sensitivity", "lesion_f1", "false_lesions", "cc_dice")
INDICATORS = ("missed_lesion", "false_alarm")        # per (seed, case): 1, 0, or NaN where it cannot happen
METRICS = ("dice", "msd", "nsd") + LESION + INDICATORS          # compared pair by pair
HIGHER_IS_BETTER = {"dice": True, "msd": False, "nsd": True, "lesion_sensitivity": True, "lesion_f1": True,
                    "false_lesions": False, "cc_dice": True, "missed_lesion": False, "false_alarm": False}
NAMES = {"dice": "Dice", "msd": "MSD", "nsd": "NSD", "lesion_sensitivity": "lesion sensitivity",
         "lesion_f1": "lesion F1", "false_lesions": "false lesions", "cc_dice": "cc_dice",
         "missed_lesion": "missed lesion", "false_alarm": "false alarm"}
# The difference a design table asks about by default (--detect METRIC=VALUE; decided here): a gain a
# researcher would change losses for, about a tenth of the spread of the metric over cases.
DETECT = {"dice": 0.02, "msd": 1.0, "nsd": 0.02, "lesion_sensitivity": 0.05, "lesion_f1": 0.05, "false_lesions": 0.2,
          "cc_dice": 0.02, "missed_lesion": 0.05, "false_alarm": 0.05}
ALPHA = 0.05
PP = "+pp("                     # a post-processed row's name: LOSS+pp(threshold=...,min_lesion=...)
PAPER_LOSSES = ("dice", "dice_focal", "tversky", "hdt", "dice_focal_hdt", "tversky_hdt")
FAMILIES = ("losses", "post-processing", "others")
SEEDS_MOST = 200                # seeds_needed looks no further: past it, more cases are what is missing


# --------------------------------------------------------------------------- values and tables

def value(row, metric):
    """One row's value of ``metric``, fixed per case: an infinite MSD as the case's msd_cap (NaN
    for rows from before the cap, left out); the indicators from the voxel counts."""
    if metric == "missed_lesion":
        return math.nan if row["target_voxels"] == 0 else float(row["pred_voxels"] == 0)
    if metric == "false_alarm":
        return math.nan if row["target_voxels"] > 0 else float(row["pred_voxels"] > 0)
    v = row[metric]
    return row.get("msd_cap", math.nan) if metric == "msd" and math.isinf(v) else v


def by_seed(rows, loss, metric):
    """{seed: {case: value}} of ``loss``; the one seed None of a fixed row."""
    out = {}
    for r in rows:
        if r["loss"] == loss:
            out.setdefault(r["seed"], {})[r["case"]] = value(r, metric)
    return out


def is_fixed(rows, loss):
    return any(r["loss"] == loss and r["seed"] is None for r in rows)


def loss_table(rows, loss, metric):
    """(cases, the (seeds, cases) table of one loss's values, NaN where a seed has no value)."""
    values = [v for _, v in sorted(by_seed(rows, loss, metric).items(), key=lambda i: str(i[0]))]
    cases = sorted(set().union(*values)) if values else []
    return cases, np.array([[v.get(c, math.nan) for c in cases] for v in values], float).reshape(len(values), len(cases))


def paired_seeds(sa, sb):
    """[(seed of a, seed of b)]: the seeds both ran, paired with themselves (the same folds and
    initialisation); the rest of each paired in sorted order (independent runs: under the null
    any pairing fixed before looking is as good). A fixed row (None) meets every seed."""
    if sa == [None] or sb == [None]:
        return [(s, None) for s in sa] if sb == [None] else [(None, s) for s in sb]
    common = sorted(set(sa) & set(sb))
    rest = zip(sorted(set(sa) - set(common)), sorted(set(sb) - set(common)))
    return [(s, s) for s in common] + list(rest)


def pair_table(rows, a, b, metric):
    """The paired differences D[s, c] = a[s, c] - b[s, c] (SPEC 10): the same seed and case. A
    fixed row is one run, taken as it is in every seed of the other. Returns (pairs of seeds,
    cases, D), D over the cases with a value in some seed."""
    va, vb = by_seed(rows, a, metric), by_seed(rows, b, metric)
    if not va or not vb:
        return [], [], np.zeros((0, 0))
    seeds = paired_seeds(sorted(va, key=str), sorted(vb, key=str))
    cases = sorted(set().union(*va.values()) & set().union(*vb.values()))
    d = np.array([[va[s].get(c, math.nan) - vb[t].get(c, math.nan) for c in cases] for s, t in seeds], float)
    d = d.reshape(len(seeds), len(cases))
    keep = ~np.isnan(d).all(axis=0)
    return seeds, [c for c, k in zip(cases, keep) if k], d[:, keep]


def trained(rows, losses):
    """The losses trained in this study: seeds of their own and no post-processing."""
    return [l for l in losses if PP not in l and not is_fixed(rows, l)]


def family(a, b, raw):
    """Which family a pair belongs to (SPEC 10): "losses", "post-processing" or "others"."""
    if a in raw and b in raw:
        return "losses"
    if a.split(PP)[0] == b or b.split(PP)[0] == a:         # a post-processed row and its raw row
        return "post-processing"
    return "others"


# --------------------------------------------------------------------------- one comparison

def too_few(seeds, cases):
    """Why a comparison gets no verdict, or "" when it may have one (SPEC 10)."""
    if 0 < seeds < MIN_SEEDS:
        return f"{seeds} seed(s): training noise not measured; use --seeds {MIN_SEEDS} or more"
    if cases == 0:
        return "no case where it can happen"
    if cases < MIN_CASES:
        return f"{cases} case(s), fewer than {MIN_CASES}"
    return ""


def compare(rows, a, b, metric):
    """One pair on one metric: the GPQ test of D (mean, 95% CI, p), its variance components, the
    seeds whose own mean difference has the overall sign, the Wilcoxon p over cases per seed
    (a description of those trained models), and the cases left out for a missing value."""
    seeds, cases, d = pair_table(rows, a, b, metric)
    test = gpq_test(d) if d.size else {"mean": math.nan, "low": math.nan, "high": math.nan, "p": math.nan,
                                       "cases": 0, "left_out": 0}
    comp = components(d) if d.size else {"seed": math.nan, "case": math.nan, "residual": math.nan}
    full = d[:, ~np.isnan(d).any(axis=0)] if d.size else d
    own = full.mean(axis=1) if full.size else []
    fixed = seeds == [(None, None)]
    return {"loss_a": a, "loss_b": b, "metric": metric, "n": test["cases"], "left_out": test["left_out"],
            "seeds": 0 if fixed else len(seeds), "mean_diff": test["mean"], "ci_low": test["low"],
            "ci_high": test["high"], "p_value": test["p"], "var_seed": comp["seed"], "var_case": comp["case"],
            "var_residual": comp["residual"],
            "seeds_agree": int(sum(np.sign(m) == np.sign(test["mean"]) and m != 0 for m in own)),
            "wilcoxon_p": ";".join(fmt(wilcoxon_p(row, np.zeros(len(row))), 3) for row in full)}


def decide(row, alpha=ALPHA):
    """The verdict of a compared pair, from its Holm p: the better loss, or cannot tell (why)."""
    why = too_few(row["seeds"], row["n"])
    if why:
        return f"cannot tell: {why}"
    if not row["p_holm"] < alpha:
        return "cannot tell"
    better_a = (row["mean_diff"] > 0) == HIGHER_IS_BETTER[row["metric"]]
    return f"{row['loss_a'] if better_a else row['loss_b']} better"


def comparison_rows(rows, losses, detect=None, alpha=ALPHA):
    """Every pair of ``losses`` and metric (``compare``), with its family, Holm within the
    family and metric, the verdict, and the design: the minimum detectable difference at Holm's
    first step of the family (``mdd``) and the seeds (or, when seeds cannot, cases) needed to
    detect the metric's ``detect`` difference."""
    detect = {**DETECT, **(detect or {})}
    raw = set(trained(rows, losses))
    out = []
    for metric in METRICS:
        block = [{**compare(rows, a, b, metric), "family": family(a, b, raw)} for a, b in itertools.combinations(losses, 2)]
        for name in FAMILIES:
            mine = [r for r in block if r["family"] == name]
            for row, p in zip(mine, holm([r["p_value"] for r in mine])):
                row["p_holm"] = p
                row["verdict"] = decide(row, alpha)
                row.update(design(row, detect[metric], alpha / max(len(mine), 1)))
        out += block
    return out


def design(row, delta, alpha):
    """What the pair's design can detect at ``alpha`` (Holm's first step) and what ``delta`` needs."""
    comp = {"seed": row["var_seed"], "case": row["var_case"], "residual": row["var_residual"]}
    seeds = max(row["seeds"], 1)
    found = mdd(comp, seeds, row["n"], alpha) if row["n"] >= 2 else math.nan
    need = seeds_needed(comp, max(row["n"], 1), delta, alpha, SEEDS_MOST) if row["seeds"] and row["n"] >= 2 else None
    cases = cases_needed(comp, seeds, delta, alpha) if row["n"] >= 2 else None
    return {"mdd": found, "detect": delta, "seeds_needed": need if need is not None else "",
            "cases_needed": cases if (need is None and cases is not None) else ""}


def would_take(row):
    """'could detect X; D needs N seeds' beside a cannot tell: what it would take to tell."""
    if not math.isfinite(row.get("mdd", math.nan)):
        return ""
    text = f"this design detects {row['mdd']:.3g} (80% power)"
    if row["mdd"] <= row["detect"]:
        return text
    if row["seeds_needed"] != "":
        return f"{text}; {row['detect']:g} needs about {row['seeds_needed']} seeds at {row['n']} cases"
    if row["cases_needed"] != "":
        return f"{text}; {row['detect']:g} needs more cases, not seeds (about {row['cases_needed']})"
    return text


# --------------------------------------------------------------------------- the paper's claims

def _claim(comparisons, winner, others, metric, better=True):
    """(gain, low, high, p, note) of "``winner`` beats every one of ``others`` on ``metric``", an
    intersection-union test: p = the largest pair p when every gain is positive, else the
    smallest p of a pair going the other way times the pairs (Bonferroni within the claim)."""
    found = [c for c in comparisons if c["metric"] == metric and c["family"] == "losses"
             and winner in (c["loss_a"], c["loss_b"]) and ({c["loss_a"], c["loss_b"]} - {winner}) & set(others)]
    if len(found) < len(others):
        return None
    why = next((too_few(c["seeds"], c["n"]) for c in found if too_few(c["seeds"], c["n"])), "")
    gains = [gain(c, winner, better) + (c,) for c in found]
    against = [x for x in gains if x[0] < 0]
    if against:
        g, lo, hi, p, c = min(against, key=lambda x: x[3])
        return g, lo, hi, min(1.0, p * len(gains)), why, c
    g, lo, hi, p, c = max(gains, key=lambda x: (x[3], -x[0]))             # the pair that decides it
    return g, lo, hi, p, why, c


def gain(c, winner, better=True):
    """(mean gain of ``winner`` over the other in comparison ``c``, CI, p), > 0 when better (when
    worse, with ``better`` False: a claim that a loss does worse, as "hdt alone misses lesions")."""
    sign = (1 if winner == c["loss_a"] else -1) * (1 if HIGHER_IS_BETTER[c["metric"]] else -1) * (1 if better else -1)
    lo, hi = sorted((sign * c["ci_low"], sign * c["ci_high"]))
    return sign * c["mean_diff"], lo, hi, c["p_value"]


def claims(comparisons, rows, losses, alpha=ALPHA, more=()):
    """The paper's claims for the losses the study trained, the confirmatory family: each an
    intersection-union test over its pairs, Holm across the claims (and ``more``: the
    small-lesion claim). holds / does not hold (a loss significantly better) / cannot tell, with
    what it would take."""
    mine = [l for l in trained(rows, losses) if l in PAPER_LOSSES]
    asked = []
    for compound, part in (("dice_focal_hdt", "dice_focal"), ("tversky_hdt", "tversky")):
        asked += [(f"{compound} beats {part} on {NAMES[m]}", compound, [part], m, True) for m in ("dice", "nsd")]
    asked += [(f"tversky_hdt has the highest {NAMES[m]}", "tversky_hdt", [l for l in mine if l != "tversky_hdt"], m,
               True) for m in ("dice", "nsd")]
    asked.append(("dice_focal_hdt has the lowest MSD", "dice_focal_hdt", [l for l in mine if l != "dice_focal_hdt"],
                  "msd", True))
    asked.append(("hdt alone misses lesions (a higher missed-lesion rate than every other loss)", "hdt",
                  [l for l in mine if l != "hdt"], "missed_lesion", False))
    out = []
    for text, winner, others, metric, better in asked:
        if winner not in mine or not others:
            continue
        answer = _claim(comparisons, winner, others, metric, better)
        if answer:
            g, lo, hi, p, why, c = answer
            out.append({"claim": text, "gain": g, "ci_low": lo, "ci_high": hi, "p_value": p, "note": why,
                        "would_take": would_take(c)})
    out += list(more)
    for row, p in zip(out, holm([r["p_value"] for r in out])):
        row["p_holm"] = p
        row["verdict"] = ("cannot tell" if row["note"] or not p < alpha else
                          "holds" if row["gain"] > 0 else "does not hold")
    return out


def small_lesions_claim(rows, losses):
    """The paper's first limitation, "small lesions are harder" (SPEC 10): per trained loss, its
    mean Dice on the 1-5% and >5% cases minus that on the <1% cases, per seed and averaged, by
    the contrast GPQ (stats.contrast_test: the seeds in the test, the effect the quantity
    tested), Holm across the losses for the per-loss rows. The claim, "every loss is lower on
    <1%", is an intersection-union test like the others (``claims`` puts it in their family).
    Returns (the claim's row, a row per loss)."""
    groups = {r["case"]: r.get("burden_group", "") for r in rows}
    per_loss = []
    for loss in trained(rows, losses):
        cases, table = loss_table(rows, loss, "dice")
        keep = [i for i, c in enumerate(cases) if groups.get(c) in ("<1%", "1-5%", ">5%")]
        large = np.array([groups[cases[i]] != "<1%" for i in keep])
        test = contrast_test(table[:, keep], large) if keep else {"mean": math.nan, "low": math.nan,
                                                                  "high": math.nan, "p": math.nan}
        per_loss.append({"loss": loss, "n_small": int((~large).sum()) if keep else 0,
                         "n_large": int(large.sum()) if keep else 0, "seeds": table.shape[0], "gain": test["mean"],
                         "ci_low": test["low"], "ci_high": test["high"], "p_value": test["p"]})
    for row, p in zip(per_loss, holm([r["p_value"] for r in per_loss])):
        row["p_holm"] = p
        row["note"] = too_few(row["seeds"], min(row["n_small"], row["n_large"]))
    gains = [(r["gain"], r["ci_low"], r["ci_high"], r["p_value"]) for r in per_loss]
    against = [x for x in gains if x[0] < 0]
    if against:                                  # some loss higher on <1%: Bonferroni within the claim
        g, lo, hi, p = min(against, key=lambda x: x[3])
        p = min(1.0, p * len(gains))
    elif gains:                                  # every loss lower on <1%: the largest p decides (IUT)
        g, lo, hi, p = max(gains, key=lambda x: (np.nan_to_num(x[3], nan=2.0), -np.nan_to_num(x[0])))
    else:
        g = lo = hi = p = math.nan
    claim = {"claim": "small lesions are harder (Dice on <1% cases lower than on 1-5% and >5%)", "gain": g,
             "ci_low": lo, "ci_high": hi, "p_value": p,
             "note": next((r["note"] for r in per_loss if r["note"]), ""), "would_take": ""}
    return claim, per_loss


# --------------------------------------------------------------------------- the design table

def design_rows(comparisons, detect=None, alpha=ALPHA):
    """Per metric, over the pairs of trained losses: the seeds and cases, the variance components
    (the mean over the pairs), the minimum detectable difference at Holm's first step, and the
    seeds (or cases) a named difference needs (SPEC 10)."""
    detect = {**DETECT, **(detect or {})}
    out = []
    for metric in METRICS:
        pairs = [c for c in comparisons if c["metric"] == metric and c["family"] == "losses" and c["n"] >= 2]
        if not pairs:
            continue
        comp = {x: float(np.nanmean([c[f"var_{x}"] for c in pairs])) if any(
            math.isfinite(c[f"var_{x}"]) for c in pairs) else math.nan for x in ("seed", "case", "residual")}
        seeds, cases = max(c["seeds"] for c in pairs), min(c["n"] for c in pairs)
        row = {"metric": metric, "pairs": len(pairs), "seeds": seeds, "cases": cases, "var_seed": comp["seed"],
               "var_case": comp["case"], "var_residual": comp["residual"]}
        row.update(design({**row, "n": cases}, detect[metric], alpha / len(pairs)))
        out.append(row)
    return out


def group_cases(rows):
    """{group: its cases} over the lesion-burden groups that have cases."""
    groups = {r["case"]: r.get("burden_group", "") for r in rows}
    return {g: {c for c, x in groups.items() if x == g} for g in GROUPS if g in groups.values()}
