"""From a checkpoint to scores: the model, its predictions, the metrics (SPEC 6, 6b).

    ckpt = load_checkpoint(path); model = model_from_checkpoint(ckpt, device)
    predict_case(model, cached, device, native=True)   -> (mask, label, spacing)
    score_case(pred, target, spacing, style="voxel")    -> {"dice", "msd", "nsd", ...}
    evaluate_checkpoint(ckpt, root, "val")              -> {style: (per-case rows, summary)}
    score_folders(pred_dir, target_dir, style)          -> per-case rows of any model's masks

Where the metrics are taken (SPEC 6): in each case's own geometry by default (the grid's
probability map resampled back to the case's size, spacing, origin and direction, then
thresholded at 0.5), or on the preprocessing grid (the paper's numbers). Three styles of
measuring (STYLES): voxel surfaces (the paper's, through MONAI), surfels (DeepMind's) and
the challenge's evaluator (surfels with its errata, metrics.challenge_case).
"""
import re
from pathlib import Path

import numpy as np
import torch

import data
from metrics import challenge_case, evaluate_case, summarize
from plumbing import UsageError
from unet3d import UNet3D

STYLES = ("voxel", "surfel", "challenge")       # the three ways of measuring (README)
CASE_ID = re.compile(r"[A-Za-z]+_\d+-VISIT_\d+")   # BONBID-HIE's, e.g. MGHNICU_010-VISIT_01
MASK_SUFFIXES = (".mha", ".nii", ".nii.gz")


# --------------------------------------------------------------------------- device and precision

def pick_device(name="auto"):
    """A torch.device from "auto" (CUDA when there is one), "cpu", "cuda", "cuda:1", ..."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


def amp_dtype(device):
    """Mixed precision's dtype: bf16 where the GPU has it in hardware (compute capability
    8.0 and later: no loss scaling needed), fp16 with a GradScaler on older GPUs (V100,
    T4), where ``torch.cuda.is_bf16_supported()`` may still say yes: it emulates bf16."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float16


def autocast(device, amp):
    return torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp)


# --------------------------------------------------------------------------- checkpoints and the model

def build_model(widths=(32, 64, 128), bottleneck=256, prior=0.0):
    """The SPEC 4 U-Net; ``prior`` 0 keeps PyTorch's default init of the head."""
    return UNet3D(widths=tuple(widths), bottleneck=bottleneck, prior=prior or None)


def load_checkpoint(path, device="cpu"):
    """A hie-ref checkpoint, or UsageError saying why the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:                                            # noqa: BLE001
        raise UsageError(f"{path}: not a hie-ref checkpoint (torch.load failed: {str(e).splitlines()[0][:100]})")
    if not isinstance(ckpt, dict) or not {"model", "config", "grid", "epoch"} <= set(ckpt):
        raise UsageError(f"{path}: not a hie-ref checkpoint (expected keys model, config, grid, epoch)")
    return ckpt


def model_from_checkpoint(ckpt, device):
    """The checkpoint's network, on ``device``, in eval mode."""
    config = ckpt["config"]
    model = build_model(**{k: config[k] for k in ("widths", "bottleneck") if k in config}).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval()


# --------------------------------------------------------------------------- prediction

@torch.no_grad()
def predict_logits(model, image, device, amp=False):
    """(1,1,X,Y,Z) float32 lesion logits of one preprocessed (2,X,Y,Z) image."""
    with autocast(device, amp):
        return model(torch.as_tensor(image)[None].to(device)).float()


def predict_case(model, cached, device, native=True):
    """(mask, label, spacing) of one preprocessed case: in its own geometry (label None:
    the caller reads it from its file), or on the grid."""
    prob = torch.sigmoid(predict_logits(model, cached["image"], device))[0, 0].cpu().numpy()
    if not native:
        return prob > 0.5, cached["label"][0], cached["grid"].spacing
    return (data.to_native(prob, cached["grid"], cached["native"]) > 0.5), None, cached["native"].spacing


# --------------------------------------------------------------------------- scores

def score_case(pred, target, spacing, tolerance=2.0, style="voxel"):
    """Metrics of one case in one style: voxel or surfel surfaces, or the challenge's evaluator."""
    if style == "challenge":
        return challenge_case(pred, target, spacing, tolerance)
    return evaluate_case(pred, target, spacing, tolerance, surfaces=style)


def evaluate_checkpoint(ckpt, root, split="val", grid_only=False, tolerance=2.0, device="cpu",
                        cache=data.CACHE, styles=("voxel",)):
    """{style: (per-case rows, summary)} for one checkpoint (a path or a loaded one) on
    one split; each case is predicted once and measured in each style of ``styles``."""
    device = torch.device(device)
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, device)
    model = model_from_checkpoint(ckpt, device)
    directory = data.split_dir(root, split)
    files = data.prepare(directory, cache, tuple(ckpt["grid"]))
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


def score_folders(pred_dir, target_dir, style="voxel", tolerance=2.0):
    """Per-case rows of a folder of predicted masks against the labels, paired by case id;
    every problem (unpaired, unreadable, other grid) named in one DataError."""
    preds, problems = mask_files(pred_dir, "--pred")
    targets, more = mask_files(target_dir, "--target")
    problems += more
    rows = score_pairs(preds, targets, style, tolerance, problems)
    if not rows and not problems:
        problems.append("no masks to score")
    if problems:
        raise data.DataError(data.report(f"score {pred_dir} against {target_dir}", problems))
    return rows
