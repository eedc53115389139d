"""The cross-validated study (SPEC 10): which loss, and can the answer be trusted?

    python hie_ref.py study --folds 5 --seeds 3 [--epochs 100] [--losses ...] [--out runs/study-cv]
    torchrun --nproc_per_node 8 hie_ref.py study --folds 5 --seeds 3          # one node, 8 processes or GPUs

All labelled cases (train and val pooled) are cut into K folds by case, stratified by
lesion volume (lesion-free cases included), the same folds for every loss and seed
(folds.csv). Each (loss, seed, fold) is one train.py run in OUT/runs/LOSS/seedS/foldF/,
trained on the other folds and early-stopped on fold F, which its best checkpoint then
predicts, in each case's own geometry: every case is predicted once per (loss, seed) by a
model that did not train on it. The organisers' baseline, raw ZADC < -2, is scored beside
as the loss `zadc_threshold`.

Reported in OUT: cases.csv (a row per loss, seed and case), summary.csv (mean, std and a
95% bootstrap CI over cases per loss), comparisons.csv (every pair of losses, paired over
(seed, case): mean difference with a 95% bootstrap CI, the two-sided Wilcoxon signed-rank
p-value and its Holm correction across the pairs of a metric), study.md and study.png.

A study is a set of independent runs: under torchrun each rank takes every WORLD_SIZE-th
run (on CUDA, the GPU of its LOCAL_RANK), rank 0 waits for all (gloo) and writes the
report. Rerunning skips finished runs (checked by their settings) and resumes killed ones.
"""
import csv
import itertools
import math
import os
from pathlib import Path

import numpy as np
import torch

import data
import hie_ref
import train
from metrics import summarize
from train import UsageError, log

BASELINE = "zadc_threshold"
METRICS = ("dice", "msd", "nsd")
HIGHER_IS_BETTER = {"dice": True, "msd": False, "nsd": True}
CASE_COLUMNS = ("loss", "seed", "fold", "case", "dice", "msd", "nsd", "challenge_msd", "challenge_nsd", "pred_voxels",
                "target_voxels")
BOOTSTRAP = 2000


# --------------------------------------------------------------------------- folds

def labelled_cases(root):
    """Every case of the train and val splits, pooled (a case id may appear once)."""
    cases, problems = {}, []
    for split in train.splits(root):
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
    tmp = out / "folds" / f".fold{fold}.{os.getpid()}.tmp"
    for case in cases:
        split = data.SPLITS[1] if folds[case.base] == fold else data.SPLITS[0]
        for kind in ("adc", "zadc", "label"):
            source = Path(getattr(case, kind)).resolve()
            link = tmp / split / data.FOLDERS[kind] / source.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
    os.replace(tmp, root)
    return root


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
        hie_ref.write_csv(path, rows, ["case", "fold", "lesion_mm3"])


# --------------------------------------------------------------------------- one run

def run_dir(out, loss, seed, fold):
    return out / "runs" / loss / f"seed{seed}" / f"fold{fold}"


def train_args(a, loss, seed, fold_root, out_dir, device):
    argv = ["--loss", loss, "--data", str(fold_root), "--out", str(out_dir), "--epochs", str(a.epochs),
            "--seed", str(seed), "--device", device, "--cache", str(a.cache), "--workers", str(a.workers)]
    argv += ["--size", *map(str, a.size)] if a.size else []
    argv += ["--patience", str(a.patience)] if a.patience else []
    argv += ["--amp"] if a.amp else []
    argv += ["--augment", a.augment] if a.augment else []
    return train.parser().parse_args(argv)


def train_and_predict(a, loss, seed, fold, fold_root, device):
    """Train (or reuse, or resume) one run and score its held-out fold; returns the rows,
    also kept in the run directory's cv_cases.csv."""
    out_dir = run_dir(a.out, loss, seed, fold)
    args = train_args(a, loss, seed, fold_root, out_dir, device)
    _, wanted = train.plan(args)
    reason = hie_ref.reuse_problem(out_dir, wanted, False)
    done = out_dir / "cv_cases.csv"
    if reason is None and done.exists():
        log(f"{loss} seed {seed} fold {fold}: done earlier, reusing {train.shown(out_dir)}")
        return read_rows(done)
    if reason is not None:
        if (out_dir / "last.pt").exists() and not train.config_differences(
                train.load_checkpoint(out_dir / "last.pt")["config"], wanted):
            log(f"{loss} seed {seed} fold {fold}: resuming {train.shown(out_dir)}")
            args.resume = True
        else:
            log(f"{loss} seed {seed} fold {fold}: training ({reason})")
            args.force = True
        train.run(args)
    else:
        log(f"{loss} seed {seed} fold {fold}: trained earlier, predicting its fold")
    scores = hie_ref.evaluate_checkpoint(out_dir / "best.pt", fold_root, "val", tolerance=a.tolerance,
                                         device=device, cache=a.cache, styles=(a.surfaces, "challenge"))
    rows = [case_row(loss, seed, fold, r, c) for r, c in zip(scores[a.surfaces][0], scores["challenge"][0])]
    hie_ref.write_csv(done, rows, CASE_COLUMNS)
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
        r = hie_ref.score_case(mask, label, geometry.spacing, tolerance, surfaces)
        c = hie_ref.score_case(mask, label, geometry.spacing, tolerance, "challenge")
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


def ranked(values, worst):
    """MSD's inf (a missed lesion) as ``worst``: above every finite MSD of the study, so
    that it ranks worse than any, in the tests and the intervals alike."""
    return np.where(np.isinf(values), worst, values)


def bootstrap_ci(values, groups, seed=0):
    """95% percentile interval of the mean of ``values``, resampling the groups (cases)."""
    values, groups = np.asarray(values, float), np.asarray(groups)
    names, index = np.unique(groups, return_inverse=True)
    sums, counts = np.bincount(index, values), np.bincount(index)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), (BOOTSTRAP, len(names)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


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


def holm(p_values):
    """Holm's step-down correction of a list of p-values (NaN stays NaN)."""
    p = np.asarray(p_values, float)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok])]
    out = np.full(p.shape, math.nan)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p[j]))
        out[j] = running
    return out.tolist()


def wilcoxon_p(a, b):
    """Two-sided Wilcoxon signed-rank p-value (scipy's defaults); NaN when every pair ties."""
    from scipy.stats import wilcoxon
    if np.all(a == b):
        return math.nan
    return float(wilcoxon(a, b).pvalue)


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
    fmt = hie_ref.fmt
    lines = [f"# Cross-validated study: {k} folds x {len(seeds)} seed(s), {len(losses) - 1} losses and the ZADC < -2 "
             f"baseline", "",
             f"Every case predicted once per (loss, seed) by the model that did not train on it; metrics in each "
             f"case's own geometry on {a.surfaces} surfaces, the challenge evaluator's MASD and NSD beside. "
             f"Means over (seed, case) rows, 95% bootstrap CIs over cases.", "",
             "| loss | n | Dice [95% CI] | MSD mm [95% CI] | NSD [95% CI] | challenge MASD | challenge NSD | empty pred |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        cell = lambda m: f"{fmt(s[m + '_mean'])} [{fmt(s[m + '_ci_low'])}, {fmt(s[m + '_ci_high'])}]"
        lines.append(f"| {s['loss']} | {s['n']} | {cell('dice')} | {cell('msd')} | {cell('nsd')} | "
                     f"{fmt(s['challenge_msd_mean'])} | {fmt(s['challenge_nsd_mean'])} | {s['empty_pred']} |")
    found = sentences(comparisons)
    lines += ["", "## Significant differences (Wilcoxon signed-rank, paired over (seed, case), Holm-corrected, "
              "p_holm < 0.05; the winner by the mean difference, with its 95% bootstrap CI)", ""] + (found or ["- none: no pair of losses differs beyond what these cases can show"])
    lines += ["", f"An infinite MSD (a missed lesion) is counted as {worst:.3f} mm, above every finite MSD of the "
              f"study, in the MSD comparisons: it ranks worse than any finite one."]
    if seconds is not None:
        lines += ["", f"Wall time: {seconds:.0f} s."]
    hie_ref.write_csv(a.out / "cases.csv", rows, CASE_COLUMNS)
    hie_ref.write_csv(a.out / "summary.csv", summary, list(summary[0]))
    hie_ref.write_csv(a.out / "comparisons.csv", comparisons, ["loss_a", "loss_b", "metric", "n", "mean_diff", "ci_low",
                                                               "ci_high", "p_value", "p_holm"])
    plot(a.out / "study.png", rows, order)
    train.write_text(a.out / "study.md", "\n".join(lines) + "\n")           # last: its presence means complete
    log("\n".join(lines))


def plot(path, rows, order):
    """Per-case Dice of each loss (mean over seeds): a box and the points, best mean first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per_loss = []
    for loss in order:
        values = {}
        for r in rows:
            if r["loss"] == loss:
                values.setdefault(r["case"], []).append(r["dice"])
        per_loss.append([np.mean(v) for v in values.values()])
    fig, ax = plt.subplots(figsize=(1.3 * len(order) + 1.5, 3.6))
    ax.boxplot(per_loss, showfliers=False)
    rng = np.random.default_rng(0)
    for i, v in enumerate(per_loss, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=9, alpha=0.6)
    ax.set_xticks(range(1, len(order) + 1), [o.replace("_", "-") for o in order], rotation=30, fontsize=8)
    ax.set_ylabel("per-case Dice (mean over seeds)")
    ax.set_title("Cross-validated study: losses ordered by mean Dice", fontsize=9)
    fig.tight_layout()
    train.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


# --------------------------------------------------------------------------- the command

def world():
    """(rank, world size), joining the torchrun process group when there is one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return int(os.environ.get("RANK", "0")), size


def rank_device(name):
    if name == "auto" and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return hie_ref.resolve_device(name)


def check(a, cases):
    if a.folds < 2:
        raise UsageError(f"--folds: expected at least 2 (each fold is predicted by a model trained on the others), "
                         f"got {a.folds}")
    if a.folds > len(cases):
        raise UsageError(f"--folds {a.folds}: expected at most as many folds as labelled cases, got {len(cases)} cases")
    if a.seeds < 1:
        raise UsageError(f"--seeds: expected a positive number of seeds, got {a.seeds}")


def run(a):
    import time
    start = time.perf_counter()
    rank, size = world()
    root = a.data or train.default_data(*_synthetic_counts(a))
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
    train.apply_profile(probe, torch.device(hie_ref.resolve_device(a.device)))
    return probe.synthetic_train, probe.synthetic_val
