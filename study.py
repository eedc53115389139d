"""The studies: the paper's Table 1 (SPEC 7) and the cross-validated study (SPEC 10).

    python hie_ref.py study [--epochs 100]                                  # Table 1: six runs, the val split
    python hie_ref.py study --folds 5 --seeds 3 [--epochs 100]              # cross-validated
    torchrun --nproc_per_node 8 hie_ref.py study --folds 5 --seeds 3        # one node, 8 processes or GPUs

Both are sets of train.py runs built by one function (``run_args``) and kept by one
policy (``ensure_run``): a finished run with the same settings is reused, an unfinished
one with the same settings resumes from last.pt, anything else is retrained, and the log
says why.

Table 1: each loss trained on the train split and scored on the val split, beside the
paper's numbers (PAPER_TABLE1).

Cross-validated: all labelled cases (train and val pooled) are cut into K folds by case,
stratified by lesion volume (lesion-free cases included), the same folds for every loss
and seed (folds.csv). Each (loss, seed, fold) is one run in OUT/runs/LOSS/seedS/foldF/,
trained on the other folds and early-stopped on fold F, which its best checkpoint then
predicts, in each case's own geometry: every case is predicted once per (loss, seed) by a
model that did not train on it. The organisers' baseline, raw ZADC < -2, is scored beside
as the loss `zadc_threshold`. Reported in OUT: cases.csv (a row per loss, seed and case),
summary.csv (mean, std and a 95% bootstrap CI over cases per loss), comparisons.csv (every
pair of losses: mean difference with a 95% bootstrap CI, the two-sided Wilcoxon signed-rank
p-value and its Holm correction across the pairs of a metric), study.md and study.png.
Under torchrun each rank takes every WORLD_SIZE-th run (on CUDA, the GPU of its
LOCAL_RANK), rank 0 waits for all (gloo) and writes the report.
"""
import csv
import itertools
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

import data
import train
from evaluate import evaluate_checkpoint, load_checkpoint, pick_device, score_case
from figures import dice_plot
from plumbing import UsageError, atomic_dir, fmt, log, shown, write_csv, write_text
from stats import bootstrap_ci, holm, ranked, wilcoxon_p
from synthetic import default_data

# The paper's Table 1 (means over the 4 BONBID-HIE validation cases, on the 192x192x32 grid).
PAPER_TABLE1 = {
    "dice": (0.3800, 15.0650, 0.3850, 32),
    "dice_focal": (0.4900, 1.7925, 0.5275, 49),
    "tversky": (0.3525, 15.3650, 0.3375, 38),
    "hdt": (0.3300, float("inf"), 0.2800, 29),
    "dice_focal_hdt": (0.4925, 1.4225, 0.5300, 72),
    "tversky_hdt": (0.5000, 1.6250, 0.5325, 59),
}
BASELINE = "zadc_threshold"
METRICS = ("dice", "msd", "nsd")
HIGHER_IS_BETTER = {"dice": True, "msd": False, "nsd": True}
CASE_COLUMNS = ("loss", "seed", "fold", "case", "dice", "msd", "nsd", "challenge_msd", "challenge_nsd", "pred_voxels",
                "target_voxels")
# Settings a reused run may differ in: where things are and how fast, not what is trained.
MAY_DIFFER = {"out", "cache", "device", "workers", "resume", "force"}


# --------------------------------------------------------------------------- one run: settings and reuse

def run_args(a, loss, seed, root, out_dir, device):
    """train.py's arguments for one run of the study ``a`` (root None: the default data)."""
    argv = ["--loss", loss, "--out", str(out_dir), "--epochs", str(a.epochs), "--seed", str(seed),
            "--device", str(device), "--cache", str(a.cache), "--workers", str(a.workers)]
    argv += ["--data", str(root)] if root else []
    argv += ["--size", *map(str, a.size)] if a.size else []
    argv += ["--patience", str(a.patience)] if a.patience else []
    argv += ["--amp"] if a.amp else []
    argv += ["--augment", a.augment] if a.augment else []
    return train.parser().parse_args(argv)


def reuse_problem(run_dir, wanted):
    """None when ``run_dir`` holds a finished run with the settings ``wanted``; else why not."""
    if not (run_dir / "summary.json").exists():
        return f"no finished run in {shown(run_dir)}"
    saved = json.loads((run_dir / "config.json").read_text())
    diff = train.config_differences(saved, wanted, MAY_DIFFER)
    return f"the run in {shown(run_dir)} differs: {'; '.join(diff)}" if diff else None


def ensure_run(args, what, force=False):
    """Make sure ``args.out`` holds the finished run ``args`` asks for: reuse it, resume it
    (unfinished, same settings) or retrain it, saying which and why. True if it trained."""
    _, wanted = train.plan(args)
    reason = "--force" if force else reuse_problem(args.out, wanted)
    if reason is None:
        log(f"{what}: trained earlier with these settings, reusing {shown(args.out)}")
        return False
    last = args.out / "last.pt"
    if not force and not (args.out / "summary.json").exists() and last.exists() \
            and not train.config_differences(load_checkpoint(last)["config"], wanted):
        log(f"{what}: resuming {shown(args.out)}")
        args.resume = True
    else:
        log(f"{what}: training ({reason})")
        args.force = True
    train.run(args)
    return True


# --------------------------------------------------------------------------- Table 1

def table1(a):
    """Train (or reuse) each loss of ``a.losses`` and write Table 1 beside the paper's."""
    out = a.out
    device = pick_device(a.device)
    table = []
    for name in a.losses:
        args = run_args(a, name, a.seed, a.data, out / name, a.device)
        ensure_run(args, name, a.force)
        summary = json.loads((out / name / "summary.json").read_text())
        root = a.data or Path(json.loads((out / name / "config.json").read_text())["data"])
        styles = tuple(dict.fromkeys((a.surfaces, "challenge")))
        scores = evaluate_checkpoint(out / name / "best.pt", root, "val", a.grid, a.tolerance, device,
                                     cache=a.cache, styles=styles)
        s, c = scores[a.surfaces][1], scores["challenge"][1]
        paper = PAPER_TABLE1[name]
        table.append({"loss": name, "dice": s["dice"]["mean"], "msd": s["msd"]["mean"], "nsd": s["nsd"]["mean"],
                      "challenge_msd": c["msd"]["mean"], "challenge_nsd": c["nsd"]["mean"],
                      "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
                      "paper_dice": paper[0], "paper_msd": paper[1], "paper_nsd": paper[2], "paper_epochs": paper[3]})
    write_csv(out / "table1.csv", table, list(table[0]))
    where = "the preprocessing grid" if a.grid else "each case's native geometry"
    lines = [f"Table 1, reproduced: mean over the validation cases, metrics in {where}, on {a.surfaces} surfaces, "
             f"and the challenge evaluator's MASD and NSD (NaN cases left out) (ours), beside the paper's "
             f"(BONBID-HIE, 4 validation cases, on the grid, voxel surfaces).", "",
             "| loss | Dice | MSD (mm) | NSD | challenge MASD | challenge NSD | epochs (best) | paper Dice | paper MSD "
             "| paper NSD | paper epochs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v: fmt(float(v), 4)
    for r in table:
        lines.append(f"| {r['loss']} | {f(r['dice'])} | {f(r['msd'])} | {f(r['nsd'])} | {f(r['challenge_msd'])} "
                     f"| {f(r['challenge_nsd'])} | {r['epochs']} ({r['best_epoch']}) | {f(r['paper_dice'])} "
                     f"| {f(r['paper_msd'])} | {f(r['paper_nsd'])} | {r['paper_epochs']} |")
    write_text(out / "table1.md", "\n".join(lines) + "\n")
    log("\n".join(lines))
    log(f"-> {shown(out / 'table1.md')}, {shown(out / 'table1.csv')}")


# --------------------------------------------------------------------------- folds

def labelled_cases(root):
    """Every case of the train and val splits, pooled (a case id may appear once)."""
    cases, problems = {}, []
    for split in data.train_val_dirs(root):
        for case in data.discover(split):
            if case.base in cases:
                problems.append(f"{case.base}: in both splits")
            cases[case.base] = case
    if problems:
        raise data.DataError(data.report(root, problems))
    return [cases[k] for k in sorted(cases)]


def lesion_volume(case):
    """Lesion volume in mm^3 of a case's label file."""
    label, geometry = data.read_image(case.label)
    return float(np.count_nonzero(label) * np.prod(geometry.spacing))


def assign_folds(volumes, k):
    """{case: fold}: cases ordered by lesion volume (lesion-free first, ties by id) and dealt
    round-robin, so that each fold gets small, large and lesion-free cases alike."""
    order = sorted(volumes, key=lambda c: (volumes[c], c))
    return {case: i % k for i, case in enumerate(order)}


def fold_dataset(out, cases, folds, fold):
    """OUT/folds/foldF/: a BONBID-HIE root whose train split is the other folds and whose
    val split is fold F, as symbolic links to the case files (made once, atomically)."""
    root = out / "folds" / f"fold{fold}"
    if root.is_dir():
        return root

    def link(tmp):
        for case in cases:
            split = data.SPLITS[1] if folds[case.base] == fold else data.SPLITS[0]
            for kind in ("adc", "zadc", "label"):
                source = Path(getattr(case, kind)).resolve()
                target = tmp / split / data.FOLDERS[kind] / source.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source)
    return atomic_dir(root, link)


def write_folds(out, folds, volumes, write=True):
    """folds.csv, or (``write=False``, other ranks) only the check that an existing one agrees."""
    path = out / "folds.csv"
    rows = [{"case": c, "fold": f, "lesion_mm3": f"{volumes[c]:.1f}"} for c, f in sorted(folds.items())]
    if path.exists():
        with open(path) as fh:
            old = {r["case"]: int(r["fold"]) for r in csv.DictReader(fh)}
        if old != folds:
            raise UsageError(f"{path}: this study's folds differ from the ones for the data and --folds asked "
                             f"(another dataset or K?); use another --out")
        return
    if write:
        write_csv(path, rows, ["case", "fold", "lesion_mm3"])


# --------------------------------------------------------------------------- one cross-validation run

def run_dir(out, loss, seed, fold):
    return out / "runs" / loss / f"seed{seed}" / f"fold{fold}"


def train_and_predict(a, loss, seed, fold, fold_root, device):
    """Train (or reuse, or resume) one run and score its held-out fold; returns the rows,
    also kept in the run directory's cv_cases.csv."""
    out_dir = run_dir(a.out, loss, seed, fold)
    args = run_args(a, loss, seed, fold_root, out_dir, device)
    what, done = f"{loss} seed {seed} fold {fold}", out_dir / "cv_cases.csv"
    if done.exists() and reuse_problem(out_dir, train.plan(args)[1]) is None:
        log(f"{what}: done earlier, reusing {shown(out_dir)}")
        return read_rows(done)
    ensure_run(args, what)
    scores = evaluate_checkpoint(out_dir / "best.pt", fold_root, "val", tolerance=a.tolerance,
                                 device=device, cache=a.cache, styles=(a.surfaces, "challenge"))
    rows = [case_row(loss, seed, fold, r, c) for r, c in zip(scores[a.surfaces][0], scores["challenge"][0])]
    write_csv(done, rows, CASE_COLUMNS)
    return rows


def case_row(loss, seed, fold, scores, challenge):
    return {"loss": loss, "seed": seed, "fold": fold, "case": scores["case"], "dice": scores["dice"],
            "msd": scores["msd"], "nsd": scores["nsd"], "challenge_msd": challenge["msd"],
            "challenge_nsd": challenge["nsd"], "pred_voxels": scores["pred_voxels"],
            "target_voxels": scores["target_voxels"]}


def baseline_rows(cases, folds, seeds, surfaces, tolerance):
    """The organisers' baseline, raw ZADC < -2 (no training), in each case's own geometry;
    the same rows for every seed, so that it pairs with each loss's."""
    rows = []
    for case in cases:
        zadc, geometry = data.read_image(case.zadc)
        label = data.read_image(case.label)[0]
        mask = zadc < -2
        r = score_case(mask, label, geometry.spacing, tolerance, surfaces)
        c = score_case(mask, label, geometry.spacing, tolerance, "challenge")
        for seed in seeds:
            rows.append(case_row(BASELINE, seed, folds[case.base], {"case": case.base, **r}, c))
    return rows


def read_rows(path):
    with open(path) as fh:
        return [{k: (int(v) if k in ("seed", "fold", "pred_voxels", "target_voxels") else v if k in ("loss", "case")
                     else float(v))
                 for k, v in r.items()} for r in csv.DictReader(fh)]


# --------------------------------------------------------------------------- statistics

def by_case(rows, metric):
    """{(seed, case): value} of one loss's rows."""
    return {(r["seed"], r["case"]): r[metric] for r in rows}


def summary_rows(rows, losses):
    out = []
    for loss in losses:
        mine = [r for r in rows if r["loss"] == loss]
        row = {"loss": loss, "n": len(mine), "empty_pred": 0}
        for m in METRICS + ("challenge_msd", "challenge_nsd"):
            v = np.array([r[m] for r in mine], float)
            keep = ~np.isnan(v)                         # the challenge's NaN MSD: left out
            v, cases = v[keep], np.array([r["case"] for r in mine])[keep]
            finite = np.isfinite(v).all()
            row[f"{m}_mean"] = float(v.mean()) if finite else math.inf
            row[f"{m}_std"] = float(v.std()) if finite else math.inf
            low, high = bootstrap_ci(v, cases) if finite and len(v) else (math.inf, math.inf)
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = low, high
        row["empty_pred"] = sum(1 for r in mine if r["pred_voxels"] == 0)
        out.append(row)
    return out


def comparison_rows(rows, losses):
    """Every pair of losses, each metric: paired over (seed, case)."""
    finite_msd = [r["msd"] for r in rows if math.isfinite(r["msd"])]
    worst = (max(finite_msd) if finite_msd else 0.0) + 1.0
    out = []
    for metric in METRICS:
        block = []
        for a, b in itertools.combinations(losses, 2):
            va, vb = by_case([r for r in rows if r["loss"] == a], metric), by_case([r for r in rows if r["loss"] == b], metric)
            keys = sorted(set(va) & set(vb))
            x, y = np.array([va[k] for k in keys], float), np.array([vb[k] for k in keys], float)
            if metric == "msd":
                x, y = ranked(x, worst), ranked(y, worst)
            diff = x - y
            low, high = bootstrap_ci(diff, [k[1] for k in keys])
            block.append({"loss_a": a, "loss_b": b, "metric": metric, "n": len(keys), "mean_diff": float(diff.mean()),
                          "ci_low": low, "ci_high": high, "p_value": wilcoxon_p(x, y)})
        for row, p in zip(block, holm([r["p_value"] for r in block])):
            row["p_holm"] = p
        out += block
    return out, worst


# --------------------------------------------------------------------------- report

def sentences(comparisons, alpha=0.05):
    """The significant differences, in words."""
    names = {"dice": "Dice", "msd": "MSD", "nsd": "NSD"}
    out = []
    for c in comparisons:
        if not c["p_holm"] < alpha:
            continue
        better_a = (c["mean_diff"] > 0) == HIGHER_IS_BETTER[c["metric"]]
        winner, loser = (c["loss_a"], c["loss_b"]) if better_a else (c["loss_b"], c["loss_a"])
        sign = (1 if better_a else -1) * (1 if HIGHER_IS_BETTER[c["metric"]] else -1)    # the winner's gain > 0
        lo, hi = sorted((sign * c["ci_low"], sign * c["ci_high"]))
        unit = " mm" if c["metric"] == "msd" else ""
        out.append(f"- {winner} beats {loser} on {names[c['metric']]} by {sign * c['mean_diff']:.3f}{unit} "
                   f"[{lo:.3f}, {hi:.3f}], p_holm = {c['p_holm']:.3g}")
    return out


def write_report(a, rows, losses, k, seeds, seconds=None):
    order = sorted(losses, key=lambda l: -np.mean([r["dice"] for r in rows if r["loss"] == l]))
    summary = summary_rows(rows, order)
    comparisons, worst = comparison_rows(rows, order)
    lines = [f"# Cross-validated study: {k} folds x {len(seeds)} seed(s), {len(losses) - 1} losses and the ZADC < -2 "
             f"baseline", "",
             f"Every case predicted once per (loss, seed) by the model that did not train on it; metrics in each "
             f"case's own geometry on {a.surfaces} surfaces, the challenge evaluator's MASD and NSD beside. "
             f"Means over (seed, case) rows, 95% bootstrap CIs over cases.", "",
             "| loss | n | Dice [95% CI] | MSD mm [95% CI] | NSD [95% CI] | challenge MASD | challenge NSD | empty pred |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        cell = lambda m: f"{fmt(s[m + '_mean'], 4)} [{fmt(s[m + '_ci_low'], 4)}, {fmt(s[m + '_ci_high'], 4)}]"
        lines.append(f"| {s['loss']} | {s['n']} | {cell('dice')} | {cell('msd')} | {cell('nsd')} | "
                     f"{fmt(s['challenge_msd_mean'], 4)} | {fmt(s['challenge_nsd_mean'], 4)} | {s['empty_pred']} |")
    found = sentences(comparisons)
    lines += ["", "## Significant differences (Wilcoxon signed-rank, paired over (seed, case), Holm-corrected, "
              "p_holm < 0.05; the winner by the mean difference, with its 95% bootstrap CI)", ""] + (found or ["- none: no pair of losses differs beyond what these cases can show"])
    lines += ["", f"An infinite MSD (a missed lesion) is counted as {worst:.3f} mm, above every finite MSD of the "
              f"study, in the MSD comparisons: it ranks worse than any finite one."]
    if seconds is not None:
        lines += ["", f"Wall time: {seconds:.0f} s."]
    write_csv(a.out / "cases.csv", rows, CASE_COLUMNS)
    write_csv(a.out / "summary.csv", summary, list(summary[0]))
    write_csv(a.out / "comparisons.csv", comparisons, ["loss_a", "loss_b", "metric", "n", "mean_diff", "ci_low",
                                                       "ci_high", "p_value", "p_holm"])
    dice_plot(a.out / "study.png", rows, order)
    write_text(a.out / "study.md", "\n".join(lines) + "\n")           # last: its presence means complete
    log("\n".join(lines))


# --------------------------------------------------------------------------- the command

def world():
    """(rank, world size), joining the torchrun process group when there is one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return int(os.environ.get("RANK", "0")), size


def rank_device(name):
    """This rank's device: with "auto" on CUDA, the GPU of its LOCAL_RANK."""
    if name == "auto" and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return pick_device(name)


def check(a, cases):
    if a.folds < 2:
        raise UsageError(f"--folds: expected at least 2 (each fold is predicted by a model trained on the others), "
                         f"got {a.folds}")
    if a.folds > len(cases):
        raise UsageError(f"--folds {a.folds}: expected at most as many folds as labelled cases, got {len(cases)} cases")
    if a.seeds < 1:
        raise UsageError(f"--seeds: expected a positive number of seeds, got {a.seeds}")


def cross_validate(a):
    """The cross-validated study (SPEC 10) of ``a`` (the study command's settings)."""
    start = time.perf_counter()
    rank, size = world()
    root = a.data or default_data(*_synthetic_counts(a))
    cases = labelled_cases(root)
    check(a, cases)
    seeds = list(range(a.seed, a.seed + a.seeds))
    volumes = {c.base: lesion_volume(c) for c in cases}
    folds = assign_folds(volumes, a.folds)
    a.out.mkdir(parents=True, exist_ok=True)
    write_folds(a.out, folds, volumes, write=rank == 0)         # every rank refuses foreign folds alike
    if rank == 0:
        (a.out / "study.md").unlink(missing_ok=True)             # a report is complete only when rewritten
    roots = {f: fold_dataset(a.out, cases, folds, f) for f in range(a.folds)} if rank == 0 else None
    if size > 1:
        torch.distributed.barrier()
        roots = {f: a.out / "folds" / f"fold{f}" for f in range(a.folds)}
    device = rank_device(a.device)
    jobs = list(itertools.product(a.losses, seeds, range(a.folds)))
    failure = None
    try:
        for loss, seed, fold in jobs[rank::size]:
            train_and_predict(a, loss, seed, fold, roots[fold], device)
    except (UsageError, data.DataError, FloatingPointError) as e:
        failure = f"rank {rank}: {e}"
    if size > 1:
        failures = [None] * size
        torch.distributed.all_gather_object(failures, failure)
        failures = [f for f in failures if f]
        torch.distributed.destroy_process_group()
    else:
        failures = [failure] if failure else []
    if failures:
        raise UsageError("; ".join(failures) + " (no report written; rerun to resume)")
    if rank != 0:
        return
    rows = [r for loss, seed, fold in jobs for r in read_rows(run_dir(a.out, loss, seed, fold) / "cv_cases.csv")]
    rows += baseline_rows(cases, folds, seeds, a.surfaces, a.tolerance)
    losses = list(a.losses) + [BASELINE]
    write_report(a, rows, losses, a.folds, seeds, time.perf_counter() - start)


def _synthetic_counts(a):
    """The synthetic set the runs would use by default (the CPU demo's or the paper's)."""
    probe = train.parser().parse_args(["--loss", a.losses[0], "--device", a.device]
                                      + (["--size", *map(str, a.size)] if a.size else []))
    train.apply_profile(probe, pick_device(a.device))
    return probe.synthetic_train, probe.synthetic_val
