"""From a checkpoint to scores: its predictions, post-processing, the metrics (SPEC 6, 6b, 6c, 9).

    predict_case(model, cached, device, native=True)   -> (probability map, label, spacing)
    post_process(prob, spacing, threshold, min_lesion)  -> mask: prob > threshold, small lesions dropped
    score_case(pred, target, spacing, style="voxel", units="mm") -> {"dice", "msd", "nsd", ...}
    lesion_scores(pred, target, spacing, burden)        -> SPEC 6c's lesion-wise values and burden group
    evaluate_checkpoint(ckpt, root, "val")              -> {style: (per-case rows, summary)}
    score_folders(pred_dir, target_dir, style)          -> per-case rows of any model's masks

Where the metrics are taken (SPEC 6): in each case's own geometry by default (the grid's
probability map resampled back to the case's size, spacing, origin and direction, then
thresholded at 0.5), or on the preprocessing grid (the paper's numbers). Four styles of
measuring (STYLES): voxel surfaces (the paper's, through MONAI), surfels (DeepMind's) and
the challenge's evaluator in its 2023 and 2024 versions (surfels with its errata,
metrics.challenge_case; "challenge" alone is 2023's). Every row of every style also holds
the case's lesion-wise values (SPEC 6c), the same in each style: they count voxels, not
surfaces.

Units (SPEC 6): distances in mm (the default), or in voxels of the arrays measured (unit
spacing, MONAI's default when no spacing is given: how the paper most likely measured, on its
grid; the NSD tolerance is then in voxels too). Lesion volumes and --min-lesion stay in mm^3.

The styles of measuring: docs/measuring.md; lesion by lesion: docs/lesions.md.
"""
import math
import re
from pathlib import Path

import numpy as np
import torch

import data
from checkpoints import load_checkpoint, model_from_checkpoint
from devices import autocast
from lesions import LESION_METRICS, burden, burden_group, lesion_metrics, remove_small_lesions
from metrics import METRICS, challenge_case, evaluate_case, summarize
from plumbing import UsageError, report

STYLES = ("voxel", "surfel", "challenge-2023", "challenge-2024")    # the ways of measuring (README)
UNITS = ("mm", "voxel")            # what surface distances and the NSD tolerance are measured in (SPEC 6)
# the lesion-wise columns of a scored case (SPEC 6c), after the style's dice, msd, nsd and voxel counts
LESION_COLUMNS = (*LESION_METRICS, "burden", "burden_group", "lesion_volumes", "lesion_detected", "grid_voxel_mm3")
SUMMARIZED = METRICS + LESION_METRICS
CASE_ID = re.compile(r"[A-Za-z]+_\d+-VISIT_\d+")   # BONBID-HIE's, e.g. MGHNICU_010-VISIT_01
MASK_SUFFIXES = (".mha", ".nii", ".nii.gz")


# --------------------------------------------------------------------------- prediction

@torch.no_grad()
def predict_logits(model, image, device, amp=False):
    """(1,1,X,Y,Z) float32 lesion logits of one preprocessed (2,X,Y,Z) image."""
    with autocast(device, amp):
        return model(torch.as_tensor(image)[None].to(device)).float()


def predict_case(model, cached, device, native=True):
    """(probability map, label, spacing) of one preprocessed case: in its own geometry (label
    None: the caller reads it from its file), or on the grid."""
    prob = torch.sigmoid(predict_logits(model, cached["image"], device))[0, 0].cpu().numpy()
    if not native:
        return prob, cached["label"][0], cached["grid"].spacing
    return data.to_native(prob, cached["grid"], cached["native"]), None, cached["native"].spacing


def post_process(prob, spacing, threshold=0.5, min_lesion=0.0):
    """The mask of a probability map (SPEC 9): prob > ``threshold``, then the predicted lesions
    (26-connected components) under ``min_lesion`` mm^3 dropped, in the map's geometry. The
    threshold 0.5 and the metrics in mm are decided here (docs/specification.md, "Decided here")."""
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold: expected a probability in (0, 1), got {threshold}")
    if min_lesion < 0:
        raise UsageError(f"--min-lesion: expected a volume >= 0 in mm^3, got {min_lesion}")
    return remove_small_lesions(prob > threshold, spacing, min_lesion) if min_lesion else prob > threshold


def post_name(threshold=0.5, min_lesion=0.0):
    """How masks were made from probabilities, as a name suffix: "" for the defaults, else
    e.g. "+pp(threshold=0.4,min_lesion=20)"."""
    parts = ([f"threshold={threshold:g}"] if threshold != 0.5 else []) + \
        ([f"min_lesion={min_lesion:g}"] if min_lesion else [])
    return f"+pp({','.join(parts)})" if parts else ""


# --------------------------------------------------------------------------- scores

def style_of(surfaces, version=2023):
    """The style's name: voxel, surfel, or challenge-VERSION for the challenge's evaluator."""
    return f"challenge-{version}" if surfaces == "challenge" else surfaces


def score_case(pred, target, spacing, tolerance=2.0, style="voxel", units="mm"):
    """Metrics of one case in one style: voxel or surfel surfaces, or the challenge's evaluator;
    distances in mm, or with ``units="voxel"`` in voxels of these arrays (unit spacing)."""
    if units not in UNITS:
        raise UsageError(f"--units: expected one of {', '.join(UNITS)}, got {units!r}")
    if units == "voxel":
        spacing = (1.0,) * np.ndim(pred)
    if style.startswith("challenge"):
        version = int(style.partition("-")[2] or 2023)
        return challenge_case(pred, target, spacing, tolerance, version=version)
    return evaluate_case(pred, target, spacing, tolerance, surfaces=style)


def grid_voxel_mm3(shape, spacing, grid):
    """The volume in mm^3 of one voxel of ``grid`` laid over a case of this shape and spacing
    (SPEC 2: the grid's spacing is spacing * size / grid): the smallest thing a model sees."""
    return float(np.prod(np.asarray(spacing, float) * np.asarray(shape) / np.asarray(grid)))


def lesion_scores(pred, target, spacing, burden_value=None, grid=None):
    """SPEC 6c's values of one case, as columns: the lesion-wise metrics, the burden and its
    group (empty without ``burden_value``: it needs the case's ADC map), per lesion of the
    label its volume in mm^3 and whether it was found, as ";"-separated lists, and the volume
    of a voxel of the model's ``grid`` over this case (NaN without a grid)."""
    m = lesion_metrics(pred, target, spacing)
    known = burden_value is not None
    return {**{k: m[k] for k in LESION_METRICS}, "burden": burden_value if known else math.nan,
            "burden_group": burden_group(burden_value) if known else "",
            "lesion_volumes": ";".join(f"{v:.2f}" for v in m["lesion_volumes"]),
            "lesion_detected": ";".join(str(int(d)) for d in m["lesion_detected"]),
            "grid_voxel_mm3": grid_voxel_mm3(np.shape(target), spacing, grid) if grid is not None else math.nan}


def case_probabilities(ckpt, root, split="val", grid_only=False, device="cpu", cache=data.CACHE):
    """(case id, probability map, label, spacing, burden) of each case of one split by one
    checkpoint (a path or a loaded one): the map and label in the case's own geometry, or on
    the grid; the burden from the case's own label and ADC files."""
    device = torch.device(device)
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, device)
    model = model_from_checkpoint(ckpt, device)
    directory = data.split_dir(root, split)
    files = data.prepare(directory, cache, tuple(ckpt["grid"]))
    cases = {c.base: c for c in data.discover(directory)}
    for f in files:
        c = data.load_cached(f)
        case = cases[c["base"]]
        prob, label, spacing = predict_case(model, c, device, native=not grid_only)
        native_label = data.read_image(case.label)[0]
        yield (c["base"], prob, native_label if label is None else label, spacing,
               burden(native_label, data.read_image(case.adc)[0]))


def msd_cap(shape, spacing, units="mm"):
    """What an infinite MSD (a missed lesion, a false alarm) counts as in a study: the diagonal of
    the case's field of view, in the study's units (decided here, as BraTS 2023's lesion-wise
    evaluation does): fixed per case before any run, so no other row can move it (SPEC 10)."""
    spacing = np.ones(len(shape)) if units == "voxel" else np.asarray(spacing, float)
    return float(np.sqrt(np.sum((np.asarray(shape) * spacing) ** 2)))


def score_styles(case, mask, label, spacing, burden_value, styles, tolerance=2.0, units="mm", grid=None):
    """{style: row} of one case's mask: each style's metrics, the lesion-wise values computed once,
    and the case's msd_cap (what an infinite MSD counts as in a study)."""
    lesion = {**lesion_scores(mask, label, spacing, burden_value, grid), "msd_cap": msd_cap(np.shape(label), spacing,
                                                                                              units)}
    return {style: {"case": case, **score_case(mask, label, spacing, tolerance, style, units), **lesion}
            for style in styles}


def evaluate_checkpoint(ckpt, root, split="val", grid_only=False, tolerance=2.0, device="cpu",
                        cache=data.CACHE, styles=("voxel",), threshold=0.5, min_lesion=0.0, units="mm"):
    """{style: (per-case rows, summary)} for one checkpoint (a path or a loaded one) on
    one split; each case is predicted once, made a mask by ``post_process``, measured in
    each style of ``styles``, and its lesion-wise values computed once for all of them."""
    rows = {style: [] for style in styles}
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, device)
    for case, prob, label, spacing, value in case_probabilities(ckpt, root, split, grid_only, device, cache):
        mask = post_process(prob, spacing, threshold, min_lesion)
        for style, row in score_styles(case, mask, label, spacing, value, styles, tolerance, units,
                                       ckpt["grid"]).items():
            rows[style].append(row)
    return {style: (r, summarize(r, SUMMARIZED)) for style, r in rows.items()}


# --------------------------------------------------------------------------- any model's masks

def mask_files(directory, flag):
    """({case id: path}, problems) of the mask files in ``directory`` (or its 3LABEL/)."""
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"{flag} {d}: expected a directory of masks, got {'a file' if d.exists() else 'nothing'}")
    if (d / data.FOLDERS["label"]).is_dir():
        d = d / data.FOLDERS["label"]
    files, problems = {}, []
    for path in sorted(d.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(MASK_SUFFIXES) or "_probability." in path.name:
            continue                                            # scores.csv, probability maps and the like
        m = CASE_ID.search(path.name)
        if m is None:
            problems.append(f"{path.name}: no BONBID-HIE case id (e.g. MGHNICU_010-VISIT_01) in its name")
        elif m[0] in files:
            problems.append(f"{m[0]}: two files, {files[m[0]].name} and {path.name}")
        else:
            files[m[0]] = path
    return files, problems


def read_mask(path, name=None):
    """(boolean mask, Geometry) of a 0/1 mask file, or ValueError saying what is wrong (of ``name``,
    by default the file's name)."""
    name = name or path.name
    try:
        array, geometry = data.read_image(path)
    except Exception as e:                                         # noqa: BLE001 - any reader failure
        raise ValueError(f"{name}: not a readable image ({str(e).strip().splitlines()[0]})")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name}: expected a 0/1 mask, got values such as "
                         f"{np.unique(array[~np.isin(array, (0, 1))])[:3].tolist()}")
    return array.astype(bool), geometry


def adc_files(target_dir):
    """{case id: ADC map} of the split whose labels ``target_dir`` names (its 1ADC_ss/), or
    None when it is a folder of labels alone: the burden groups need the brain's size."""
    d = Path(target_dir)
    if d.name == data.FOLDERS["label"]:
        d = d.parent
    if not (d / data.FOLDERS["adc"]).is_dir():
        return None
    return mask_files(d / data.FOLDERS["adc"], "--target")[0]


def score_pairs(preds, targets, style, tolerance, problems, adcs=None, units="mm"):
    """Per-case rows of the cases with both a prediction and a label; every problem
    appended to ``problems``. ``adcs`` ({case: ADC map}) gives the burden groups."""
    rows = []
    for case in sorted(set(preds) & set(targets)):
        read, errors = [], []
        for kind, path in (("prediction", preds[case]), ("label", targets[case])):
            try:                                # a prediction and its label may share a name: say which
                read.append(read_mask(path, f"{path.parent.name}/{path.name} (the {kind})"))
            except ValueError as e:
                errors.append(str(e))
        if errors:
            problems.append(f"{case}: {'; '.join(errors)}")
            continue
        (pred, pg), (label, lg) = read
        # the challenge's evaluator gives the prediction the label's geometry: only the size must agree
        diff = ["size"] if pg.size != lg.size else [] if style.startswith("challenge") else lg.differences(pg)
        if diff:
            problems.append(f"{case}: prediction and label on different grids ({pg.describe(diff)} vs "
                            f"{lg.describe(diff)})")
            continue
        value = None
        if adcs is not None:
            try:
                value = burden(label, data.read_image(adcs[case])[0]) if case in adcs else None
            except ValueError as e:
                problems.append(f"{case}: {adcs[case].name}: {e}")
                continue
            if value is None:
                problems.append(f"{case}: no ADC map in {data.FOLDERS['adc']}/ for its burden group")
                continue
        rows.append({"case": case, **score_case(pred, label, lg.spacing, tolerance, style, units),
                     **lesion_scores(pred, label, lg.spacing, value)})
    return rows


def unpaired(preds, targets):
    """The cases with a label and no prediction, or a prediction and no label, each named."""
    return ([f"{c}: a label ({targets[c].name}) without a prediction" for c in sorted(set(targets) - set(preds))]
            + [f"{c}: a prediction ({preds[c].name}) without a label" for c in sorted(set(preds) - set(targets))])


def pair_folders(pred_dir, target_dir, allow_missing=False, log=None):
    """(predictions, labels, problems) of two folders of masks, paired by case id: what
    ``score_folders`` scores, checked before anything is read (a dataset root given as the
    target is refused with its splits named)."""
    log = log or (lambda msg: None)
    splits = [d for d in data.SPLITS if (Path(target_dir) / d).is_dir()]
    if splits:
        raise UsageError(f"--target {target_dir}: a dataset root, expected one of its splits, e.g. "
                         f"{Path(target_dir) / splits[-1]}")
    preds, problems = mask_files(pred_dir, "--pred")
    targets, more = mask_files(target_dir, "--target")
    problems += more
    missing = unpaired(preds, targets)
    if allow_missing and missing:
        log(f"--allow-missing: {len(missing)} case(s) not scored: " + "; ".join(missing))
    elif missing:
        problems += missing
    return preds, targets, problems


def score_folders(pred_dir, target_dir, style="voxel", tolerance=2.0, allow_missing=False, log=None, units="mm"):
    """Per-case rows of a folder of predicted masks against the labels, paired by case id;
    every problem (unpaired, unreadable, other grid) named in one DataError. With
    ``allow_missing`` the pairs present are scored and the unpaired cases named in ``log``."""
    log = log or (lambda msg: None)
    preds, targets, problems = pair_folders(pred_dir, target_dir, allow_missing, log)
    adcs = adc_files(target_dir)
    if adcs is None:
        log(f"burden groups left empty: {target_dir} holds labels alone; the group needs the split's ADC maps "
            f"({data.FOLDERS['adc']}/ beside {data.FOLDERS['label']}/)")
    rows = score_pairs(preds, targets, style, tolerance, problems, adcs, units)
    if not rows and not problems:
        problems.append("no masks to score")
    if problems:
        raise data.DataError(report(f"score {pred_dir} against {target_dir}", problems))
    return rows
