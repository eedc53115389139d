"""The paper's training run (SPEC 7): one loss, the three-level 3D U-Net, BONBID-HIE.

    python train.py --loss tversky_hdt --epochs 100
    python train.py --loss dice --data /path/to/BONBID-HIE --out runs/dice
    python train.py --loss dice --out runs/dice --resume        # continue a killed run

AdamW(lr 1e-3, weight decay 1e-3), ExponentialLR(0.9) per epoch, L1 1e-4 * sum |w| added to the loss, gradient
norm clipped to 1.0, batch 4, at most 100 epochs, early stopping after 10 epochs without a better mean
validation Dice, best checkpoint kept.

Without --data, a synthetic BONBID-HIE (synthetic.synthesize) is made on first use and reused. The run
directory holds config.json, metrics.csv (a row per epoch), curves.png (every 10 epochs and at the end),
best.pt, last.pt and summary.json (with where the time went); checkpoints are written atomically, while the
next epoch trains, so a killed run resumes from its last finished epoch and ends with the same metrics.csv
(but for `seconds`; on CUDA with --deterministic). The per-epoch validation metrics (val_grid_*) are taken on
the preprocessing grid, as the paper did, the cases batched on the device.

CPU demo profile (SPEC 7): for the synthetic set on a machine without CUDA (no --data, no --size), or with
--cpu-demo, the values in CPU_DEMO replace the paper's (a smaller grid, a narrower network with half the
dropout, a larger synthetic set with more validation cases, a faster learning rate that decays slower, an
early stopping that validation noise cannot end too soon: stopping.py), so that the quickstart trains to a
useful model in minutes. One log line lists each departure, config.json records those that apply, and --paper
(or each value's own flag) restores the paper's. Real data (--data) gets the paper's values on any device; on
a CPU the log says what an epoch costs, from the first step. The validation Dice the epochs log (and early
stopping watches) is on the grid; the best checkpoint's Dice in each case's own geometry (SPEC 6, the number
to report) ends the run.

Augmentation (SPEC 3): by default the transforms as batched torch ops on the device (augment.TorchAugment),
equal to TorchIO's given the same parameters, at a twentieth of its cost; --augment torchio runs TorchIO
itself per case in the loader (the reference). On channels_last_3d memory (the CPU too); on CUDA --amp: bf16
autocast where the GPU has it, fp16 with a GradScaler otherwise; --compile: torch.compile. --loss also takes
your own (user_losses.py).

The quickstart, the CPU demo profile and where an epoch's time goes: docs/training.md.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
from augment import AUGMENTS, SPACES, make_augment
from checkpoints import (CheckpointWriter, build_model, check_run_dir, choose_run_dir, config_differences,
                         load_checkpoint, prepare_run_dir, restore, snapshot)
from devices import Compiled, amp_dtype, autocast, deterministic, pick_device
from evaluate import evaluate_checkpoint
from figures import curves
from losses import BLOB_NAMES, LOSS_NAMES
from metrics import msd_of, nsd_of, surface_distances
from plumbing import OneLineParser, UsageError, fmt, hold_lock, log, shown, strict, unwritable, write_csv, write_json
from stopping import stop_reason
from synthetic import default_data, synthetic_root
from user_losses import fingerprint, is_user_loss, loss_name, make_criterion

COLUMNS = ("epoch", "train_loss", "val_loss", "val_grid_dice", "val_grid_msd", "val_grid_nsd", "lr",
           "skipped_steps", "seconds")

# SPEC 4 and 7: the values the paper's run uses (and the size of the default synthetic set).
PAPER = {"size": data.GRID, "widths": (32, 64, 128), "bottleneck": 256, "dropout": (0.1, 0.2, 0.3, 0.4), "prior": 0.0,
         "lr": 1e-3, "lr_gamma": 0.9, "patience": 10, "min_epochs": 0, "min_delta": 0.0, "synthetic_train": 48,
         "synthetic_val": 4}
# Without CUDA and without --size: what replaces them so that the quickstart finishes on a laptop.
# Early stopping there: at least 22 epochs, then 2 without a gain of 0.01 (decided here, docs/training.md: on 16
# validation cases the Dice swings by 0.1 an epoch while it still rises, and patience alone stops on the first dip).
CPU_DEMO = {"size": (32, 32, 16), "widths": (16, 32, 64), "bottleneck": 128, "dropout": (0.05, 0.1, 0.15, 0.2),
            "prior": 0.01, "lr": 2e-3, "lr_gamma": 0.95, "patience": 2, "min_epochs": 22, "min_delta": 0.01,
            "synthetic_train": 64, "synthetic_val": 16}

REQUESTS = ("cpu_demo", "paper", "profile_reason")         # how the profile was asked for, not what it is

# --------------------------------------------------------------------------- arguments

def parser():
    p = OneLineParser(prog="train.py", description="Train the paper's 3D U-Net with one of its six losses (SPEC 7).",
                      epilog="The quickstart, the CPU demo profile and the run directory: docs/training.md; losses "
                             "with parameters, blob loss, your own: docs/losses.md.")
    paper = lambda k, what: f"{what} (default: the paper's {fmt(PAPER[k])}; the CPU demo's {fmt(CPU_DEMO.get(k, PAPER[k]))})"
    p.add_argument("--loss", required=True, help=f"one of {', '.join(LOSS_NAMES)} (the paper's), {', '.join(BLOB_NAMES)} "
                   f"(blob loss, SPEC 5b), with any parameter by name, e.g. \"tversky_hdt(a=0.7, b=0.3)\"; or your "
                   f"own: path/to/file.py:Name or module:name (an nn.Module class or a function)")
    p.add_argument("--data", type=Path, help="BONBID-HIE root (BONBID2023_Train/, BONBID2023_Val/) (default: the "
                                             "synthetic set data/synthetic-TRAIN-VAL, made once)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/LOSS, then runs/LOSS-2, ...)")
    p.add_argument("--cache", type=Path, default=data.CACHE, help="preprocessing cache")
    p.add_argument("--epochs", type=int, default=100, help="at most this many epochs (SPEC 7)")
    p.add_argument("--batch-size", type=int, default=4, help="cases per step (SPEC 7)")
    p.add_argument("--lr", type=float, help=paper("lr", "AdamW learning rate"))
    p.add_argument("--weight-decay", type=float, default=1e-3, help="AdamW weight decay (SPEC 7)")
    p.add_argument("--lr-gamma", type=float, help=paper("lr_gamma", "ExponentialLR factor per epoch"))
    p.add_argument("--l1", type=float, default=1e-4, help="L1 penalty on the weights")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--patience", type=int, help=paper("patience", "early stopping: epochs without a better val Dice"))
    p.add_argument("--min-epochs", type=int, help=paper("min_epochs", "early stopping: epochs before any stop"))
    p.add_argument("--min-delta", type=float, help=paper("min_delta", "early stopping: the gain in val Dice that counts "
                                                                     "as better"))
    p.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), help=paper("size", "preprocessing grid"))
    p.add_argument("--widths", type=int, nargs=3, metavar=("W1", "W2", "W3"),
                   help=paper("widths", "U-Net channels of the three levels"))
    p.add_argument("--bottleneck", type=int, help=paper("bottleneck", "U-Net bottleneck channels"))
    p.add_argument("--dropout", type=float, nargs=4, metavar=("D1", "D2", "D3", "DB"), help=paper("dropout",
                   "Dropout3d rates of the three levels (the decoder mirrors them) and the bottleneck"))
    p.add_argument("--prior", type=float, help=paper("prior", "initial lesion probability of the head's bias, 0 for "
                                                              "PyTorch's default init"))
    p.add_argument("--paper", action="store_true", help="the paper's values even without CUDA (no CPU demo profile)")
    p.add_argument("--cpu-demo", action="store_true", help="the CPU demo profile (CPU_DEMO) even with --data or CUDA "
                                                           "(default: only for the synthetic set on a CPU)")
    p.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    p.add_argument("--augment", choices=AUGMENTS, help="SPEC 3 augmentation: TorchIO per case in the loader "
                   "(the reference), the same transforms as batched torch ops on the device, or none "
                   "(default: torch)")
    p.add_argument("--augment-space", choices=SPACES, default="mm", help="SPEC 3: the transforms' millimetres in "
                   "each case's grid spacing (mm), or in voxels as 1 mm (voxel: what the paper most likely ran, its "
                   "volumes saved without geometry)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA: bf16 autocast where the GPU has "
                                                      "bf16, else fp16 with a GradScaler")
    p.add_argument("--device", default="auto", help="auto (CUDA if there is one), cpu, cuda, cuda:N")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="the model and its input in channels_last_3d memory, which the fast 3-D kernels of "
                        "cuDNN and oneDNN (CPU) want (default: on)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; falls back to eager with a "
                                                          "log line if compiling fails)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms and cuDNN, benchmark off: "
                                                                "a CUDA run and its resume repeat each other")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the shuffling and the augmentation")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--synthetic-train", type=int, help=paper("synthetic_train", "training cases of the synthetic set"))
    p.add_argument("--synthetic-val", type=int, help=paper("synthetic_val", "its validation cases"))
    return p


def check_args(a):
    loss_name(a.loss)                        # a malformed name, parameter or clash: UsageError
    for name in ("epochs", "batch_size", "patience", "bottleneck", "synthetic_train", "synthetic_val"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(a, name)}")
    if a.size and any(s < 8 or s % 8 for s in a.size):
        raise UsageError(f"--size: expected sides divisible by 8 (three 2x poolings), got {tuple(a.size)}")
    if a.min_epochs is not None and a.min_epochs < 0:
        raise UsageError(f"--min-epochs: expected an integer >= 0, got {a.min_epochs}")
    if a.min_delta is not None and not 0 <= a.min_delta < 1:
        raise UsageError(f"--min-delta: expected a Dice gain in [0, 1), got {a.min_delta}")
    if a.prior is not None and not 0 <= a.prior < 1:
        raise UsageError(f"--prior: expected a probability in [0, 1) (0: PyTorch's default init), got {a.prior}")
    if a.dropout and any(not 0 <= d < 1 for d in a.dropout):
        raise UsageError(f"--dropout: expected four rates in [0, 1), got {tuple(a.dropout)}")
    if a.widths and any(w < 1 for w in a.widths):
        raise UsageError(f"--widths: expected three positive channel counts, got {tuple(a.widths)}")
    if a.resume and a.force:
        raise UsageError("--resume and --force: expected one of them, got both")


def apply_profile(a, device):
    """Fill the values left unset (SPEC 7): the paper's (PAPER), or the CPU demo's (CPU_DEMO)
    with --cpu-demo, or on a machine without CUDA for the synthetic default (no --data, no
    --size, no --paper). Real data gets the paper's values on any device. Returns {name:
    [value, paper's value]} for each departure that applies (the synthetic set's size only
    without --data)."""
    if getattr(a, "cpu_demo", False) and a.paper:
        raise UsageError("--cpu-demo and --paper: expected one of them, got both")
    demo = getattr(a, "profile", None) == "cpu-demo" or getattr(a, "cpu_demo", False) or \
        (device.type != "cuda" and a.size is None and not a.paper and a.data is None)
    a.profile = "cpu-demo" if demo else "paper"                  # kept when a resolved ``a`` is resolved again
    if demo and not getattr(a, "profile_reason", None):          # what the log says (a study says its own)
        a.profile_reason = "--cpu-demo" if getattr(a, "cpu_demo", False) else "no CUDA, the synthetic set, no --size"
    departures = {}
    for name, paper_value in PAPER.items():
        if getattr(a, name) is None:
            setattr(a, name, CPU_DEMO.get(name, paper_value) if demo else paper_value)
        value = tuple(getattr(a, name)) if isinstance(paper_value, tuple) else getattr(a, name)
        setattr(a, name, value)
        if value != paper_value and not (name.startswith("synthetic") and a.data is not None):
            departures[name] = [value, paper_value]
    a.augment = a.augment or "torch"          # equal to TorchIO's transforms, at a twentieth of the cost
    return departures


# --------------------------------------------------------------------------- one epoch

def l1_penalty(model):
    """sum |w| over the trainable parameters (the paper's L1 regularisation). Decided here
    (docs/specification.md, "Decided here"): every trainable parameter, biases and
    BatchNorm's included; the paper names no subset."""
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad)


def train_epoch(model, loader, criterion, optimizer, device, scaler, l1=1e-4, clip=1.0, amp=False, augment=None,
                forward=None, channels_last=False, first_step=None):
    """One pass over ``loader`` of (image, label, affine) batches. Returns (mean training
    loss, steps skipped).

    ``augment`` (augment.TorchAugment) runs on the batch once it is on the device;
    ``forward`` (default ``model``) is what computes the logits (a compiled model);
    ``channels_last`` hands the model its input in channels_last_3d memory. Nothing
    here waits for the device: the loss is accumulated there and read once, at the end;
    the labels were checked by the dataset; under fp16 the GradScaler skips a step whose
    gradients overflow (and lowers its scale), as PyTorch intends, and such a step is
    counted on the device, not fatal. The run stops only when the float32 loss itself is
    not finite (FloatingPointError). ``first_step(seconds)`` hears how long the first step took.
    """
    model.train()
    total = torch.zeros((), device=device)
    skipped = torch.zeros((), device=device, dtype=torch.long)
    count, start = 0, time.perf_counter()
    for image, label, affine in tqdm(loader, desc="train", leave=False, disable=None):
        image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
        if augment is not None:
            image, label = augment(image, label, affine)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        with autocast(device, amp):
            logits = (forward or model)(image)
        loss = criterion(logits.float(), label)
        objective = loss + l1 * l1_penalty(model)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler.is_enabled():
            skipped += (~torch.isfinite(norm)).long()      # exactly the steps GradScaler.step skips
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach() * len(image)
        if first_step is not None and count == 0:
            first_step(time.perf_counter() - start)
        count += len(image)
    mean = total.item() / count
    if not math.isfinite(mean):
        raise FloatingPointError(f"the loss became {mean}")
    return mean, int(skipped.item())


def load_val(files, device):
    """The validation cases, read once: images and labels stacked on ``device``, labels and
    spacings on the host too (for the surface metrics)."""
    cases = [data.load_cached(f) for f in files]
    labels = np.stack([c["label"] for c in cases])
    return {"images": torch.from_numpy(np.stack([c["image"] for c in cases])).to(device),
            "labels": torch.from_numpy(labels).float().to(device), "host_labels": labels > 0.5,
            "spacings": [c["grid"].spacing for c in cases]}


def grid_dice(pred, target):
    """Per-sample Dice of (N, 1, ...) boolean masks on their device (1 where both are empty)."""
    dims = tuple(range(1, pred.ndim))
    total = pred.sum(dims) + target.sum(dims)
    return torch.where(total > 0, 2 * (pred & target).sum(dims) / total.clamp(min=1), 1.0)


@torch.no_grad()
def validate(model, val, criterion, device, tolerance, amp=False, batch_size=4, channels_last=False):
    """Mean validation loss and metrics, on the grid (the paper's protocol); the loss of each case
    alone, then the mean (decided here, docs/specification.md "Decided here"). The cases go
    through the model a batch at a time and their loss and Dice stay on the device, read
    once; MSD and NSD are surface metrics, taken on the host from one copy of the masks."""
    model.eval()
    losses, dices, masks = [], [], []
    for s in range(0, len(val["images"]), batch_size):
        x, g = val["images"][s:s + batch_size], val["labels"][s:s + batch_size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with autocast(device, amp):
            logits = model(x).float()
        losses += [criterion(logits[i:i + 1], g[i:i + 1]) for i in range(len(x))]
        dices.append(grid_dice(logits > 0, g > 0.5))
        masks.append(logits > 0)
    host = torch.cat(masks).cpu().numpy()
    surface = [surface_distances(host[i, 0], val["host_labels"][i, 0], spacing)
               for i, spacing in enumerate(val["spacings"])]
    return {"val_loss": torch.stack(losses).mean().item(), "val_grid_dice": torch.cat(dices).mean().item(),
            "val_grid_msd": float(np.mean([msd_of(d) for d in surface])),
            "val_grid_nsd": float(np.mean([nsd_of(d, tolerance) for d in surface]))}


# --------------------------------------------------------------------------- the run

def write_metrics(path, rows):
    write_csv(path, [{k: f"{v:.2f}" if k == "seconds" else f"{v:.6g}" if isinstance(v, float) else v
                      for k, v in r.items()} for r in rows], COLUMNS)


def plan(a):
    """Resolve the settings of a run without writing anything: (device, config).

    ``a`` gets the profile's values (apply_profile); ``config`` is what config.json
    records and what --resume and ``hie_ref.py study`` compare against.
    """
    check_args(a)
    if not is_user_loss(a.loss):
        a.loss = loss_name(a.loss)                              # one spelling of each built-in and its parameters
    device = pick_device(a.device)
    departures = apply_profile(a, device)
    if a.channels_last is None:
        a.channels_last = True       # cuDNN's and oneDNN's fast 3-D kernels want it: 0.8x a CPU demo step
    if a.amp and device.type != "cuda":
        log("--amp ignored: mixed precision is for CUDA (bf16 autocast on a CPU without bf16 units is far slower)")
        a.amp = False
    root = Path(a.data) if a.data else synthetic_root(a.synthetic_train, a.synthetic_val)
    # the profile asked for (--cpu-demo, --paper) and why are not settings: "profile" is what applied
    config = {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in vars(a).items()
              if k not in REQUESTS}
    config.update(fingerprint(a.loss))                           # your own loss: its file and hash
    config["preprocess"] = data.PREPROCESS_VERSION              # what an ensemble's members must share
    config.update(grid=list(a.size), device=str(device), data=str(root.resolve()), departures=departures,
                  precision=str(amp_dtype(device)).removeprefix("torch.") if a.amp else "float32")
    return device, json.loads(json.dumps(strict(config)))       # as config.json will read back


def run(a):
    device, config = plan(a)
    criterion = make_criterion(a.loss)              # your own loss is checked on a tiny batch first
    a.out = choose_run_dir(a)
    config["out"] = str(a.out)
    with hold_lock(a.out, "training run"):             # one writer per run directory
        return _run(a, device, config, criterion)


def _run(a, device, config, criterion):             # ``run`` once it holds its run directory
    check_run_dir(a.out, a.resume, a.force)
    if config["departures"]:
        why = f"CPU demo profile ({a.profile_reason})" if a.profile == "cpu-demo" else "departures from the paper"
        log(f"{why}: " + "; ".join(
            f"{k.replace('_', '-')} {fmt(v)} ({'default' if k.startswith('synthetic') else 'paper'} "
            f"{fmt(p)})" for k, (v, p) in config["departures"].items()) + "; --paper restores the paper's values")
    grid, start = a.size, time.perf_counter()
    root = Path(a.data) if a.data else default_data(a.synthetic_train, a.synthetic_val)
    train_files, val_files = data.prepare_splits(root, a.cache, grid, log=log)      # every broken case, before the run is written
    data_seconds = time.perf_counter() - start
    if a.resume:
        ckpt = load_checkpoint(a.out / "last.pt")        # a run from before --dropout had the paper's rates
        diff = config_differences({"dropout": list(PAPER["dropout"]), "min_epochs": 0, "min_delta": 0.0,
                                   **ckpt["config"]}, config)
        if diff:
            raise UsageError(f"{a.out}: --resume with other settings than the run's: {'; '.join(diff)} "
                             f"(--out elsewhere or --force to start over)")
    prepare_run_dir(a.out, a.force)

    with deterministic(a.deterministic, device):
        return fit(a, device, config, criterion, train_files, val_files, ckpt if a.resume else None, data_seconds)


CURVES_EVERY = 10          # epochs between redraws of curves.png (and it is drawn at the end)


def fit(a, device, config, criterion, train_files, val_files, ckpt=None, data_seconds=0.0):
    """The epochs of ``run``, once its settings, data and run directory are in place (``ckpt``: resume from it);
    each checkpoint records the cases it trains and stops on (predict and score refuse a trained-on case)."""
    grid = a.size
    torch.manual_seed(a.seed)
    layout = torch.channels_last_3d if a.channels_last else torch.contiguous_format
    model = build_model(a.widths, a.bottleneck, a.prior, a.dropout).to(device, memory_format=layout)
    forward = Compiled(model) if a.compile else model
    # fused AdamW on CUDA takes the GradScaler's inf check itself: no host sync per step
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay,
                                  fused=True if device.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=a.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=a.amp and amp_dtype(device) == torch.float16)
    shuffle = torch.Generator().manual_seed(a.seed)
    # torch: on the device, per batch; torchio: in the loader, per case; both draw from torch's seeded RNG
    augment = make_augment(a.augment, a.augment_space)
    on_device = augment if a.augment == "torch" else None
    loader = torch.utils.data.DataLoader(data.HIEDataset(train_files, None if on_device else augment),
                                         batch_size=a.batch_size, shuffle=True, generator=shuffle,
                                         num_workers=a.workers, pin_memory=device.type == "cuda")
    # no persistent workers: each epoch's workers are seeded from ``shuffle``, whose state the
    # checkpoint keeps, so that a resumed run repeats the uninterrupted one
    state = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "rows": []}
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    if ckpt is not None:
        state = restore(ckpt, parts, shuffle, device)
        log(f"resuming {shown(a.out)} after epoch {state['epoch']}")
    state["cases"] = {"train": sorted(Path(f).stem for f in train_files), "val": sorted(Path(f).stem for f in val_files)}
    write_json(a.out / "config.json", config)
    log(f"training {loss_name(a.loss)} on {device}: {len(train_files)} train / {len(val_files)} val cases, grid {grid}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters -> {shown(a.out)}")
    val, writer = load_val(val_files, device), CheckpointWriter(a.out)
    # where the time went, over every session of the run: a resume adds to what the checkpoint recorded
    clock = {"data": 0.0, "steps": 0.0, "validation": 0.0, "checkpoints": 0.0, "curves": 0.0, **state.get("time", {})}
    clock["data"] += data_seconds
    state["time"] = clock
    try:
        stopped = epochs(a, device, config, model, forward, loader, criterion, optimizer, scheduler, scaler, shuffle,
                         on_device, val, writer, state, parts, clock)
        tick = time.perf_counter()
        writer.wait()
        clock["checkpoints"] += (middle := time.perf_counter()) - tick
        curves(a.out / "curves.png", [a.out])
        clock["curves"] += time.perf_counter() - middle
    finally:
        writer.wait()                                       # a kill keeps the last finished epoch
    if stopped is None:
        stopped = stop_reason(history(state), a.patience, a.min_epochs, a.min_delta)
    summary = {"loss": loss_name(a.loss), "epochs": state["epoch"], "best_epoch": state["best_epoch"],
               "best_val_grid_dice": state["best_dice"], "stopped": stopped or "epoch limit",
               "seconds": sum(r["seconds"] for r in state["rows"]), "grid": list(grid), "device": str(device),
               "time": clock}
    if state["rows"]:
        best = state["rows"][state["best_epoch"] - 1]
        summary.update(best_val_grid_msd=best["val_grid_msd"], best_val_grid_nsd=best["val_grid_nsd"])
    write_json(a.out / "summary.json", summary)
    log(f"done: {summary['stopped']}; best validation Dice (grid) {state['best_dice']:.4f} at epoch "
        f"{state['best_epoch']} -> {shown(a.out / 'best.pt')}")
    if stopped and "became" in stopped:
        raise UsageError(stopped)
    return summary


def history(state):
    """The validation Dice of each finished epoch: what early stopping reads (stopping.py)."""
    return [r["val_grid_dice"] for r in state["rows"]]


def epochs(a, device, config, model, forward, loader, criterion, optimizer, scheduler, scaler, shuffle, on_device,
           val, writer, state, parts, clock):
    """Train until the epoch limit or early stopping, each epoch's parts timed into ``clock``;
    returns why it stopped early, or None."""
    announce = device.type != "cuda" and a.profile == "paper" and state["epoch"] == 0
    first_step = (lambda seconds: log(
        f"the paper's profile on a {device.type.upper()}: the first step took {seconds:.1f} s, so an epoch of "
        f"{len(loader)} steps takes about {seconds * len(loader) / 60:.1f} min, and {a.epochs} epochs at most "
        f"{seconds * len(loader) * a.epochs / 3600:.1f} h (--cpu-demo: the CPU demo profile)")) if announce else None
    while state["epoch"] < a.epochs and not stop_reason(history(state), a.patience, a.min_epochs, a.min_delta):
        start = time.perf_counter()
        epoch = state["epoch"] + 1
        lr = optimizer.param_groups[0]["lr"]
        try:
            train_loss, skipped = train_epoch(model, loader, criterion, optimizer, device, scaler, l1=a.l1,
                                              clip=a.clip, amp=a.amp, augment=on_device, forward=forward,
                                              channels_last=a.channels_last, first_step=first_step)
        except FloatingPointError as e:
            return f"epoch {epoch}: {e}; stopped, last.pt and best.pt hold the last good epoch"
        first_step, tick = None, time.perf_counter()
        clock["steps"] += tick - start
        val_row = validate(model, val, criterion, device, a.tolerance, a.amp, a.batch_size, a.channels_last)
        clock["validation"] += time.perf_counter() - tick
        scheduler.step()          # per epoch: decided here (docs/specification.md, "Decided here")
        state["epoch"] = epoch
        # early stopping watches the mean validation Dice on the grid, a tie being no improvement: decided here
        # (docs/specification.md, "Decided here"); best.pt is the best epoch, by any margin
        improved = val_row["val_grid_dice"] > state["best_dice"]
        if improved:
            state.update(best_dice=val_row["val_grid_dice"], best_epoch=epoch)
        tick = time.perf_counter()
        row = {"epoch": epoch, "train_loss": train_loss, **val_row, "lr": lr, "skipped_steps": skipped,
               "seconds": tick - start}
        state["rows"].append(row)
        writer.save(snapshot(parts, state, config, a.size, shuffle, device), best=improved)
        write_metrics(a.out / "metrics.csv", state["rows"])
        clock["checkpoints"] += time.perf_counter() - tick
        if epoch % CURVES_EVERY == 0:
            tick = time.perf_counter()
            curves(a.out / "curves.png", [a.out])
            clock["curves"] += time.perf_counter() - tick
        log(f"epoch {epoch:3d}  loss {train_loss:.4f}  val loss {val_row['val_loss']:.4f}  grid dice "
            f"{val_row['val_grid_dice']:.4f}  msd {val_row['val_grid_msd']:.3f}  nsd {val_row['val_grid_nsd']:.4f}  "
            f"lr {lr:.2e}{f'  {skipped} fp16 steps skipped' if skipped else ''}  {row['seconds']:.1f}s"
            + ("  *" if improved else ""))
    return None


def report_native(a, summary):
    """The best checkpoint's mean val Dice in each case's own geometry (SPEC 6), into summary.json."""
    root = Path(a.data) if a.data else synthetic_root(a.synthetic_train, a.synthetic_val)
    device = pick_device(a.device)
    native = evaluate_checkpoint(a.out / "best.pt", root, "val", device=device, cache=a.cache)["voxel"][1]
    summary["best_val_native_dice"] = native["dice"]["mean"]
    write_json(a.out / "summary.json", summary)
    log(f"best validation Dice {summary['best_val_grid_dice']:.4f} on the {fmt(tuple(a.size))} grid (what early "
        f"stopping watches), {native['dice']['mean']:.4f} in each case's own geometry (the number to report; "
        f"hie_ref.py evaluate --checkpoint {shown(a.out)} for every metric)")


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        summary = run(a)
        if summary["epochs"]:
            report_native(a, summary)
    except (UsageError, data.DataError, OSError) as e:     # an unwritable or full --out too: one line
        if (message := e if isinstance(e, (UsageError, data.DataError)) else unwritable(e)) is None:
            raise
        print(f"train.py: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = getattr(a, "out", None) is not None and (Path(a.out) / "last.pt").exists()
        print("train.py: interrupted; " + ("resume with --resume" if resumable else "before the first epoch ended, "
              "so there is nothing to resume: run the same command again"), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
