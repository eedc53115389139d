"""hie-ref commands besides training: synth, evaluate, predict, score, study, figure.

    python hie_ref.py synth --out data/synthetic [--train 12] [--val 4] [--seed 0]
    python hie_ref.py evaluate --checkpoint runs/tversky_hdt/best.pt [--data DIR] [--split val] [--grid]
                              [--surfaces voxel|surfel|challenge]
    python hie_ref.py predict --checkpoint runs/tversky_hdt/best.pt --adc A.mha --zadc Z.mha --out mask.mha
    python hie_ref.py score --pred DIR --target DIR [--surfaces voxel|surfel] [--challenge] [--out CSV]
    python hie_ref.py study [--data DIR] [--epochs 100] [--out runs/study]       # Table 1
    python hie_ref.py study --folds 5 [--seeds 3] [--out runs/study-cv]           # cross-validated (study.py)
    python hie_ref.py figure [--study runs/study] [--out runs/study/figure2.png]

Every command exits 2 with a one-line message on bad input.
"""
import csv
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

import data
import train
from losses import LOSS_NAMES
from metrics import METRICS, challenge_case, evaluate_case, summarize
from train import UsageError, log

# The paper's Table 1 (means over the 4 BONBID-HIE validation cases, on the 192x192x32 grid).
PAPER_TABLE1 = {
    "dice": (0.3800, 15.0650, 0.3850, 32),
    "dice_focal": (0.4900, 1.7925, 0.5275, 49),
    "tversky": (0.3525, 15.3650, 0.3375, 38),
    "hdt": (0.3300, float("inf"), 0.2800, 29),
    "dice_focal_hdt": (0.4925, 1.4225, 0.5300, 72),
    "tversky_hdt": (0.5000, 1.6250, 0.5325, 59),
}


# --------------------------------------------------------------------------- synth

def cmd_synth(a):
    root = data.synthesize(a.out, a.train, a.val, a.seed, ext=a.ext)
    log(f"wrote a synthetic BONBID-HIE ({a.train} train, {a.val} val cases, seed {a.seed}) to {root}")


# --------------------------------------------------------------------------- evaluate

def split_dir(root, split):
    name = {"train": data.SPLITS[0], "val": data.SPLITS[1]}[split]
    found = data.split_dirs(root)
    if name not in found:
        raise data.DataError(f"{root}: expected a {name}/ split, found {', '.join(found)}")
    return found[name]


def predict_case(model, cached, device, native=True):
    """(mask, label, spacing) of one cached case: in its own geometry, or on the grid."""
    prob = torch.sigmoid(train.predict_logits(model, cached["image"], device))[0, 0].cpu().numpy()
    if not native:
        return prob > 0.5, cached["label"][0], cached["grid"].spacing
    return (data.to_native(prob, cached["grid"], cached["native"]) > 0.5), None, cached["native"].spacing


STYLES = ("voxel", "surfel", "challenge")       # the three ways of measuring (README)


def score_case(pred, target, spacing, tolerance=2.0, style="voxel"):
    """Metrics of one case in one style: voxel or surfel surfaces, or the challenge's evaluator."""
    if style == "challenge":
        return challenge_case(pred, target, spacing, tolerance)
    return evaluate_case(pred, target, spacing, tolerance, surfaces=style)


def evaluate_checkpoint(ckpt, root, split="val", grid_only=False, tolerance=2.0, device="cpu",
                        cache=train.HERE / "cache", styles=("voxel",)):
    """{style: (per-case rows, summary)} for one checkpoint (a path or a loaded one) on
    one split; each case is predicted once and measured in each style of ``styles``."""
    device = torch.device(device)
    if not isinstance(ckpt, dict):
        ckpt = train.load_checkpoint(ckpt, device)
    model = train.model_from_checkpoint(ckpt, device)
    grid = tuple(ckpt["grid"])
    directory = split_dir(root, split)
    files = data.prepare(directory, cache, grid)
    labels = {c.base: c.label for c in data.discover(directory)}
    rows = {style: [] for style in styles}
    for f in files:
        c = data.load_cached(f)
        mask, label, spacing = predict_case(model, c, device, native=not grid_only)
        if label is None:
            label = data.read_image(labels[c["base"]])[0]
        for style in styles:
            rows[style].append({"case": c["base"], **score_case(mask, label, spacing, tolerance, style)})
    return {style: (r, summarize(r)) for style, r in rows.items()}


def write_csv(path, rows, columns):
    buffer = io.StringIO()
    w = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    train.write_text(path, buffer.getvalue())


def cmd_evaluate(a):
    device = resolve_device(a.device)
    ckpt = train.load_checkpoint(a.checkpoint, device)
    root = a.data or Path(ckpt["config"]["data"])
    rows, summary = evaluate_checkpoint(ckpt, root, a.split, a.grid, a.tolerance, device, a.cache,
                                        (a.surfaces,))[a.surfaces]
    where = "grid" if a.grid else "native"
    suffix = "" if a.surfaces == "voxel" else f"_{a.surfaces}"
    out = a.out or Path(a.checkpoint).parent / f"eval_{a.split}_{where}{suffix}.csv"
    write_csv(out, rows, ["case", *METRICS, "pred_voxels", "target_voxels"])
    train.write_json(out.with_suffix(".json"), summary)
    for r in rows:
        log(f"{r['case']:28s} dice {r['dice']:.4f}  msd {r['msd']:8.3f}  nsd {r['nsd']:.4f}")
    log(f"{'mean (' + where + ' geometry)':28s} dice {summary['dice']['mean']:.4f}  msd {summary['msd']['mean']:8.3f}  "
        f"nsd {summary['nsd']['mean']:.4f}  ({summary['empty_pred']} empty predictions) -> {out}")


# --------------------------------------------------------------------------- predict

def cmd_predict(a):
    device = torch.device(resolve_device(a.device))
    ckpt = train.load_checkpoint(a.checkpoint, device)
    model = train.model_from_checkpoint(ckpt, device)
    for flag, path in (("--adc", a.adc), ("--zadc", a.zadc)):
        if not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file")
    if not str(a.out).endswith((".mha", ".nii", ".nii.gz")):
        raise UsageError(f"--out {a.out}: expected a .mha, .nii or .nii.gz file name")
    case = data.Case(Path(a.adc).name, Path(a.adc), Path(a.zadc))
    p = data.preprocess(case, tuple(ckpt["grid"]))
    mask, _, _ = predict_case(model, {**p, "label": None}, device, native=True)
    data.write_mask(mask, p["native"], a.out)
    log(f"wrote {a.out}: {int(mask.sum())} lesion voxels, "
        f"{mask.sum() * np.prod(p['native'].spacing) / 1000:.2f} cm^3, geometry of {a.adc}")


# --------------------------------------------------------------------------- score

CASE_ID = re.compile(r"[A-Za-z]+_\d+-VISIT_\d+")           # BONBID-HIE's, e.g. MGHNICU_010-VISIT_01
MASK_SUFFIXES = (".mha", ".nii", ".nii.gz")


def mask_files(directory, flag):
    """({case id: path}, problems) of the mask files in ``directory`` (or its 3LABEL/)."""
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"{flag} {d}: expected a directory of masks, got {'a file' if d.exists() else 'nothing'}")
    if (d / data.FOLDERS["label"]).is_dir():
        d = d / data.FOLDERS["label"]
    files, problems = {}, []
    for path in sorted(d.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(MASK_SUFFIXES):
            continue                                            # scores.csv and the like
        m = CASE_ID.search(path.name)
        if m is None:
            problems.append(f"{path.name}: no BONBID-HIE case id (e.g. MGHNICU_010-VISIT_01) in its name")
        elif m[0] in files:
            problems.append(f"{m[0]}: two files, {files[m[0]].name} and {path.name}")
        else:
            files[m[0]] = path
    return files, problems


def read_mask(path):
    """(boolean mask, Geometry) of a 0/1 mask file, or ValueError saying what is wrong."""
    try:
        array, geometry = data.read_image(path)
    except Exception as e:                                         # noqa: BLE001 - any reader failure
        raise ValueError(f"{path.name}: not a readable image ({str(e).strip().splitlines()[0][:100]})")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{path.name}: expected a 0/1 mask, got values such as "
                         f"{np.unique(array[~np.isin(array, (0, 1))])[:3].tolist()}")
    return array.astype(bool), geometry


def score_pairs(preds, targets, style, tolerance, problems):
    """Per-case rows of the paired masks; every problem appended to ``problems``."""
    for case in sorted(set(targets) - set(preds)):
        problems.append(f"{case}: a label ({targets[case].name}) without a prediction")
    for case in sorted(set(preds) - set(targets)):
        problems.append(f"{case}: a prediction ({preds[case].name}) without a label")
    rows = []
    for case in sorted(set(preds) & set(targets)):
        read, errors = [], []
        for path in (preds[case], targets[case]):
            try:
                read.append(read_mask(path))
            except ValueError as e:
                errors.append(str(e))
        if errors:
            problems.append(f"{case}: {'; '.join(errors)}")
            continue
        (pred, pg), (label, lg) = read
        # the challenge's evaluator gives the prediction the label's geometry: only the size must agree
        diff = ["size"] if pg.size != lg.size else [] if style == "challenge" else lg.differences(pg)
        if diff:
            problems.append(f"{case}: prediction and label on different grids ({pg.describe(diff)} vs "
                            f"{lg.describe(diff)})")
            continue
        rows.append({"case": case, **score_case(pred, label, lg.spacing, tolerance, style)})
    return rows


def cmd_score(a):
    if a.challenge and a.surfaces == "voxel":
        raise UsageError("--challenge with --surfaces voxel: the challenge's evaluator uses surfels")
    style = "challenge" if a.challenge else a.surfaces or "voxel"
    preds, problems = mask_files(a.pred, "--pred")
    targets, more = mask_files(a.target, "--target")
    problems += more
    rows = score_pairs(preds, targets, style, a.tolerance, problems)
    if not rows and not problems:
        problems.append("no masks to score")
    if problems:
        raise data.DataError(data.report(f"score {a.pred} against {a.target}", problems))
    out = a.out or Path(a.pred) / "scores.csv"
    write_csv(out, rows, ["case", *METRICS, "pred_voxels", "target_voxels"])
    s = summarize(rows)
    how = "the challenge's evaluator" if a.challenge else f"{style} surfaces"
    log(f"{len(rows)} cases scored ({how}, tolerance {a.tolerance} mm) -> {train.shown(out)}")
    for m in METRICS:
        left_out = f"  ({s[m]['nan']} NaN left out)" if s[m]["nan"] else ""
        log(f"{m:5s} mean {fmt(s[m]['mean'])}  std {fmt(s[m]['std'])}  median {fmt(s[m]['median'])}{left_out}")
    log(f"empty predictions {s['empty_pred']}, empty labels {s['empty_target']}")


# --------------------------------------------------------------------------- study

def fmt(v, digits=4):
    return "Inf" if v == float("inf") else "NaN" if v != v else f"{v:.{digits}f}"


STUDY_MAY_DIFFER = {"out", "cache", "device", "workers", "resume", "force"}


def reuse_problem(run_dir, wanted, force):
    """None when ``run_dir`` holds a finished run with the settings ``wanted``; else why not."""
    if force:
        return "--force"
    if not (run_dir / "summary.json").exists():
        return f"no finished run in {train.shown(run_dir)}"
    saved = json.loads((run_dir / "config.json").read_text())
    diff = train.config_differences(saved, wanted, STUDY_MAY_DIFFER)
    return f"the run in {train.shown(run_dir)} differs: {'; '.join(diff)}" if diff else None


def cmd_study(a):
    if a.folds is not None:                        # the cross-validated study (SPEC 10): study.py
        import study
        a.out = a.out or train.HERE / "runs" / "study-cv"
        return study.run(a)
    out = a.out = a.out or train.HERE / "runs" / "study"
    out.mkdir(parents=True, exist_ok=True)
    table = []
    for name in a.losses:
        run_dir = out / name
        argv = ["--loss", name, "--out", str(run_dir), "--epochs", str(a.epochs), "--seed", str(a.seed),
                "--device", a.device, "--cache", str(a.cache), "--workers", str(a.workers)]
        argv += ["--data", str(a.data)] if a.data else []
        argv += ["--size", *map(str, a.size)] if a.size else []
        argv += ["--patience", str(a.patience)] if a.patience else []
        argv += ["--amp"] if a.amp else []
        argv += ["--augment", a.augment] if a.augment else []
        args = train.parser().parse_args(argv)
        _, wanted = train.plan(args)
        reason = reuse_problem(run_dir, wanted, a.force)
        if reason is None:
            log(f"{name}: trained earlier with these settings, reusing {train.shown(run_dir)}")
        else:
            log(f"{name}: training ({reason})")
            args.force = True
            train.run(args)
        summary = json.loads((run_dir / "summary.json").read_text())
        root = a.data or Path(json.loads((run_dir / "config.json").read_text())["data"])
        styles = tuple(dict.fromkeys((a.surfaces, "challenge")))
        scores = evaluate_checkpoint(run_dir / "best.pt", root, "val", a.grid, a.tolerance, resolve_device(a.device),
                                     cache=a.cache, styles=styles)
        s, c = scores[a.surfaces][1], scores["challenge"][1]
        table.append({"loss": name, "dice": s["dice"]["mean"], "msd": s["msd"]["mean"], "nsd": s["nsd"]["mean"],
                      "challenge_msd": c["msd"]["mean"], "challenge_nsd": c["nsd"]["mean"],
                      "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
                      "paper_dice": PAPER_TABLE1[name][0], "paper_msd": PAPER_TABLE1[name][1],
                      "paper_nsd": PAPER_TABLE1[name][2], "paper_epochs": PAPER_TABLE1[name][3]})
    write_csv(out / "table1.csv", table, list(table[0]))
    where = "the preprocessing grid" if a.grid else "each case's native geometry"
    lines = [f"Table 1, reproduced: mean over the validation cases, metrics in {where}, on {a.surfaces} surfaces, "
             f"and the challenge evaluator's MASD and NSD (NaN cases left out) (ours), beside the paper's "
             f"(BONBID-HIE, 4 validation cases, on the grid, voxel surfaces).", "",
             "| loss | Dice | MSD (mm) | NSD | challenge MASD | challenge NSD | epochs (best) | paper Dice | paper MSD "
             "| paper NSD | paper epochs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['loss']} | {fmt(r['dice'])} | {fmt(r['msd'])} | {fmt(r['nsd'])} | {fmt(r['challenge_msd'])} "
                     f"| {fmt(r['challenge_nsd'])} | {r['epochs']} "
                     f"({r['best_epoch']}) | {fmt(r['paper_dice'])} | {fmt(r['paper_msd'])} | {fmt(r['paper_nsd'])} "
                     f"| {r['paper_epochs']} |")
    train.write_text(out / "table1.md", "\n".join(lines) + "\n")
    log("\n".join(lines))
    log(f"-> {train.shown(out / 'table1.md')}, {train.shown(out / 'table1.csv')}")


# --------------------------------------------------------------------------- figure

def cmd_figure(a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(n, a.study / n / "best.pt") for n in LOSS_NAMES if (a.study / n / "best.pt").exists()]
    if not runs:
        raise UsageError(f"{a.study}: expected LOSS/best.pt run directories (python hie_ref.py study), found none")
    device = torch.device(resolve_device(a.device))
    first = train.load_checkpoint(runs[0][1], device)
    root = a.data or Path(first["config"]["data"])
    files = data.prepare(split_dir(root, "val"), a.cache, tuple(first["grid"]))
    cases = [data.load_cached(f) for f in files]
    with_lesion = sorted((c for c in cases if c["label"].sum() > 0), key=lambda c: c["label"].sum())
    if not with_lesion:
        raise data.DataError(f"{root}: no validation case has a lesion to show")
    shown = [with_lesion[0], with_lesion[-1]] if len(with_lesion) > 1 else with_lesion
    masks = {}
    for name, path in runs:
        ckpt = first if path == runs[0][1] else train.load_checkpoint(path, device)
        model = train.model_from_checkpoint(ckpt, device)
        masks[name] = [(train.predict_logits(model, c["image"], device)[0, 0] > 0).cpu().numpy() for c in shown]
    fig, axes = plt.subplots(len(shown), len(runs) + 1, figsize=(2.2 * (len(runs) + 1), 2.4 * len(shown)),
                             squeeze=False)
    for row, c in enumerate(shown):
        label = c["label"][0].astype(bool)
        z = int(label.sum(axis=(0, 1)).argmax())                     # the axial slice with most lesion
        adc = c["image"][0][:, :, z].T
        panels = [("ground truth", label)] + [(n, masks[n][row]) for n, _ in runs]
        for col, (title, m) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(adc, cmap="gray", origin="lower")
            ax.imshow(np.ma.masked_where(~m[:, :, z].T, m[:, :, z].T), cmap="autumn", alpha=0.6, origin="lower")
            ax.contour(label[:, :, z].T, levels=[0.5], colors="cyan", linewidths=0.6, origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title.replace("_", "-"), fontsize=8)
        axes[row, 0].set_ylabel(f"{c['base']}\n{100 * label.mean():.2f}% of volume", fontsize=7)
    fig.suptitle("Figure 2: predicted masks (red) and ground truth (cyan) on axial ADC slices", fontsize=9)
    fig.tight_layout()
    out = a.out or a.study / "figure2.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    train.atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    log(f"wrote {out}: {len(shown)} validation cases x {len(runs)} losses")


# --------------------------------------------------------------------------- command line

def resolve_device(name):
    return str(train.pick_device(name))


def parser():
    p = train.OneLineParser(prog="hie_ref.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=train.OneLineParser)

    s = sub.add_parser("synth", help="write the synthetic BONBID-HIE")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--train", type=int, default=48)
    s.add_argument("--val", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ext", choices=(".mha", ".nii.gz"), default=".mha")

    e = sub.add_parser("evaluate", help="per-case metrics of a checkpoint")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--data", type=Path, help="dataset root (default: the one the checkpoint was trained on)")
    e.add_argument("--split", choices=("val", "train"), default="val")
    e.add_argument("--grid", action="store_true", help="on the preprocessing grid (the paper's numbers) "
                                                       "instead of each case's native geometry")
    e.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    e.add_argument("--surfaces", choices=STYLES, default="voxel",
                   help="voxel (the paper's), surfel (DeepMind's) or challenge (the organisers' evaluator)")
    e.add_argument("--out", type=Path, help="CSV (default: next to the checkpoint)")
    e.add_argument("--device", default="auto")
    e.add_argument("--cache", type=Path, default=train.HERE / "cache", help="preprocessing cache")

    r = sub.add_parser("predict", help="a lesion mask for one case, in its ADC's geometry")
    r.add_argument("--checkpoint", type=Path, required=True)
    r.add_argument("--adc", type=Path, required=True)
    r.add_argument("--zadc", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True, help=".mha, .nii or .nii.gz")
    r.add_argument("--device", default="auto")

    c = sub.add_parser("score", help="score a folder of masks against the labels, the challenge's way if asked")
    c.add_argument("--pred", type=Path, required=True, help="predicted masks (.mha, .nii, .nii.gz), named by case id")
    c.add_argument("--target", type=Path, required=True, help="labels: a folder of masks, or a split with 3LABEL/")
    c.add_argument("--surfaces", choices=("voxel", "surfel"), help="default voxel (surfel with --challenge)")
    c.add_argument("--challenge", action="store_true", help="the BONBID-HIE organisers' evaluator, errata included")
    c.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    c.add_argument("--out", type=Path, help="per-case CSV (default PRED/scores.csv)")

    t = sub.add_parser("study", help="train all six losses and write Table 1, or with --folds the "
                                     "cross-validated study (study.py)")
    t.add_argument("--data", type=Path)
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--out", type=Path, help="default runs/study (Table 1) or runs/study-cv (--folds)")
    t.add_argument("--folds", type=int, help="K-fold cross-validation over all labelled cases (SPEC 10)")
    t.add_argument("--seeds", type=int, default=1, help="with --folds: seeds --seed, --seed + 1, ...")
    t.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    t.add_argument("--losses", nargs="+", default=list(LOSS_NAMES), choices=LOSS_NAMES, metavar="LOSS")
    t.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"))
    t.add_argument("--patience", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--grid", action="store_true", help="Table 1 on the grid instead of native geometry")
    t.add_argument("--surfaces", choices=("voxel", "surfel"), default="voxel",
                   help="Table 1's MSD and NSD (the challenge evaluator's are added beside)")
    t.add_argument("--force", action="store_true", help="retrain losses trained earlier")
    t.add_argument("--workers", type=int, default=0, help="data loader processes of each run")
    t.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    t.add_argument("--augment", choices=train.AUGMENTS, help="each run's augmentation (default: torch on CUDA, "
                                                              "torchio otherwise)")
    t.add_argument("--device", default="auto")
    t.add_argument("--cache", type=Path, default=train.HERE / "cache", help="preprocessing cache")

    f = sub.add_parser("figure", help="Figure 2: each loss's masks on axial ADC slices (PNG)")
    f.add_argument("--study", type=Path, default=train.HERE / "runs" / "study")
    f.add_argument("--data", type=Path)
    f.add_argument("--out", type=Path)
    f.add_argument("--device", default="auto")
    f.add_argument("--cache", type=Path, default=train.HERE / "cache", help="preprocessing cache")
    return p


COMMANDS = {"synth": cmd_synth, "evaluate": cmd_evaluate, "predict": cmd_predict, "score": cmd_score,
            "study": cmd_study, "figure": cmd_figure}


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        COMMANDS[a.command](a)
    except (UsageError, data.DataError) as e:
        print(f"hie_ref.py {a.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
