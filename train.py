"""The paper's training run (SPEC 7): one loss, the three-level 3D U-Net, BONBID-HIE.

    python train.py --loss tversky_hdt --epochs 100
    python train.py --loss dice --data /path/to/BONBID-HIE --out runs/dice
    python train.py --loss dice --out runs/dice --resume        # continue a killed run

AdamW(lr 1e-3, weight decay 1e-3), ExponentialLR(0.9) per epoch, L1 1e-4 * sum |w|
added to the loss, gradient norm clipped to 1.0, batch 4, at most 100 epochs, early
stopping after 10 epochs without a better mean validation Dice, best checkpoint kept.

Without --data, a synthetic BONBID-HIE (data.synthesize) is made on first use and
reused. The run directory holds config.json, metrics.csv (a row per epoch), best.pt,
last.pt and summary.json; checkpoints are written atomically, so a killed run resumes
from its last finished epoch and ends with the same metrics.csv (but for `seconds`).
"""
import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import data
from losses import LOSS_NAMES, make_loss
from metrics import evaluate_case
from unet3d import UNet3D

HERE = Path(__file__).resolve().parent
CPU_GRID = (32, 32, 16)
COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_msd", "val_nsd", "lr", "seconds")


class UsageError(Exception):
    """A problem with what the user asked for: the command prints it and exits 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one line and status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------- arguments

def parser():
    p = OneLineParser(description="Train the paper's 3D U-Net with one of its six losses (SPEC 7).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--loss", required=True, help=f"one of {', '.join(LOSS_NAMES)}")
    p.add_argument("--data", type=Path, help="BONBID-HIE root (BONBID2023_Train/, BONBID2023_Val/); "
                                             "default: the synthetic set under data/synthetic")
    p.add_argument("--out", type=Path, help="run directory (default runs/LOSS)")
    p.add_argument("--cache", type=Path, default=HERE / "cache", help="preprocessing cache")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--lr-gamma", type=float, default=0.9, help="ExponentialLR factor per epoch")
    p.add_argument("--l1", type=float, default=1e-4, help="L1 penalty on the weights")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--patience", type=int, default=10, help="early stopping: epochs without a better val Dice")
    p.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help=f"preprocessing grid (default {data.GRID} on CUDA, {CPU_GRID} on the CPU)")
    p.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    p.add_argument("--no-augment", action="store_true", help="train without the SPEC 3 augmentation")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 with a GradScaler; CUDA only)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--synthetic-train", type=int, default=48, help="cases of the default synthetic set")
    p.add_argument("--synthetic-val", type=int, default=4)
    return p


def check_args(a):
    if a.loss not in LOSS_NAMES:
        raise UsageError(f"--loss: expected one of {', '.join(LOSS_NAMES)}; got {a.loss!r}")
    for name in ("epochs", "batch_size", "patience"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(a, name)}")
    if a.size and any(s < 8 or s % 8 for s in a.size):
        raise UsageError(f"--size: expected sides divisible by 8 (three 2x poolings), got {tuple(a.size)}")
    if a.resume and a.force:
        raise UsageError("--resume and --force: expected one of them, got both")


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


# --------------------------------------------------------------------------- data

def default_data(a):
    root = HERE / "data" / "synthetic"
    if (root / data.SPLITS[1]).is_dir():
        log(f"no --data: using the synthetic BONBID-HIE at {root} (made earlier)")
    else:
        log(f"no --data: making a synthetic BONBID-HIE at {root} ({a.synthetic_train} train, "
            f"{a.synthetic_val} val cases; once)")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".synthetic."))     # renamed when complete
        data.synthesize(tmp, a.synthetic_train, a.synthetic_val, seed=0)
        os.replace(tmp, root)
    return root


def splits(root):
    found = data.split_dirs(root)
    missing = [s for s in data.SPLITS if s not in found]
    if missing:
        raise data.DataError(f"{root}: expected {' and '.join(data.SPLITS)}/, missing {', '.join(missing)}/")
    return found[data.SPLITS[0]], found[data.SPLITS[1]]


# --------------------------------------------------------------------------- checkpoints

def atomic_write(path, write):
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over
    ``path``: a killed process leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text):
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_atomic(obj, path):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
    model = UNet3D().to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval()


# --------------------------------------------------------------------------- one epoch

def l1_penalty(model):
    """sum |w| over the trainable parameters (the paper's L1 regularisation)."""
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad)


def train_epoch(model, loader, criterion, optimizer, a, device, scaler):
    model.train()
    total, count = 0.0, 0
    amp = torch.autocast(device.type, dtype=torch.float16, enabled=a.amp)
    from tqdm import tqdm
    for image, label in tqdm(loader, desc="train", leave=False, disable=None):
        image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
        with amp:
            logits = model(image)
        loss = criterion(logits.float(), label)
        objective = loss + a.l1 * l1_penalty(model)
        if not torch.isfinite(objective):
            raise FloatingPointError(f"the loss became {objective.item()} (criterion {loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(image)
        count += len(image)
    return total / count


@torch.no_grad()
def predict_logits(model, image, device, amp=False):
    """(1,1,X,Y,Z) float32 lesion logits of one preprocessed (2,X,Y,Z) image."""
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        return model(torch.as_tensor(image)[None].to(device)).float()


@torch.no_grad()
def validate(model, files, criterion, device, tolerance, amp=False):
    """Mean validation loss and metrics, on the grid (the paper's protocol)."""
    model.eval()
    losses, rows = [], []
    for f in files:
        c = data.load_cached(f)
        logits = predict_logits(model, c["image"], device, amp)
        losses.append(criterion(logits, torch.from_numpy(c["label"])[None].float().to(device)).item())
        rows.append(evaluate_case((logits[0, 0] > 0).cpu().numpy(), c["label"][0], c["grid"].spacing, tolerance))
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    return {"val_loss": float(np.mean(losses)), "val_dice": mean("dice"), "val_msd": mean("msd"), "val_nsd": mean("nsd")}


# --------------------------------------------------------------------------- the run

def prepare_run_dir(a):
    out = a.out
    if out.exists() and any(out.iterdir()):
        if a.force:
            for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "summary.json"):
                (out / name).unlink(missing_ok=True)
        elif not a.resume:
            raise UsageError(f"{out}: the run directory exists; pass --resume to continue it or --force to overwrite it")
        elif not (out / "last.pt").exists():
            raise UsageError(f"{out}: --resume, but there is no last.pt to resume from")
    elif a.resume:
        raise UsageError(f"{out}: --resume, but there is no run there")
    out.mkdir(parents=True, exist_ok=True)


def snapshot(parts, state, config, grid, shuffle, device):
    """Everything a run needs to continue exactly: weights, optimizer, schedule, RNG states."""
    rng = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {**{k: v.state_dict() for k, v in parts.items()}, "state": state, "config": config,
            "grid": list(grid), "epoch": state["epoch"], "rng": rng}


def restore(ckpt, parts, shuffle, device):
    """Load a ``snapshot`` into the run's parts and RNGs; returns the run state."""
    for k, v in parts.items():
        v.load_state_dict(ckpt[k])
    torch.set_rng_state(ckpt["rng"]["torch"])
    shuffle.set_state(ckpt["rng"]["shuffle"])
    if device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    return ckpt["state"]


def write_metrics(path, rows):
    buffer = io.StringIO()
    w = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: f"{v:.2f}" if k == "seconds" else f"{v:.6g}" if isinstance(v, float) else v
                    for k, v in r.items()})
    write_text(path, buffer.getvalue())


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def run(a):
    check_args(a)
    device = pick_device(a.device)
    a.out = a.out or HERE / "runs" / a.loss
    if a.amp and device.type != "cuda":
        log("--amp ignored: mixed precision is for CUDA (bf16 autocast on a CPU without bf16 units is far slower)")
        a.amp = False
    prepare_run_dir(a)
    if a.size:
        grid = tuple(a.size)
    elif device.type == "cuda":
        grid = data.GRID
    else:
        grid = CPU_GRID
        log(f"no CUDA: training on a {grid} grid instead of the paper's {data.GRID} so the demo finishes "
            f"(--size 192 192 32 for the paper's)")
    root = a.data or default_data(a)
    train_dir, val_dir = splits(root)
    train_files = data.prepare(train_dir, a.cache, grid, log=log)
    val_files = data.prepare(val_dir, a.cache, grid, log=log)

    torch.manual_seed(a.seed)
    model = UNet3D().to(device)
    criterion = make_loss(a.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=a.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=a.amp and device.type == "cuda")
    shuffle = torch.Generator().manual_seed(a.seed)
    loader = torch.utils.data.DataLoader(data.HIEDataset(train_files, augment=not a.no_augment),
                                         batch_size=a.batch_size, shuffle=True, generator=shuffle,
                                         num_workers=a.workers, pin_memory=device.type == "cuda")
    state = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "bad_epochs": 0, "rows": []}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    config.update(grid=list(grid), device=str(device), data=str(root))
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    if a.resume:
        state = restore(load_checkpoint(a.out / "last.pt"), parts, shuffle, device)
        log(f"resuming {a.out} after epoch {state['epoch']}")
    write_json(a.out / "config.json", config)
    log(f"training {a.loss} on {device}: {len(train_files)} train / {len(val_files)} val cases, grid {grid}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters -> {a.out}")

    stopped = None
    while state["epoch"] < a.epochs and state["bad_epochs"] < a.patience:
        start = time.perf_counter()
        epoch = state["epoch"] + 1
        lr = optimizer.param_groups[0]["lr"]
        try:
            train_loss = train_epoch(model, loader, criterion, optimizer, a, device, scaler)
        except FloatingPointError as e:
            stopped = f"epoch {epoch}: {e}; stopped, last.pt and best.pt hold the last good epoch"
            break
        val = validate(model, val_files, criterion, device, a.tolerance, a.amp)
        scheduler.step()          # per epoch (SPEC 7)
        row = {"epoch": epoch, "train_loss": train_loss, **val, "lr": lr, "seconds": time.perf_counter() - start}
        state["rows"].append(row)
        state["epoch"] = epoch
        improved = val["val_dice"] > state["best_dice"]
        if improved:
            state.update(best_dice=val["val_dice"], best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        ckpt = snapshot(parts, state, config, grid, shuffle, device)
        if improved:
            save_atomic(ckpt, a.out / "best.pt")
        save_atomic(ckpt, a.out / "last.pt")
        write_metrics(a.out / "metrics.csv", state["rows"])
        log(f"epoch {epoch:3d}  loss {train_loss:.4f}  val loss {val['val_loss']:.4f}  dice {val['val_dice']:.4f}  "
            f"msd {val['val_msd']:.3f}  nsd {val['val_nsd']:.4f}  lr {lr:.2e}  {row['seconds']:.1f}s"
            + ("  *" if improved else ""))
    if stopped is None and state["bad_epochs"] >= a.patience:
        stopped = f"early stopping: no better validation Dice for {a.patience} epochs"
    summary = {"loss": a.loss, "epochs": state["epoch"], "best_epoch": state["best_epoch"],
               "best_val_dice": state["best_dice"], "stopped": stopped or "epoch limit",
               "seconds": sum(r["seconds"] for r in state["rows"]), "grid": list(grid), "device": str(device)}
    if state["rows"]:
        best = state["rows"][state["best_epoch"] - 1]
        summary.update(best_val_msd=best["val_msd"], best_val_nsd=best["val_nsd"])
    write_json(a.out / "summary.json", summary)
    log(f"done: {summary['stopped']}; best validation Dice {state['best_dice']:.4f} at epoch {state['best_epoch']} "
        f"-> {a.out / 'best.pt'}")
    if stopped and "became" in stopped:
        raise UsageError(stopped)
    return summary


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        run(a)
    except (UsageError, data.DataError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train.py: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
