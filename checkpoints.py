"""Checkpoints and the run directory (SPEC 7): what a checkpoint holds, writing them while
training goes on, reading them back with a plain line for each kind of wrong file, the way
from a bare UNet3D state_dict to one, and where a run goes (runs/LOSS, runs/LOSS-2, ...).

    ckpt = load_checkpoint(path or run directory)        # weights_only=True: tensors and plain values
    model = model_from_checkpoint(ckpt, device)
    writer = CheckpointWriter(run_dir); writer.save(snapshot(...), best=True); writer.wait()
    checkpoint_from_state_dict(state_dict, grid)         # your own loop's UNet3D weights

From a bare state_dict to a checkpoint, and what evaluate and predict take: docs/submission.md.
"""
import os
import shutil
import threading
from pathlib import Path

import torch

import data
from plumbing import HERE, LOCK, UsageError, log, shown, staged
from unet3d import UNet3D
from user_losses import run_name

__all__ = ["build_model", "load_checkpoint", "checkpoint_file", "checkpoint_from_state_dict", "model_from_checkpoint",
           "snapshot", "restore", "CheckpointWriter", "config_differences", "CHECKPOINT_KEYS", "TO_CHECKPOINT"]


def build_model(widths=(32, 64, 128), bottleneck=256, prior=0.0, dropout=None):
    """The SPEC 4 U-Net; ``prior`` 0 keeps PyTorch's default init of the head; ``dropout``:
    the rates of the three levels and of the bottleneck (None: UNet3D's, the paper's;
    inference ignores them)."""
    rates = {} if dropout is None else {"dropout": tuple(dropout[:3]), "bottleneck_dropout": dropout[3]}
    return UNet3D(widths=tuple(widths), bottleneck=bottleneck, prior=prior or None, **rates)


CHECKPOINT_KEYS = ("model", "config", "grid", "epoch")
TO_CHECKPOINT = "python hie_ref.py checkpoint --state-dict FILE --out best.pt"    # the way from a bare state_dict


def checkpoint_file(path):
    """The checkpoint a path names: the file itself, or a run directory's best.pt."""
    path = Path(path)
    if path.is_dir():
        if (path / "best.pt").is_file():
            return path / "best.pt"
        below = sorted(path.rglob("best.pt"))
        raise UsageError(f"{path}: expected a run directory with best.pt or a checkpoint file, got a directory "
                         + (f"of {len(below)} runs (predict takes them all as an ensemble)" if below else
                            "without best.pt"))
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    return path


def load_checkpoint(path, device="cpu"):
    """A hie-ref checkpoint (a file, or a run directory's best.pt), or one UsageError naming
    the file and saying what it is instead: not a PyTorch file, a PyTorch file that pickles
    code (refused: checkpoints load with ``weights_only=True``), a bare UNet3D state_dict (with
    the way to a checkpoint), or another PyTorch file."""
    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception:                                                 # noqa: BLE001 - what it is, below
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] != b"PK" and head[:1] != b"\x80":              # torch's zip archive, or a legacy pickle
            raise UsageError(f"{path}: not a PyTorch file (expected a hie-ref checkpoint, e.g. runs/LOSS/best.pt; "
                             f"it begins {head!r})") from None
        raise UsageError(f"{path}: a PyTorch file that does not load with weights_only=True (it pickles Python "
                         f"objects): expected a hie-ref checkpoint of tensors and plain values") from None
    if isinstance(ckpt, dict) and "encoders.0.0.weight" in ckpt:
        raise UsageError(f"{path}: a bare UNet3D state_dict, not a hie-ref checkpoint (which also records the grid "
                         f"and the network's widths); make one with: {TO_CHECKPOINT.replace('FILE', str(path))}")
    if not isinstance(ckpt, dict) or not set(CHECKPOINT_KEYS) <= set(ckpt):
        got = f"keys {', '.join(map(str, list(ckpt)[:6]))}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise UsageError(f"{path}: a PyTorch file but not a hie-ref checkpoint (expected keys "
                         f"{', '.join(CHECKPOINT_KEYS)}; got {got})")
    return ckpt


def checkpoint_from_state_dict(state_dict, grid=data.GRID):
    """A hie-ref checkpoint around a bare ``UNet3D`` state_dict (what a training loop of your
    own around the copied unet3d.py saves): the widths and bottleneck read from the weights'
    shapes, ``grid`` the preprocessing grid the network was trained on (SPEC 2; the
    preprocessing must be hie-ref's). UsageError if the weights are no three-level UNet3D's."""
    try:
        widths = [int(state_dict[f"encoders.{i}.0.weight"].shape[0]) for i in range(3)]
        bottleneck = int(state_dict["bottleneck.0.weight"].shape[0])
        build_model(widths, bottleneck).load_state_dict(state_dict)
    except (KeyError, RuntimeError, AttributeError, TypeError) as e:
        raise UsageError(f"the state_dict: expected the weights of unet3d.UNet3D (three levels, 2 inputs, 1 output), "
                         f"got {type(e).__name__}: {str(e).strip().splitlines()[0][:120]}") from None
    config = {"widths": widths, "bottleneck": bottleneck, "grid": list(grid), "preprocess": data.PREPROCESS_VERSION,
              "source": "a bare UNet3D state_dict"}
    return {"model": dict(state_dict), "config": config, "grid": list(grid), "epoch": 0}


def model_from_checkpoint(ckpt, device):
    """The checkpoint's network, on ``device``, in eval mode."""
    config = ckpt["config"]
    model = build_model(**{k: config[k] for k in ("widths", "bottleneck") if k in config}).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval()



# --------------------------------------------------------------------------- writing

# Settings that may differ when a run is resumed: where things are and how fast, not what is trained.
SPEED = {"device", "workers", "channels_last", "compile", "deterministic"}     # how, not what, is trained
RESUMABLE = {"out", "cache", "resume", "force", "epochs", "cpu_demo", "paper"} | SPEED    # (a run from before
# config.json left out --cpu-demo and --paper, requests rather than settings, still has them: the profile decides)


def config_differences(saved, config, may_differ=RESUMABLE):
    """The settings in which ``config`` (this command) differs from ``saved`` (a run's),
    each with both values; of ``may_differ``, --epochs may only grow."""
    keys = sorted((set(saved) | set(config)) - set(may_differ))
    out = [f"{k} {saved.get(k)!r} -> {config.get(k)!r}" for k in keys
           if saved.get(k) != config.get(k) and not isinstance(saved.get(k, config.get(k)), dict)]
    for k in keys:                  # a dict (the departures) follows from the values above: only what else differs
        old, new = saved.get(k), config.get(k)
        if isinstance(old, dict) and isinstance(new, dict) and old != new and not out:
            out += [f"{k}.{n} {old.get(n)!r} -> {new.get(n)!r}" for n in sorted(set(old) | set(new))
                    if old.get(n) != new.get(n)]
        elif isinstance(old, dict) != isinstance(new, dict) and old != new:
            out.append(f"{k} {old!r} -> {new!r}")
    if "epochs" in may_differ and config["epochs"] < saved.get("epochs", 0):
        out.append(f"epochs {saved['epochs']} -> {config['epochs']} (may only grow)")
    return out


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


class CheckpointWriter:
    """A run's checkpoints, written in a background thread while the next epoch trains: last.pt
    every epoch and, when the epoch is the best so far, best.pt as a hard link to the same file
    (one write for both). The snapshot is copied to the host first, as training goes on
    changing its tensors; ``wait()`` returns once the last write is on disk (the run's end, a
    kill). Each file is renamed into place whole: a killed run leaves the previous one."""

    def __init__(self, out):
        self.out, self.thread, self.error = Path(out), None, None

    def save(self, ckpt, best):
        self.wait()
        ckpt = _on_host(ckpt)
        self.thread = threading.Thread(target=self._write, args=(ckpt, best), daemon=True)
        self.thread.start()

    def _write(self, ckpt, best):
        try:
            tmp = staged(self.out / "last.pt", lambda path: torch.save(ckpt, path))
            if best:
                twin = tmp.with_name(tmp.name + ".best")
                try:
                    os.link(tmp, twin)
                except OSError:                                   # no hard links here: a copy
                    shutil.copyfile(tmp, twin)
                os.replace(twin, self.out / "best.pt")
            os.replace(tmp, self.out / "last.pt")
        except BaseException as e:                                # noqa: BLE001 - raised by wait()
            self.error = e

    def wait(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _on_host(obj):
    """A copy of ``obj`` whose tensors are detached copies on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _on_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_host(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- the run directory

def _used(path):
    return path.exists() and any(p.name != LOCK for p in path.iterdir())      # the writer's lock is no run


def choose_run_dir(a):
    """--out, or runs/LOSS: a re-run without --out goes to runs/LOSS-2, -3, ... (a
    --resume without --out continues the latest of them, --force overwrites runs/LOSS)."""
    if a.out is not None:
        return Path(a.out)
    name = run_name(a.loss)
    base = HERE / "runs" / name
    if a.force or not _used(base):
        return base
    taken = [base] + sorted((p for p in base.parent.glob(f"{name}-*") if p.name[len(name) + 1:].isdigit()),
                            key=lambda p: int(p.name[len(name) + 1:]))
    if a.resume:
        return taken[-1]
    n = max([1] + [int(p.name[len(name) + 1:]) for p in taken[1:]]) + 1
    out = base.parent / f"{name}-{n}"
    log(f"{shown(base)} holds an earlier run: this one goes to {shown(out)} (--out to choose, --resume to continue)")
    return out


def check_run_dir(out, resume, force):
    if _used(out):
        if not resume and not force:
            raise UsageError(f"{out}: the run directory exists; pass --resume to continue it or --force to overwrite it")
        if resume and not (out / "last.pt").exists():
            raise UsageError(f"{out}: --resume, but there is no last.pt to resume from")
    elif resume:
        raise UsageError(f"{out}: --resume, but there is no run there")


def prepare_run_dir(out, force):
    if force:
        for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "summary.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
