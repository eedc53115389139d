"""From trained models to masks: batch prediction, fold ensembles, test-time flips, and the
BONBID-HIE challenge's container interface (SPEC 6, 11).

    members = load_members([ckpt or run directory, ...], device)   # one grid and preprocessing
    probability(members, image, device, tta=False)  -> (X,Y,Z) lesion probability on the grid
    predict_cases(members, cases, out_dir, ...)     -> <case>_lesion.mha in each ADC's geometry
    grand_challenge(members, input_dir, output_dir) -> images/hie-lesion-segmentation/overlay.mha

An ensemble averages its members' sigmoid probabilities on the preprocessing grid; the
mean is taken back to the case's own geometry (linear, so it is the mean of the members'
native probability maps) and thresholded at 0.5 (``threshold``), its lesions under
``min_lesion`` mm^3 dropped if asked (SPEC 9, evaluate.post_process). ``tta`` adds
nnU-Net's mirroring: the mean over the 8 flips of the three axes.

Ensembles, TTA, the container and the leaderboard: docs/submission.md.
"""
import itertools
import json
from pathlib import Path

import torch
from tqdm import tqdm

import data
from checkpoints import load_checkpoint, model_from_checkpoint
from evaluate import post_process
from plumbing import UsageError, atomic_dir, log, report, shown, write_json

# SPEC 11: the algorithm interface of BONBID-HIE 2023 on grand-challenge
GC_ADC = Path("images/skull-stripped-adc-brain-mri")
GC_ZADC = Path("images/z-score-adc")
GC_OUTPUT = Path("images/hie-lesion-segmentation/overlay.mha")


# --------------------------------------------------------------------------- the members

def checkpoint_paths(paths):
    """Checkpoint files from files and directories (every best.pt below a directory: e.g. a
    loss's fold runs in a cross-validated study), in a stable order."""
    found, problems = [], []
    for p in map(Path, paths):
        if p.is_dir():
            runs = sorted(p.rglob("best.pt"))
            found += runs
            if not runs:
                problems.append(f"{p}: no best.pt below it")
        elif p.is_file():
            found.append(p)
        else:
            problems.append(f"{p}: no such checkpoint file")
    if problems:
        raise UsageError("; ".join(problems))
    return list(dict.fromkeys(found))


def load_members(paths, device, mix=False):
    """[(path, model, grid, cases)] of every checkpoint (cases: the ids it trained on and was stopped
    on, {"train", "val"}, or None for a checkpoint from before they were recorded). An ensemble's members share one grid and
    preprocessing (else refused: they cannot be averaged), and one loss (else refused unless
    ``mix``: a folder such as runs/ holds every study's and loss's runs, and an ensemble of
    them all is rarely what was meant); every group of members named in one UsageError."""
    members, kinds, losses = [], {}, {}
    for path in checkpoint_paths(paths):
        ckpt = load_checkpoint(path, device)
        kind = (tuple(ckpt["grid"]), ckpt["config"].get("preprocess", data.PREPROCESS_VERSION))
        kinds.setdefault(kind, []).append(path)
        losses.setdefault(ckpt["config"].get("loss", "?"), []).append(path)
        cases = ckpt.get("state", {}).get("cases")
        members.append((path, model_from_checkpoint(ckpt, device), kind[0],
                        {k: set(v) for k, v in cases.items()} if cases else None))
    if len(kinds) > 1:
        described = "; ".join(f"grid {'x'.join(map(str, g))}, preprocessing v{v}: {', '.join(map(str, p))}"
                              for (g, v), p in kinds.items())
        raise UsageError(f"--checkpoint: an ensemble's members must share one grid and preprocessing, got {described}")
    if len(losses) > 1 and not mix:
        named = lambda p: ", ".join(str(shown(x)) for x in p[:2]) + (", ..." if len(p) > 2 else "")
        described = "; ".join(f"{loss} ({len(p)}: {named(p)})" for loss, p in losses.items())
        raise UsageError(f"--checkpoint: expected the runs of one loss, got {len(losses)} losses: {described}; name "
                         f"one loss's runs (e.g. runs/study-cv/runs/LOSS), or --mix to ensemble them all")
    return members


# --------------------------------------------------------------------------- one case

FLIPS = [dims for k in range(4) for dims in itertools.combinations((2, 3, 4), k)]     # the 8 flips of (x, y, z)


@torch.no_grad()
def probability(members, image, device, tta=False):
    """(X,Y,Z) float32 lesion probability of one preprocessed (2,X,Y,Z) image on the grid:
    the mean of the members' sigmoids, over the 8 axis flips with ``tta``."""
    x = torch.as_tensor(image)[None].to(device)
    total, count = torch.zeros(x.shape[2:], device=device), 0
    for _, model, *_ in members:
        for dims in (FLIPS if tta else [()]):
            logits = model(x.flip(dims) if dims else x).float()
            total += torch.sigmoid(logits.flip(dims) if dims else logits)[0, 0]
            count += 1
    return (total / count).cpu().numpy()


def predict_case(members, case, device, tta=False, threshold=0.5, min_lesion=0.0):
    """(mask, probability, native Geometry) of one case, both in the ADC's own geometry."""
    p = data.preprocess(data.Case(case.base, case.adc, case.zadc), members[0][2])
    native = data.to_native(probability(members, p["image"], device, tta), p["grid"], p["native"])
    return post_process(native, p["native"].spacing, threshold, min_lesion), native.astype("float32"), p["native"]


# --------------------------------------------------------------------------- many cases

def split_cases(root, split):
    """The cases to predict: a split (train, val or all) of a dataset root, or one split
    directory, labels optional (a test set)."""
    root = Path(root)
    dirs = data.split_dirs(root)
    if split == "all" or len(dirs) == 1:
        chosen = list(dirs.values())
    else:
        chosen = [data.split_dir(root, split)]
    return [c for d in chosen for c in data.discover(d, labels=False)]


def unseen(members, cases, held_out=False, allow_trained=False):
    """{case id: the members that predict it}: all of them, or with ``held_out`` those that did
    not train on it (a study's folds: each case by the models whose fold held it out). A case
    that a predicting member trained on is refused (a UsageError naming cases and members),
    unless ``allow_trained`` says it is meant: a score of it would measure memory, not skill."""
    unknown = [str(m[0]) for m in members if m[3] is None]
    if held_out and unknown:
        raise UsageError(f"--held-out: {len(unknown)} checkpoint(s) record no training cases (made before hie-ref "
                         f"recorded them), e.g. {unknown[0]}")
    if unknown:
        log(f"note: {len(unknown)} member(s) record no training cases: whether a case was seen cannot be checked")
    chosen, seen = {}, {}
    for case in cases:
        trained = [m for m in members if m[3] is not None and case in m[3]["train"]]
        chosen[case] = [m for m in members if m not in trained] if held_out else list(members)
        if (trained and not held_out and not allow_trained) or not chosen[case]:
            seen[case] = trained
    if seen:
        named = lambda ms: ", ".join(str(shown(m[0])) for m in ms[:2]) + (f", ... ({len(ms)})" if len(ms) > 2 else "")
        listed = "; ".join(f"{c} (by {named(ms)})" for c, ms in list(seen.items())[:3])
        raise UsageError(f"{len(seen)} case(s) to predict were trained on by {'every' if held_out else 'an'} ensemble "
                         f"member: {listed}{' ...' if len(seen) > 3 else ''}: --held-out to predict each case by the "
                         f"members that did not train on it, or --allow-trained if this is meant")
    return chosen


PROVENANCE = "predictions.json"       # beside the masks: which members predicted each case, which had seen it


def predict_cases(members, cases, out_dir, device, tta=False, probabilities=False, threshold=0.5, min_lesion=0.0,
                  ext=".mha", held_out=False, allow_trained=False):
    """``<case>_lesion.EXT`` (and ``<case>_probability.EXT``) for every case, in its ADC's
    geometry, EXT .mha or .nii.gz, each by the members ``unseen`` chooses; all or nothing:
    every case is checked before any is predicted (each broken one named in one DataError),
    and the masks are written into a temporary folder that becomes ``out_dir`` (or moves into
    it) at the end, with predictions.json. Returns the paths of the masks."""
    out_dir = Path(out_dir)
    chosen = unseen(members, [c.base for c in cases], held_out, allow_trained)
    problems = []
    for case in cases:
        try:
            data.load_case(case)
        except data.DataError as e:
            problems.append(str(e))
    if problems:
        raise data.DataError(report(f"--data ({len(cases)} case(s))", problems))

    def fill(tmp):
        for case in tqdm(cases, desc="predict", disable=None):
            mask, prob, native = predict_case(chosen[case.base], case, device, tta, threshold, min_lesion)
            data.write_mask(mask, native, Path(tmp) / f"{case.base}_lesion{ext}")
            if probabilities:
                data.write_image(prob, native, Path(tmp) / f"{case.base}_probability{ext}")
        write_json(Path(tmp) / PROVENANCE, {c: {"members": [str(m[0]) for m in ms], "trained_on": [
            str(m[0]) for m in ms if m[3] is not None and c in m[3]["train"]]} for c, ms in chosen.items()})
    atomic_dir(out_dir, fill, merge=True)
    return [out_dir / f"{case.base}_lesion{ext}" for case in cases]


def seen_in(pred_dir, cases):
    """The cases of ``cases`` that a member which predicted them had trained on, by the
    predictions.json that predict wrote beside the masks ({} without one)."""
    path = Path(pred_dir) / PROVENANCE
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return {c: record[c]["trained_on"] for c in cases if record.get(c, {}).get("trained_on")}


def _one_input(folder):
    files = sorted(p for p in folder.glob("*") if p.name.endswith((".mha", ".nii", ".nii.gz"))) \
        if folder.is_dir() else []
    if len(files) != 1:
        raise UsageError(f"{folder}: expected exactly one image file, found "
                         f"{len(files) if folder.is_dir() else 'no such folder'}"
                         f"{' (' + ', '.join(p.name for p in files[:4]) + ')' if len(files) > 1 else ''}")
    return files[0]


def grand_challenge(members, input_dir, output_dir, device, tta=False, threshold=0.5, min_lesion=0.0):
    """SPEC 11: the one case under ``input_dir`` (its ADC and ZADC folders, one file each)
    to ``output_dir``/images/hie-lesion-segmentation/overlay.mha, on the ADC's grid."""
    adc, zadc = _one_input(Path(input_dir) / GC_ADC), _one_input(Path(input_dir) / GC_ZADC)
    mask, _, native = predict_case(members, data.Case(adc.stem, adc, zadc), device, tta, threshold, min_lesion)
    out = Path(output_dir) / GC_OUTPUT
    data.write_mask(mask, native, out)
    log(f"wrote {shown(out)}: {int(mask.sum())} lesion voxels, the geometry of {adc.name}")
    return out
