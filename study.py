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
stratified by lesion volume and drawn per seed (folds.py; losses with the same seed share
them). Each (loss, seed, fold) is one run in OUT/runs/LOSS/seedS/foldF/, trained on the
other folds and early-stopped on fold F, which its best checkpoint then predicts, in each
case's own geometry: every case is predicted once per (loss, seed) by a model that did not
train on it. The organisers' baseline, raw ZADC < -2, is scored beside as the loss
`zadc_threshold`. The report (report.py, verdicts.py: the calibrated GPQ test over seeds and
cases, its families, the claims, what the design can detect) opens with what was run
(provenance.py: the command, the commit, the wall time over resumes).
Under torchrun each rank takes every WORLD_SIZE-th run (on CUDA, the GPU of its
LOCAL_RANK modulo the GPUs: more processes than GPUs share them), rank 0 waits for all
(polling files) and writes the report.

The statistics, the claims, torchrun and SLURM: docs/study.md.
"""
import datetime
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

import data
import train
from checkpoints import config_differences, load_checkpoint
from devices import pick_device
from folds import assign_folds, fold_dataset, fold_root, labelled_cases, lesion_volume, write_folds
from evaluate import (LESION_COLUMNS, SUMMARIZED, case_probabilities, lesion_scores, mask_files, msd_cap, post_name,
                      post_process, read_mask, score_case, score_styles, style_of)
from lesions import burden
from metrics import summarize
from plumbing import UsageError, fmt, log, report, shown, write_csv, write_text
from provenance import Clock, git_commit
from report import CASE_COLUMNS, read_rows, write_report
from synthetic import default_data, synthetic_root
from user_losses import loss_name, run_name
from verdicts import DETECT

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
TABLE1_LESION = ("lesion_sensitivity", "lesion_f1", "false_lesions", "cc_dice")
# Settings a reused run may differ in: where things are and how fast, not what is trained.
MAY_DIFFER = {"out", "cache", "device", "workers", "resume", "force", "cpu_demo", "paper"}


# --------------------------------------------------------------------------- one run: settings and reuse

def run_args(a, loss, seed, root, out_dir, device):
    """train.py's arguments for one run of the study ``a`` (root None: the default data). A
    study of the synthetic default on a CPU (no --data, no --size) trains the CPU demo
    profile, as train.py would, also on its fold datasets (which reach train.py as --data)."""
    argv = ["--loss", loss, "--out", str(out_dir), "--epochs", str(a.epochs), "--seed", str(seed),
            "--device", str(device), "--cache", str(a.cache), "--workers", str(a.workers)]
    default_demo = a.data is None and a.size is None and pick_device(str(device)).type != "cuda"
    argv += ["--cpu-demo"] if getattr(a, "cpu_demo", False) or default_demo else []
    argv += ["--data", str(root)] if root else []
    argv += ["--size", *map(str, a.size)] if a.size else []
    argv += ["--patience", str(a.patience)] if a.patience else []
    argv += ["--amp"] if a.amp else []
    argv += ["--augment", a.augment] if a.augment else []
    argv += ["--augment-space", a.augment_space]
    argv += ["--synthetic-train", str(a.synthetic_train)] if a.synthetic_train else []
    argv += ["--synthetic-val", str(a.synthetic_val)] if a.synthetic_val else []
    args = train.parser().parse_args(argv)
    if "--cpu-demo" in argv:                                                # the study's reason, not train.py's
        args.profile_reason = "study --cpu-demo" if getattr(a, "cpu_demo", False) else \
            "a study of the synthetic set on a CPU"
    return args


def reuse_problem(run_dir, wanted):
    """None when ``run_dir`` holds a finished run with the settings ``wanted``; else why not."""
    if not (run_dir / "summary.json").exists():
        return f"no finished run in {shown(run_dir)}"
    stopped = json.loads((run_dir / "summary.json").read_text()).get("stopped", "")
    if "became" in stopped:                        # a non-finite loss ended it: not a finished run
        return f"the run in {shown(run_dir)} stopped on a non-finite loss ({stopped.split(';')[0]})"
    saved = json.loads((run_dir / "config.json").read_text())
    diff = config_differences(saved, wanted, MAY_DIFFER)
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
            and not config_differences(load_checkpoint(last)["config"], wanted):
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
    table, cases = [], []
    for spec in a.losses:
        name, directory = loss_name(spec), out / run_name(spec)
        args = run_args(a, spec, a.seed, a.data, directory, a.device)
        ensure_run(args, name, a.force)
        summary = json.loads((directory / "summary.json").read_text())
        root = a.data or Path(json.loads((directory / "config.json").read_text())["data"])
        scored = score_run(a, directory / "best.pt", root, device, grid_only=a.grid)
        for variant, rows in scored.items():
            cases += [case_row(name + variant, a.seed, None, r, c) for r, c in rows]
            s, c = (summarize([pair[k] for pair in rows], SUMMARIZED) for k in (0, 1))
            paper = PAPER_TABLE1.get(name + variant, (math.nan, math.nan, math.nan, "-"))   # not in the paper: NaN
            table.append({"loss": name + variant, "dice": s["dice"]["mean"], "msd": s["msd"]["mean"],
                          "nsd": s["nsd"]["mean"], "challenge_msd": c["msd"]["mean"], "challenge_nsd": c["nsd"]["mean"],
                          **{m: s[m]["mean"] for m in TABLE1_LESION},
                          "epochs": summary["epochs"], "best_epoch": summary["best_epoch"], "paper_dice": paper[0],
                          "paper_msd": paper[1], "paper_nsd": paper[2], "paper_epochs": paper[3]})
    write_csv(out / "table1.csv", table, list(table[0]))
    write_csv(out / "table1_cases.csv", cases, CASE_COLUMNS)
    where = "the preprocessing grid" if a.grid else "each case's native geometry"
    unit = "voxels" if a.units == "voxel" else "mm"
    like = "like for like with the paper's" if a.grid and a.units == "voxel" else \
        "not like for like: hie_ref.py study --grid --units voxel is"
    lines = [f"Table 1, reproduced: mean over the validation cases, metrics in {where}, on {a.surfaces} surfaces, "
             f"distances and the NSD tolerance ({a.tolerance:g}) in {unit}, the challenge evaluator's "
             f"({a.challenge_version}) MASD and NSD (NaN cases left out) and the lesion-wise means (SPEC 6c; "
             f"sensitivity over the cases with a lesion) (ours), beside the paper's (BONBID-HIE, 4 validation cases, "
             f"on the 192x192x32 grid, voxel surfaces through MONAI, which measures in voxels unless given a spacing: "
             f"its MSD most likely in grid voxels, SPEC 6; {like}). Per case: table1_cases.csv.", "",
             f"| loss | Dice | MSD ({unit}) | NSD | challenge MASD | challenge NSD | lesion sens. | lesion F1 "
             "| false lesions | cc_dice | epochs (best) | paper Dice | paper MSD (grid voxels?) | paper NSD "
             "| paper epochs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v: fmt(float(v), 4)
    for r in table:
        lines.append(f"| {r['loss']} | {f(r['dice'])} | {f(r['msd'])} | {f(r['nsd'])} | {f(r['challenge_msd'])} "
                     f"| {f(r['challenge_nsd'])} | {f(r['lesion_sensitivity'])} | {f(r['lesion_f1'])} "
                     f"| {fmt(float(r['false_lesions']), 2)} | {f(r['cc_dice'])} | {r['epochs']} ({r['best_epoch']}) "
                     f"| {f(r['paper_dice'])} | {f(r['paper_msd'])} | {f(r['paper_nsd'])} | {r['paper_epochs']} |")
    write_text(out / "table1.md", "\n".join(lines) + "\n")
    log("\n".join(lines))
    log(f"-> {shown(out / 'table1.md')}, {shown(out / 'table1.csv')}")


# --------------------------------------------------------------------------- one cross-validation run

def run_dir(out, loss, seed, fold):
    return out / "runs" / loss / f"seed{seed}" / f"fold{fold}"


def variants(a):
    """[(name suffix, threshold, min_lesion)]: the raw masks, and the post-processed ones when
    --threshold or --min-lesion asks for them (SPEC 10: a row of their own per loss)."""
    suffix = post_name(a.threshold, a.min_lesion)
    return [("", 0.5, 0.0)] + ([(suffix, a.threshold, a.min_lesion)] if suffix else [])


def scored_as(a):
    """How a study's rows are scored: a run's cv_cases.csv scored otherwise is scored again."""
    return (f"{a.surfaces}+{style_of('challenge', a.challenge_version)}, tolerance {a.tolerance:g} "
            f"{'voxels' if a.units == 'voxel' else 'mm'}, lesions v2, msd cap: field of view, "
            f"distances as the EDT sums them"
            + "".join(name for name, _, _ in variants(a)))


def score_run(a, checkpoint, root, device, grid_only=False):
    """{variant suffix: [(study-surfaces row, challenge row)] per case} of one checkpoint on
    the val split of ``root``: each case predicted once, each variant's mask from that map."""
    styles = (a.surfaces, style_of("challenge", a.challenge_version))
    grid = _profile(a)[2]
    out = {name: [] for name, _, _ in variants(a)}
    for case, prob, label, spacing, value in case_probabilities(checkpoint, root, "val", grid_only, device, a.cache):
        for name, threshold, min_lesion in variants(a):
            rows = score_styles(case, post_process(prob, spacing, threshold, min_lesion), label, spacing, value, styles,
                                a.tolerance, a.units, grid)
            out[name].append((rows[styles[0]], rows[styles[1]]))
    return out


def train_and_predict(a, spec, seed, fold, fold_root, device):
    """Train (or reuse, or resume) one run and score its held-out fold (raw, and post-processed
    if asked); returns the rows, also kept in the run directory's cv_cases.csv."""
    loss = loss_name(spec)
    out_dir = run_dir(a.out, run_name(spec), seed, fold)
    args = run_args(a, spec, seed, fold_root, out_dir, device)
    what, done = f"{loss} seed {seed} fold {fold}", out_dir / "cv_cases.csv"
    if done.exists() and reuse_problem(out_dir, train.plan(args)[1]) is None:
        rows = read_rows(done)
        if rows and rows[0].get("scored") == scored_as(a):
            log(f"{what}: done earlier, reusing {shown(out_dir)}")
            return rows
        log(f"{what}: trained earlier, scoring it again ({scored_as(a)})")
    else:
        ensure_run(args, what)
    rows = [{**case_row(loss + name, seed, fold, r, c), "scored": scored_as(a)}
            for name, pairs in score_run(a, out_dir / "best.pt", fold_root, device).items() for r, c in pairs]
    write_csv(done, rows, CASE_COLUMNS + ("scored",))
    return rows


def case_row(loss, seed, fold, scores, challenge):
    """One row of cases.csv: the study's surfaces' metrics, the challenge's MASD and NSD, the lesion-wise values."""
    return {"loss": loss, "seed": seed, "fold": fold, "case": scores["case"], "dice": scores["dice"],
            "msd": scores["msd"], "nsd": scores["nsd"], "challenge_msd": challenge["msd"],
            "challenge_nsd": challenge["nsd"], "pred_voxels": scores["pred_voxels"],
            "target_voxels": scores["target_voxels"], "msd_cap": scores["msd_cap"],
            **{k: scores[k] for k in LESION_COLUMNS}}


def scored_row(name, case, fold, mask, label, spacing, a, burden_value, grid):
    """One deterministic row (no seed): a mask of ``case`` scored in the study's surfaces and the challenge's
    way; ``grid``: the grid the losses' models see (for the lesions' sizes in its voxels)."""
    r = score_case(mask, label, spacing, a.tolerance, a.surfaces, a.units)
    c = score_case(mask, label, spacing, a.tolerance, style_of("challenge", a.challenge_version), a.units)
    lesion = lesion_scores(mask, label, spacing, burden_value, grid)
    return case_row(name, None, fold, {"case": case, **r, **lesion, "msd_cap": msd_cap(label.shape, spacing, a.units)}, c)


def baseline_rows(cases, a):
    """The organisers' baseline, raw ZADC < -2 (no training), in each case's own geometry: one row per case."""
    rows, grid = [], _profile(a)[2]
    for case in cases:
        zadc, geometry = data.read_image(case.zadc)
        label = data.read_image(case.label)[0]
        rows.append(scored_row(BASELINE, case.base, None, zadc < -2, label, geometry.spacing, a,
                               burden(label, data.read_image(case.adc)[0]), grid))
    return rows


def compare_rows(name, directory, cases, a):
    """Any model's masks (--compare NAME=DIR), one per labelled case, named like the labels or by
    case id, scored like a loss's (the label's geometry, as the challenge's evaluator does: only
    the size must agree). Every missing, extra or misfit mask is named in one DataError."""
    masks, problems = mask_files(directory, f"--compare {name}=")
    labels = {c.base: c for c in cases}
    problems += [f"{c}: no mask (expected e.g. {c}_lesion.mha)" for c in sorted(set(labels) - set(masks))]
    problems += [f"{c}: a mask ({masks[c].name}) for no labelled case" for c in sorted(set(masks) - set(labels))]
    rows, grid = [], _profile(a)[2]
    for case in sorted(set(masks) & set(labels)):
        try:
            mask, _ = read_mask(masks[case])
            label, geometry = read_mask(labels[case].label)
        except ValueError as e:
            problems.append(f"{case}: {e}")
            continue
        if mask.shape != label.shape:
            problems.append(f"{case}: mask size {mask.shape} differs from its label's {label.shape}")
            continue
        rows.append(scored_row(name, case, None, mask, label, geometry.spacing, a,
                               burden(label, data.read_image(labels[case].adc)[0]), grid))
    if problems:
        raise data.DataError(report(f"--compare {name}={directory}", problems))
    return rows


def parse_compare(items, losses):
    """{NAME: DIR} of the --compare NAME=DIR flags; a bad or clashing name is a UsageError."""
    out = {}
    for item in items or []:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise UsageError(f"--compare {item!r}: expected NAME=DIR")
        if name in out or name in losses or name == BASELINE:
            raise UsageError(f"--compare {item}: the name {name!r} is taken (a loss, the baseline or another folder)")
        out[name] = Path(directory)
    return out


# --------------------------------------------------------------------------- the command

def world(wait_seconds):
    """(rank, world size): under torchrun, join its process group (gloo; ``wait_seconds`` is
    how long a rank may wait at the one barrier, while rank 0 prepares the data) and take
    the GPU of LOCAL_RANK."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=wait_seconds))
    if size > 1 and torch.cuda.is_available():
        torch.cuda.set_device(local_gpu())
    return int(os.environ.get("RANK", "0")), size


def local_gpu():
    """The GPU of this rank: LOCAL_RANK modulo the node's GPUs, so that more processes than
    GPUs share them (several small runs on one GPU: ``torchrun --nproc_per_node 4`` on one)."""
    return int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()


def rank_device(name):
    """This rank's device: with "auto" on CUDA, its GPU (``local_gpu``)."""
    if name == "auto" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_gpu()}")
    return pick_device(name)


def check(a, cases):
    if a.folds < 2:
        raise UsageError(f"--folds: expected at least 2 (each fold is predicted by a model trained on the others), "
                         f"got {a.folds}")
    if a.folds > len(cases):
        raise UsageError(f"--folds {a.folds}: expected at most as many folds as labelled cases, got {len(cases)} cases")
    if a.seeds < 1:
        raise UsageError(f"--seeds: expected a positive number of seeds, got {a.seeds}")


def _profile(a):
    """(synthetic train, synthetic val, grid) the runs would use by default (the CPU demo's or the paper's)."""
    probe = run_args(a, a.losses[0], a.seed, None, a.out, a.device)
    train.apply_profile(probe, pick_device(a.device))
    return probe.synthetic_train, probe.synthetic_val, tuple(probe.size)


def prepare(a, seeds):
    """Rank 0's part before any training: the default data, folds.csv (drawn per seed), the fold
    datasets and their preprocessing caches, a clean slate of done and failure markers."""
    n_train, n_val, grid = _profile(a)
    root = a.data or default_data(n_train, n_val)
    cases = labelled_cases(root)
    check(a, cases)
    volumes = {c.base: lesion_volume(c) for c in cases}
    folds = {seed: assign_folds(volumes, a.folds, seed) for seed in seeds}
    a.out.mkdir(parents=True, exist_ok=True)
    write_folds(a.out, folds, volumes)
    (a.out / "study.md").unlink(missing_ok=True)                 # a report is complete only when rewritten
    for marks in ("done", "failed"):
        shutil.rmtree(a.out / marks, ignore_errors=True)
    for seed in seeds:
        for f in range(a.folds):
            data.prepare_splits(fold_dataset(a.out, cases, folds[seed], seed, f), a.cache, grid)
    return root, cases


def wait_for(a, jobs, size):
    """Rank 0: wait (polling the files, no collective that could time out) until every job
    is done; a rank's failure ends the wait with its message."""
    todo = {f"{run_name(l)}-seed{s}-fold{f}" for l, s, f in jobs}
    said = False
    while True:
        failed = sorted((a.out / "failed").glob("rank*.txt")) if (a.out / "failed").is_dir() else []
        if failed:
            raise UsageError("; ".join(p.read_text().strip() for p in failed) + " (no report written; rerun to resume)")
        todo -= {p.name for p in (a.out / "done").glob("*")} if (a.out / "done").is_dir() else set()
        if not todo:
            return
        if not said:
            log(f"rank 0: waiting for {len(todo)} run(s) of the other {size - 1} rank(s)")
            said = True
        time.sleep(2)


def what_was_run(a, root, cases, seeds, jobs, clock):
    """study.json's "run": the command, the code, the data, the profile and its departures, the
    epochs, seeds and folds, the wall time, and how each run stopped (from its summary.json)."""
    import sys
    stops, profile, departures = {}, "?", {}
    for spec, seed, fold in jobs:
        d = run_dir(a.out, run_name(spec), seed, fold)
        summary = json.loads((d / "summary.json").read_text())
        config = json.loads((d / "config.json").read_text())
        profile, departures = config.get("profile", "?"), config.get("departures", {})
        stops.setdefault(loss_name(spec), []).append({"seed": seed, "fold": fold, "epochs": summary["epochs"],
                                                      "best_epoch": summary["best_epoch"],
                                                      "stopped": summary["stopped"]})
    return {"command": getattr(a, "command_line", None) or " ".join(["python", *sys.argv]), "commit": git_commit(),
            "data": str(Path(root).resolve()),
            "cases": len(cases), "profile": profile, "departures": departures, "epochs": a.epochs,
            "seeds": seeds, "folds": a.folds, "seconds": clock.seconds(), "invocations": clock.invocations,
            "stops": stops}


def cross_validate(a):
    """The cross-validated study (SPEC 10) of ``a`` (the study command's settings)."""
    compare = parse_compare(a.compare, [loss_name(l) for l in a.losses])
    detect = parse_detect(a.detect)
    rank, size = world(a.wait_timeout)
    seeds = list(range(a.seed, a.seed + a.seeds))
    if rank == 0:
        root, cases = prepare(a, seeds)
    if size > 1:
        torch.distributed.barrier()                              # the others wait for the data, once
    if rank != 0:                                                # rank 0's folds.csv is the one source
        root = a.data or synthetic_root(*_profile(a)[:2])
        cases = labelled_cases(root)
    device = rank_device(a.device)
    jobs = list(itertools.product(a.losses, seeds, range(a.folds)))
    mine = jobs[rank::size]
    clock = Clock(a.out, len(mine)) if rank == 0 else None
    for k, (spec, seed, fold) in enumerate(mine, start=1):
        try:
            train_and_predict(a, spec, seed, fold, fold_root(a.out, seed, fold), device)
        except (UsageError, data.DataError, FloatingPointError) as e:
            if size > 1:
                write_text(a.out / "failed" / f"rank{rank}.txt", f"rank {rank}: {e}\n")
            raise UsageError(f"rank {rank}: {e} (no report written; rerun to resume)") from None
        write_text(a.out / "done" / f"{run_name(spec)}-seed{seed}-fold{fold}", "")
        if clock:
            clock.finished(k, f"{loss_name(spec)}, seed {seed}, fold {fold}")
    if rank == 0 and size > 1:
        wait_for(a, jobs, size)
    if size > 1:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return
    rows = [r for spec, seed, fold in jobs
            for r in read_rows(run_dir(a.out, run_name(spec), seed, fold) / "cv_cases.csv")]
    rows += baseline_rows(cases, a)
    for name, directory in compare.items():
        rows += compare_rows(name, directory, cases, a)
    losses = [loss_name(l) + name for l in a.losses for name, _, _ in variants(a)] + [BASELINE] + list(compare)
    title = (f"Cross-validated study: {a.folds} folds x {len(seeds)} seed(s), {len(a.losses)} loss(es), the ZADC < -2 "
             f"baseline{''.join(f', {n}' for n in compare)}")
    clock.save()
    write_report(a.out, rows, losses, title, a.surfaces, what_was_run(a, root, cases, seeds, jobs, clock), detect)


def parse_detect(items):
    """{metric: difference} of the --detect METRIC=VALUE flags; a bad one is a UsageError."""
    out = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        try:
            out[name] = float(text)
        except ValueError:
            name = ""
        if not sep or name not in DETECT or not out[name] > 0:
            raise UsageError(f"--detect {item!r}: expected METRIC=VALUE, a positive difference of one of "
                             f"{', '.join(DETECT)}")
    return out
