"""hie-ref's command line: synth, evaluate, predict, score, study, report, figure, curves, checkpoint (train.py
trains).

    python hie_ref.py synth --out data/synthetic [--train 12] [--val 4] [--seed 0]
    python hie_ref.py evaluate --checkpoint runs/tversky_hdt/best.pt [--data DIR] [--split val] [--grid]
                              [--surfaces voxel|surfel|challenge] [--challenge-version 2023|2024]
    python hie_ref.py predict --checkpoint runs/tversky_hdt/best.pt --adc A.mha --zadc Z.mha --out mask.mha
    python hie_ref.py predict --checkpoint runs/study-cv/runs/tversky_hdt --data DIR --split val --out masks/ [--tta]
    python hie_ref.py predict --checkpoint /opt/app/checkpoints --grand-challenge [--input /input] [--output /output]
    python hie_ref.py score --pred DIR --target DIR [--surfaces voxel|surfel] [--challenge [2023|2024]] [--out CSV]
    python hie_ref.py study [--data DIR] [--epochs 100] [--out runs/study]       # Table 1
    python hie_ref.py study --folds 5 [--seeds 3] [--out runs/study-cv]           # cross-validated
    python hie_ref.py report runs/study-cv/cases.csv [more cases.csv ...] [--out DIR]   # a study's report again
    python hie_ref.py figure [--study runs/study] [--out runs/study/figure2.png]
    python hie_ref.py curves runs/dice runs/tversky_hdt [--out curves.png]
    python hie_ref.py checkpoint --state-dict my_unet.pt --out mine/best.pt [--size 192 192 32]

Each command reads its flags and calls the module that does the work; nothing imports
this file. Every command exits 2 with a one-line message on bad input.

Each command at length: README.md (one line each) and docs/ (one chapter per topic).
"""
import contextlib
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

import checkpoints
import data
import evaluate
import figures
import predict
import report as study_report
import study
import synthetic
from augment import AUGMENTS, SPACES
from devices import pick_device
from evaluate import UNITS
from losses import LOSS_NAMES
from metrics import CHALLENGE_VERSIONS, METRICS, summarize
from plumbing import (HERE, OneLineParser, UsageError, atomic_write, fmt, hold_lock, log, shown, unwritable,
                      write_csv, write_json)
from user_losses import loss_name

SCORE_COLUMNS = ["case", "style", *METRICS, "pred_voxels", "target_voxels", *evaluate.LESION_COLUMNS]


def cmd_synth(a):
    out = Path(a.out)
    if out.is_file():
        raise UsageError(f"--out {a.out}: expected a folder for the dataset, got a file")
    run = [n for n in ("config.json", "metrics.csv", "best.pt", "last.pt", "summary.json") if (out / n).exists()]
    if run:
        raise UsageError(f"--out {a.out} is a run directory (it holds {', '.join(run)}): expected a new folder or a "
                         f"synthetic dataset's")
    splits = [out / s for s in data.SPLITS]
    held = [p for p in out.iterdir() if p not in splits] if out.is_dir() else []
    if held:
        raise UsageError(f"--out {a.out} holds other files (e.g. {held[0].name}): expected a new folder or a "
                         f"synthetic dataset's")
    files = [p for d in splits if d.is_dir() for p in d.glob("*/*") if p.name.endswith((".mha", ".nii", ".nii.gz"))]
    if files and not a.force:
        counts = ", ".join(f"{len(list((d / data.FOLDERS['label']).glob('*')))} in {d.name}" for d in splits
                           if d.is_dir())
        other = "" if all(p.name.endswith(a.ext) for p in files) else f" in another format (e.g. {files[0].name})"
        raise UsageError(f"--out {a.out} holds a dataset already{other} ({counts}): --force to replace it, or "
                         f"another --out")
    for d in splits:
        if d.is_dir():
            shutil.rmtree(d)                                     # --force: the old cases go, none is left mixed in
    root = synthetic.synthesize(out, a.train, a.val, a.seed, ext=a.ext)
    n_train, n_val = (len(data.discover(d)) for d in splits)
    log(f"wrote a synthetic BONBID-HIE ({n_train} train, {n_val} val cases, seed {a.seed}) to {root}")


def lesion_line(s):
    """The lesion-wise means of a summary, as a log line: sensitivity both pooled (lesions found
    over all lesions) and as the mean of the per-case values, which weighs each case alike."""
    lesions, found = round(s["lesions"]["mean"] * s["cases"]), round(s["detected"]["mean"] * s["cases"])
    return (f"lesions {lesions}, {found} detected: sensitivity {fmt(found / lesions if lesions else math.nan, 4)} "
            f"pooled, {fmt(s['lesion_sensitivity']['mean'], 4)} the mean over cases "
            f"({s['lesion_sensitivity']['nan']} case(s) without a lesion left out); lesion F1 "
            f"{fmt(s['lesion_f1']['mean'], 4)}, false lesions per case {fmt(s['false_lesions']['mean'], 2)}, "
            f"cc_dice {fmt(s['cc_dice']['mean'], 4)}")


def cmd_evaluate(a):
    device = pick_device(a.device)
    path = checkpoints.checkpoint_file(a.checkpoint)
    ckpt = checkpoints.load_checkpoint(path, device)
    if a.data is None and "data" not in ckpt["config"]:
        raise UsageError(f"--data is required: {path} does not record the data it was trained on")
    root = a.data or Path(ckpt["config"]["data"])
    style = evaluate.style_of(a.surfaces, a.challenge_version)
    where = "grid" if a.grid else "native"
    post = evaluate.post_name(a.threshold, a.min_lesion)
    suffix = ("" if path.name == "best.pt" else f"_{path.stem}") + ("" if style == "voxel" else f"_{style}") + \
        (f"_{post[1:].replace('(', '-').replace(',', '-').rstrip(')')}" if post else "") + units_suffix(a.units)
    out = a.out or path.parent / f"eval_{a.split}_{where}{suffix}.csv"
    if out.exists() and not a.force:
        raise UsageError(f"{shown(out)} exists: --force to overwrite it, or --out elsewhere")
    rows, summary = evaluate.evaluate_checkpoint(ckpt, root, a.split, a.grid, a.tolerance, device, a.cache,
                                                 (style,), a.threshold, a.min_lesion, a.units)[style]
    write_csv(out, [{**r, "style": style} for r in rows], SCORE_COLUMNS)
    how = {"checkpoint": str(path.resolve()), "data": str(Path(root).resolve()), "split": a.split, "style": style,
           "surfaces": "surfel" if style.startswith("challenge") else style,
           "challenge_version": a.challenge_version if style.startswith("challenge") else None,
           "units": a.units, "tolerance": a.tolerance, "tolerance_units": a.units, "geometry": where,   # mm or voxels
           "threshold": a.threshold, "min_lesion_mm3": a.min_lesion}
    write_json(out.with_suffix(".json"), {"scored": how, **summary})
    for r in rows:
        log(f"{r['case']:28s} dice {r['dice']:.4f}  msd {r['msd']:8.3f}  nsd {r['nsd']:.4f}  lesions "
            f"{r['detected']}/{r['lesions']} found, {r['false_lesions']} false  [{r['burden_group']}]")
    log(f"{'mean (' + where + ' geometry)':28s} dice {summary['dice']['mean']:.4f}  msd {summary['msd']['mean']:8.3f} "
        f"{'voxels' if a.units == 'voxel' else 'mm'}  "
        f"nsd {summary['nsd']['mean']:.4f}  ({summary['empty_pred']} empty predictions) -> {out}")
    log(lesion_line(summary))


def check_predict(a):
    """Which form of predict the flags ask for, each missing or clashing flag named."""
    forms = [a.adc is not None or a.zadc is not None, a.data is not None, a.grand_challenge]
    if sum(forms) != 1:
        raise UsageError("expected one of: --adc A --zadc Z --out MASK (one case), --data DIR --out DIR (a split or "
                         "test folder), --grand-challenge (the challenge's container)")
    if forms[0]:
        for flag, other in (("--adc", "--zadc"), ("--zadc", "--adc")):
            if getattr(a, flag[2:]) is None:
                raise UsageError(f"{flag} is required with {other}: one case needs its ADC and ZADC maps")
        for flag, path in (("--adc", a.adc), ("--zadc", a.zadc)):
            if not Path(path).is_file():
                raise UsageError(f"{flag} {path}: no such file")
        if a.out is None:
            raise UsageError("--out is required with --adc: the mask file to write (.mha, .nii or .nii.gz)")
        if not str(a.out).endswith((".mha", ".nii", ".nii.gz")):
            raise UsageError(f"--out {a.out}: expected a .mha, .nii or .nii.gz file name")
        if Path(a.out).exists() and not a.force:
            raise UsageError(f"--out {a.out} exists: --force to overwrite it")
    if forms[1]:
        if a.out is None:
            raise UsageError("--out is required with --data: the folder to write the masks to")
        masks = sorted(p.name for p in Path(a.out).glob("*_lesion.*")) if Path(a.out).is_dir() else []
        if masks and not a.force:
            raise UsageError(f"--out {a.out} holds {len(masks)} mask(s) already (e.g. {masks[0]}): --force to "
                             f"overwrite them, or another --out")
    return forms


def cmd_predict(a):
    device = pick_device(a.device)
    forms = check_predict(a)
    members = predict.load_members(a.checkpoint, device, a.mix)
    post = dict(threshold=a.threshold, min_lesion=a.min_lesion)
    if len(members) > 1:
        log(f"ensemble of {len(members)}: " + ", ".join(str(shown(p)) for p, *_ in members))
    if a.grand_challenge:
        predict.grand_challenge(members, a.input, a.output, device, a.tta, **post)
    elif forms[1]:
        cases = predict.split_cases(a.data, a.split)
        ext = a.format or (".nii.gz" if cases and cases[0].adc.name.endswith((".nii", ".nii.gz")) else ".mha")
        predict.predict_cases(members, cases, a.out, device, a.tta, a.probabilities, ext=ext, held_out=a.held_out,
                              allow_trained=a.allow_trained, **post)
        log(f"wrote {len(cases)} {ext} masks{' and probability maps' if a.probabilities else ''} to {shown(a.out)}"
            f"{' (8 flips each)' if a.tta else ''}{evaluate.post_name(**post)}")
    else:
        case = re.sub(r"([-_]ADC(_ss)?)?(\.nii\.gz|\.nii|\.mha)$", "", Path(a.adc).name)   # its id, not its file
        data.load_case(data.Case(case, Path(a.adc), Path(a.zadc)))           # each problem named once, up front
        members = predict.unseen(members, [case], a.held_out, a.allow_trained)[case]
        mask, prob, native = predict.predict_case(members, data.Case(case, Path(a.adc), Path(a.zadc)), device, a.tta,
                                                  **post)
        data.write_mask(mask, native, a.out)
        if a.probabilities:
            name = Path(a.out).name.replace("_lesion", "").split(".")[0]
            data.write_image(prob, native, Path(a.out).with_name(f"{name}_probability.mha"))
        log(f"wrote {a.out}: {int(mask.sum())} lesion voxels, "
            f"{mask.sum() * np.prod(native.spacing) / 1000:.2f} cm^3, geometry of {a.adc}")


def cmd_checkpoint(a):
    import torch
    if a.out.exists() and not a.force:
        raise UsageError(f"--out {a.out} exists: --force to overwrite it")
    if not a.state_dict.is_file():
        raise UsageError(f"--state-dict {a.state_dict}: no such file")
    try:
        state = torch.load(a.state_dict, map_location="cpu", weights_only=True)
    except Exception as e:                                        # noqa: BLE001 - any reader failure
        raise UsageError(f"--state-dict {a.state_dict}: not a PyTorch file of tensors "
                         f"({str(e).strip().splitlines()[0][:100]})") from None
    if isinstance(state, dict) and set(checkpoints.CHECKPOINT_KEYS) <= set(state):
        raise UsageError(f"--state-dict {a.state_dict}: a hie-ref checkpoint already")
    if not isinstance(state, dict):
        raise UsageError(f"--state-dict {a.state_dict}: expected a UNet3D state_dict, got a {type(state).__name__}")
    ckpt = checkpoints.checkpoint_from_state_dict(state, tuple(a.size))
    atomic_write(a.out, lambda tmp: torch.save(ckpt, tmp))
    c = ckpt["config"]
    log(f"wrote {shown(a.out)}: UNet3D widths {fmt(tuple(c['widths']))} + {c['bottleneck']}, grid {fmt(tuple(a.size))}"
        f" (evaluate and predict take it; hie-ref's preprocessing, SPEC 2, must be the one it was trained with)")


def units_suffix(units):
    """What a scores file's name adds for distances in voxels (none for mm, the default)."""
    return "_units-voxel" if units == "voxel" else ""


def cmd_curves(a):
    # one run: its own curves.png, drawn again from its metrics.csv (as train.py does); several: ./curves.png
    own = a.out is None and len(a.runs) == 1
    out = Path(a.runs[0]) / "curves.png" if own else a.out or Path("curves.png")
    if out.exists() and not own and not a.force:
        raise UsageError(f"{shown(out)} exists: --force to overwrite it, or --out elsewhere")
    figures.curves(out, a.runs)
    log(f"wrote {out}: {len(a.runs)} run(s)")


def cmd_score(a):
    if a.challenge and a.surfaces == "voxel":
        raise UsageError("--challenge with --surfaces voxel: the challenge's evaluator uses surfels")
    style = evaluate.style_of("challenge", a.challenge) if a.challenge else a.surfaces or "voxel"
    out = a.out or Path(a.pred) / f"scores_{style}{units_suffix(a.units)}.csv"
    seen = predict.seen_in(a.pred, evaluate.pair_folders(a.pred, a.target, True)[0])
    if seen and not a.allow_trained:
        c, members = next(iter(seen.items()))
        raise UsageError(f"--pred {a.pred}: {len(seen)} case(s) were predicted by members that trained on them "
                         f"(its {predict.PROVENANCE}), e.g. {c} by {members[0]}: a score of them measures memory; "
                         f"predict with --held-out, or --allow-trained if this is meant")
    if evaluate.pair_folders(a.pred, a.target, a.allow_missing)[2]:     # the inputs' mistakes come first,
        evaluate.score_folders(a.pred, a.target, style, a.tolerance, a.allow_missing, units=a.units)   # all at once
    if out.exists() and not a.force:
        raise UsageError(f"{shown(out)} exists: --force to overwrite it, or --out elsewhere")
    rows = evaluate.score_folders(a.pred, a.target, style, a.tolerance, a.allow_missing, log, a.units)
    write_csv(out, [{**r, "style": style} for r in rows], SCORE_COLUMNS)
    s = summarize(rows, evaluate.SUMMARIZED)
    how = f"the challenge's evaluator, version {a.challenge}" if a.challenge else f"{style} surfaces"
    unit = "voxels" if a.units == "voxel" else "mm"
    log(f"{len(rows)} cases scored ({how}, distances and tolerance {a.tolerance} in {unit}) -> {shown(out)}")
    for m in METRICS:
        left_out = f"  ({s[m]['nan']} NaN left out)" if s[m]["nan"] else ""
        log(f"{m:5s} mean {fmt(s[m]['mean'], 4)}  std {fmt(s[m]['std'], 4)}  median {fmt(s[m]['median'], 4)}{left_out}")
    log(f"empty predictions {s['empty_pred']}, empty labels {s['empty_target']}")
    log(lesion_line(s))


def cmd_study(a):
    for spec in a.losses:
        try:
            loss_name(spec)                                # a malformed or clashing name: one line, status 2
        except UsageError as e:
            raise UsageError(re.sub(r"^--loss\b", "--losses", str(e))) from None
    if a.compare and a.folds is None:
        raise UsageError("--compare: expected with --folds (the cross-validated study)")
    a.out = a.out or HERE / "runs" / ("study-cv" if a.folds is not None else "study")
    # one study per folder: rank 0 holds the lock for its torchrun group (torchrun ends them all if it fails)
    with hold_lock(a.out, "study") if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext():
        if a.folds is not None:
            return study.cross_validate(a)
        study.table1(a)


def cmd_report(a):
    """Every table, verdict and picture of a study again, from its cases.csv alone (or several:
    shards run on different machines), by the same code the study calls at its end."""
    one = len(a.cases) == 1
    out = a.out or (Path(a.cases[0]).parent if one else None)
    if out is None:
        raise UsageError("--out: expected a folder for the report of several cases.csv files")
    own = one and out.resolve() == Path(a.cases[0]).resolve().parent
    if (out / "study.md").exists() and not own and not a.force:
        raise UsageError(f"{shown(out)} holds a study's report already: --force to overwrite it, or --out elsewhere")
    rows = study_report.read_cases(a.cases)
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    beside = Path(a.cases[0]).parent / "study.json"
    run = None
    if one and beside.exists():
        run = json.loads(beside.read_text()).get("run")
    title = a.title or (f"Study report from {', '.join(map(str, a.cases))}: {len(losses)} row kind(s)")
    out.mkdir(parents=True, exist_ok=True)
    study_report.write_report(out, rows, losses, title, run=run, detect=study.parse_detect(a.detect))
    log(f"-> {shown(out / 'study.md')}")


def cmd_figure(a):
    out = a.out or a.study / "figure2.png"
    runs = figures.study_runs(a.study, LOSS_NAMES)
    n = figures.figure2(runs, out, a.data, a.cache, pick_device(a.device))
    log(f"wrote {out}: {n} validation cases x {len(runs)} losses")


# --------------------------------------------------------------------------- the command line

def parser():
    p = OneLineParser(prog="hie_ref.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND")
    device = dict(default="auto", help="auto (CUDA if there is one), cpu, cuda, cuda:N")
    cache = dict(type=Path, default=data.CACHE, help="preprocessing cache")
    tolerance = dict(type=float, default=2.0, help="NSD tolerance in mm (in voxels with --units voxel)")
    units = dict(choices=UNITS, default="mm", help="surface distances and the NSD tolerance in mm, or in voxels of the "
                 "arrays measured (unit spacing: MONAI's default, how the paper most likely measured, on its grid: "
                 "--grid --units voxel)")
    threshold = dict(type=float, default=0.5, help="a voxel is lesion where its probability is above this")
    min_lesion = dict(type=float, default=0.0, metavar="MM3", help="drop predicted lesions (26-connected components) "
                      "smaller than this, in mm^3 in the case's own geometry; 0 keeps all")
    version = dict(type=int, choices=CHALLENGE_VERSIONS, default=2023,
                   help="the challenge evaluator's version: 2023 (scored the 2023 leaderboard) or 2024 (re-uploaded "
                        "2024-09-03, spacing fixed)")

    s = sub.add_parser("synth", help="write the synthetic BONBID-HIE (SPEC 8)", epilog="docs/training.md")
    s.add_argument("--out", type=Path, required=True, help="dataset root to write")
    s.add_argument("--train", type=int, default=48, help="training cases")
    s.add_argument("--val", type=int, default=4, help="validation cases")
    s.add_argument("--seed", type=int, default=0, help="the set's seed: the same seed, the same files")
    s.add_argument("--ext", choices=(".mha", ".nii.gz"), default=".mha", help="file format")
    s.add_argument("--force", action="store_true", help="replace a synthetic dataset already in --out")

    e = sub.add_parser("evaluate", help="per-case metrics of a checkpoint on a split",
                       epilog="The styles of measuring: docs/measuring.md; lesion by lesion: docs/lesions.md")
    e.add_argument("--checkpoint", type=Path, required=True, help="a run directory (its best.pt), or a checkpoint "
                                                                  "file such as last.pt")
    e.add_argument("--data", type=Path, help="dataset root (default: the one the checkpoint was trained on)")
    e.add_argument("--split", choices=("val", "train"), default="val", help="which split")
    e.add_argument("--grid", action="store_true", help="on the preprocessing grid (the paper's numbers) "
                                                       "instead of each case's native geometry")
    e.add_argument("--tolerance", **tolerance)
    e.add_argument("--surfaces", choices=("voxel", "surfel", "challenge"), default="voxel",
                   help="voxel (the paper's), surfel (DeepMind's) or challenge (the organisers' evaluator)")
    e.add_argument("--challenge-version", **version)
    e.add_argument("--threshold", **threshold)
    e.add_argument("--min-lesion", **min_lesion)
    e.add_argument("--units", **units)
    e.add_argument("--out", type=Path, help="per-case CSV (default: next to the checkpoint)")
    e.add_argument("--force", action="store_true", help="overwrite an existing per-case CSV")
    e.add_argument("--device", **device)
    e.add_argument("--cache", **cache)

    r = sub.add_parser("predict", help="lesion masks in each ADC's geometry: one case, a split or test folder, or "
                                       "the challenge's container; one model or an ensemble",
                       epilog="docs/submission.md")
    r.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                   help="best.pt files, or directories holding runs (their best.pt files): several make an ensemble")
    r.add_argument("--adc", type=Path, help="one case: its ADC map (.mha, .nii, .nii.gz) (default: none)")
    r.add_argument("--zadc", type=Path, help="one case: its ZADC map, same grid (default: none)")
    r.add_argument("--data", type=Path, help="a dataset root or one split folder (labels optional: a test set) (default: none)")
    r.add_argument("--split", choices=("val", "train", "all"), default="val", help="with --data: which split")
    r.add_argument("--out", type=Path, help="the mask (one case: .mha, .nii or .nii.gz) or the folder of "
                                            "<case>_lesion.mha (--data) (default: none)")
    r.add_argument("--probabilities", action="store_true", help="also each case's lesion probability map, "
                                                               "<case>_probability.mha (float32)")
    r.add_argument("--tta", action="store_true", help="test-time augmentation: the mean over the 8 flips of the axes")
    r.add_argument("--mix", action="store_true", help="an ensemble of runs of different losses (default: every "
                                                      "member must be a run of the same loss)")
    r.add_argument("--held-out", action="store_true", help="each case by the members that did not train on it (a "
                   "study's fold models: each case by the folds that held it out)")
    r.add_argument("--allow-trained", action="store_true", help="predict cases that a member trained on (default: "
                   "refused, naming them: a score of them measures memory)")
    r.add_argument("--grand-challenge", action="store_true", help="the BONBID-HIE algorithm interface (SPEC 11)")
    r.add_argument("--threshold", **threshold)
    r.add_argument("--min-lesion", **min_lesion)
    r.add_argument("--format", choices=(".mha", ".nii.gz"), type=lambda v: v if v.startswith(".") else f".{v}",
                   help="with --data: the masks' file format, mha or nii.gz (default: the input's)")
    r.add_argument("--force", action="store_true", help="overwrite an existing mask, or a folder's masks")
    r.add_argument("--input", type=Path, default=Path("/input"), help="with --grand-challenge")
    r.add_argument("--output", type=Path, default=Path("/output"), help="with --grand-challenge")
    r.add_argument("--device", **device)

    k = sub.add_parser("checkpoint", help="a hie-ref checkpoint from a bare UNet3D state_dict (your own training loop "
                                          "around unet3d.py)")
    k.add_argument("--state-dict", type=Path, required=True, help="torch.save(model.state_dict(), FILE) of a UNet3D")
    k.add_argument("--out", type=Path, required=True, help="the checkpoint to write, e.g. mine/best.pt")
    k.add_argument("--size", type=int, nargs=3, default=list(data.GRID), metavar=("X", "Y", "Z"),
                   help="the preprocessing grid the network was trained on")
    k.add_argument("--force", action="store_true", help="overwrite --out")

    v = sub.add_parser("curves", help="training curves of runs: loss, validation Dice and NSD per epoch (PNG, or "
                                      "the format --out names)")
    v.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories (with metrics.csv)")
    v.add_argument("--out", type=Path, help="the picture: .png, .pdf, .svg, .jpg, ... (default: RUN/curves.png for one "
                                            "run, redrawn; ./curves.png for several)")
    v.add_argument("--force", action="store_true", help="overwrite an existing --out")

    c = sub.add_parser("score", help="score a folder of masks against the labels, the challenge's way if asked",
                       epilog="docs/measuring.md#scoring-any-models-masks")
    c.add_argument("--pred", type=Path, required=True, help="predicted masks (.mha, .nii, .nii.gz), named by case id")
    c.add_argument("--target", type=Path, required=True, help="labels: a folder of masks, or a split with 3LABEL/")
    c.add_argument("--surfaces", choices=("voxel", "surfel"), help="surfaces (default: voxel; surfel with --challenge)")
    c.add_argument("--challenge", type=int, nargs="?", const=2023, choices=CHALLENGE_VERSIONS, metavar="VERSION",
                   help="the BONBID-HIE organisers' evaluator, errata included: 2023 (bare --challenge; scored the "
                        "2023 leaderboard) or 2024 (re-uploaded 2024-09-03, spacing fixed) (default: none)")
    c.add_argument("--tolerance", **tolerance)
    c.add_argument("--units", **units)
    c.add_argument("--allow-missing", action="store_true", help="score the pairs present and name the unpaired "
                                                                "cases in the log (default: every label needs a mask)")
    c.add_argument("--allow-trained", action="store_true", help="score masks whose predictions.json says a member "
                   "trained on their case (default: refused, naming them)")
    c.add_argument("--force", action="store_true", help="overwrite an existing scores file")
    c.add_argument("--out", type=Path, help="per-case CSV (default PRED/scores_STYLE.csv, STYLE voxel, surfel, "
                                            "challenge-2023 or challenge-2024)")

    t = sub.add_parser("study", help="train the losses and write Table 1, or with --folds the cross-validated "
                                     "study (SPEC 10)", epilog="docs/study.md; the losses it takes: docs/losses.md")
    t.add_argument("--data", type=Path, help="dataset root (default: the synthetic set of the run's profile)")
    t.add_argument("--epochs", type=int, default=100, help="epochs per run (early stopping may end it sooner)")
    t.add_argument("--out", type=Path, help="study directory (default: runs/study, or runs/study-cv with --folds)")
    t.add_argument("--folds", type=int, help="K-fold cross-validation over all labelled cases (SPEC 10) (default: none, "
                                               "Table 1 on the val split)")
    t.add_argument("--seeds", type=int, default=1, help="with --folds: seeds --seed, --seed + 1, ...")
    t.add_argument("--tolerance", **tolerance)
    t.add_argument("--losses", nargs="+", default=list(LOSS_NAMES), metavar="LOSS",
                   help=f"which losses: of {', '.join(LOSS_NAMES)}, blob_dice, blob_tversky_hdt, any with parameters "
                        f"as \"NAME(key=value, ...)\", or your own as path/to/file.py:Name or module:name")
    t.add_argument("--compare", action="append", metavar="NAME=DIR", help="with --folds: a folder of any model's "
                   "masks for the labelled cases, scored beside the losses (repeatable) (default: none)")
    t.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="preprocessing grid of each run "
                   "(default: train.py's, the paper's on CUDA)")
    t.add_argument("--patience", type=int, help="early stopping patience of each run (default: train.py's)")
    t.add_argument("--seed", type=int, default=0, help="the (first) training seed")
    t.add_argument("--grid", action="store_true", help="Table 1 on the grid instead of native geometry")
    t.add_argument("--units", **units)
    t.add_argument("--surfaces", choices=("voxel", "surfel"), default="voxel",
                   help="MSD and NSD on these surfaces (the challenge evaluator's are added beside)")
    t.add_argument("--challenge-version", **version)
    pp = " (not 0.5 / 0: each trained loss gets a post-processed row beside its raw one)"
    t.add_argument("--threshold", **{**threshold, "help": threshold["help"] + pp})
    t.add_argument("--min-lesion", **{**min_lesion, "help": min_lesion["help"] + pp})
    t.add_argument("--force", action="store_true", help="Table 1: retrain losses trained earlier")
    t.add_argument("--workers", type=int, default=0, help="data loader processes of each run")
    t.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    t.add_argument("--augment", choices=AUGMENTS, help="each run's augmentation: batched torch ops on the device, "
                                                        "TorchIO per case (the reference), or none (default: torch)")
    t.add_argument("--augment-space", choices=SPACES, default="mm", help="each run's augmentation in mm (each "
                   "case's grid spacing) or in voxels (the paper's most likely)")
    t.add_argument("--synthetic-train", type=int, help="without --data: training cases of the synthetic set "
                                                       "(default: train.py's)")
    t.add_argument("--synthetic-val", type=int, help="without --data: its validation cases (default: train.py's)")
    t.add_argument("--wait-timeout", type=float, default=6 * 3600, help="under torchrun: seconds the other ranks "
                   "may wait for rank 0 to prepare the data (no rank waits on another's training)")
    t.add_argument("--device", **device)
    t.add_argument("--cache", **cache)

    detect = dict(action="append", metavar="METRIC=VALUE", help="the difference the design table asks about, e.g. "
                  "dice=0.02 (repeatable) (default: docs/study.md's per metric)")
    t.add_argument("--detect", **detect)
    t.add_argument("--cpu-demo", action="store_true", help="each run on the CPU demo profile (train.py --cpu-demo), "
                   "also with --data (default: only for the synthetic set on a CPU)")
    r = sub.add_parser("report", help="a study's tables, verdicts and pictures again from its cases.csv (or several)",
                       epilog="docs/study.md")
    r.add_argument("cases", nargs="+", type=Path, metavar="CASES_CSV", help="a study's cases.csv; several: shards "
                   "of one study (a row in two must be the same row)")
    r.add_argument("--out", type=Path, help="folder of the report (default: the one cases.csv's folder)")
    r.add_argument("--title", help="the report's title (default: names the files)")
    r.add_argument("--detect", **detect)
    r.add_argument("--force", action="store_true", help="overwrite another study's report in --out")

    f = sub.add_parser("figure", help="Figure 2: each loss's masks on axial ADC slices (PNG)")
    f.add_argument("--study", type=Path, default=HERE / "runs" / "study", help="a Table 1 study directory")
    f.add_argument("--data", type=Path, help="dataset root (default: the one the runs were trained on)")
    f.add_argument("--out", type=Path, help="PNG (default STUDY/figure2.png)")
    f.add_argument("--device", **device)
    f.add_argument("--cache", **cache)
    return p


COMMANDS = {"synth": cmd_synth, "evaluate": cmd_evaluate, "predict": cmd_predict, "score": cmd_score,
            "study": cmd_study, "report": cmd_report, "figure": cmd_figure, "curves": cmd_curves, "checkpoint": cmd_checkpoint}


def main(argv=None):
    a = parser().parse_args(argv)
    a.command_line = " ".join(["python", "hie_ref.py", *(sys.argv[1:] if argv is None else map(str, argv))])
    try:
        COMMANDS[a.command](a)
    except (UsageError, data.DataError, OSError) as e:     # an unwritable or full destination too: one line
        message = e if isinstance(e, (UsageError, data.DataError)) else unwritable(e)
        if message is None:
            raise
        print(f"hie_ref.py {a.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
