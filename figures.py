"""The pictures: the paper's Figure 2 (each loss's masks on axial ADC slices), the
cross-validated study's per-case Dice plot and detection by lesion size (SPEC 10), and
training curves. PNG files, written atomically.
"""
from pathlib import Path

import numpy as np
import torch

import data
from checkpoints import load_checkpoint, model_from_checkpoint
from evaluate import predict_logits
from plumbing import UsageError, atomic_write


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi):
    """Write ``fig`` in the format its file name says (.png, .pdf, .svg, .jpg, ...), atomically."""
    kind = Path(path).suffix.lstrip(".").lower()
    formats = fig.canvas.get_supported_filetypes()
    if kind not in formats:
        _pyplot().close(fig)
        raise UsageError(f"{path}: expected a picture file name ending in one of "
                         f"{', '.join('.' + f for f in sorted(formats))}, got {Path(path).suffix or 'no suffix'}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=kind))
    _pyplot().close(fig)


def figure2(runs, out, root=None, cache=data.CACHE, device="cpu"):
    """Figure 2: the smallest and the largest validation lesion, the ground truth and each
    run's prediction on the grid, on the axial slice with the most lesion.

    ``runs``: [(name, best.pt path)]. Returns the number of cases shown.
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    device = torch.device(device)
    first = load_checkpoint(runs[0][1], device)
    root = root or Path(first["config"]["data"])
    files = data.prepare(data.split_dir(root, "val"), cache, tuple(first["grid"]))
    cases = [data.load_cached(f) for f in files]
    with_lesion = sorted((c for c in cases if c["label"].sum() > 0), key=lambda c: c["label"].sum())
    if not with_lesion:
        raise data.DataError(f"{root}: no validation case has a lesion to show")
    chosen = [with_lesion[0], with_lesion[-1]] if len(with_lesion) > 1 else with_lesion
    masks = {}
    for name, path in runs:
        ckpt = first if path == runs[0][1] else load_checkpoint(path, device)
        model = model_from_checkpoint(ckpt, device)
        masks[name] = [(predict_logits(model, c["image"], device)[0, 0] > 0).cpu().numpy() for c in chosen]
    fig, axes = plt.subplots(len(chosen), len(runs) + 1, figsize=(2.2 * (len(runs) + 1), 2.4 * len(chosen)),
                             squeeze=False)
    for row, c in enumerate(chosen):
        label = c["label"][0].astype(bool)
        z = int(label.sum(axis=(0, 1)).argmax())                     # the axial slice with most lesion
        adc = c["image"][0][:, :, z].T
        panels = [("ground truth", label)] + [(n, masks[n][row]) for n, _ in runs]
        for col, (title, m) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(adc, cmap="gray", origin="lower")
            fill = ListedColormap(["cyan" if col == 0 else "red"])        # the ground truth cyan, predictions red
            ax.imshow(np.ma.masked_where(~m[:, :, z].T, m[:, :, z].T), cmap=fill, alpha=0.6, origin="lower")
            ax.contour(label[:, :, z].T, levels=[0.5], colors="cyan", linewidths=0.6, origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title.replace("_", "-"), fontsize=8)
        axes[row, 0].set_ylabel(f"{c['base']}\n{100 * label.mean():.2f}% of volume", fontsize=7)
    fig.suptitle("Figure 2: predicted masks (red) and ground truth (cyan) on axial ADC slices", fontsize=9)
    fig.tight_layout()
    _save(fig, out, dpi=120)
    return len(chosen)


def study_runs(study_dir, names):
    """[(name, best.pt)] of the runs of a Table 1 study directory, in ``names`` order."""
    runs = [(n, study_dir / n / "best.pt") for n in names if (study_dir / n / "best.pt").exists()]
    if not runs:
        raise UsageError(f"{study_dir}: expected LOSS/best.pt run directories (python hie_ref.py study), found none")
    return runs


def dice_plot(path, rows, order):
    """Per-case Dice of each loss (mean over seeds): a box and the points, best mean first."""
    plt = _pyplot()
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
    _save(fig, path, dpi=110)


def detection_plot(path, table, order, scales, voxel=float("nan")):
    """Detection by lesion size: per loss, the fraction of the label's lesions found in each
    volume bin, one panel per scale (``scales``: [(unit, bins)], mm3 and grid_voxels;
    ``table``: rows of report.detection_rows; ``voxel``: a grid voxel's mm^3)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(scales), figsize=(6.5 * len(scales), 3.4), squeeze=False)
    for ax, (unit, bins) in zip(axes[0], scales):
        x = np.arange(len(bins))
        mine = [r for r in table if r["unit"] == unit]
        for loss in order:
            found = {r["bin"]: r["fraction"] for r in mine if r["loss"] == loss}
            ax.plot(x, [found.get(b, np.nan) for b in bins], marker="o", label=loss)
        counts = {r["bin"]: r["lesions"] for r in mine}
        name = "mm³" if unit == "mm3" else "grid voxels"
        ax.set_xticks(x, [f"{b} {name}\n({counts.get(b, 0)} lesions)" for b in bins], fontsize=8)
        if unit != "mm3":
            ax.axvspan(-0.5, 0.5, color="0.9", zorder=0)          # under one grid voxel: below the resolution
            ax.text(0, 0.5, "below the grid's\nresolution", ha="center", fontsize=7, color="0.4")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("fraction of lesions detected")
        ax.set_title(f"Detection by lesion size, {name}" + (f" (a grid voxel: {voxel:.1f} mm³)" if unit != "mm3"
                                                            and np.isfinite(voxel) else ""), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path, dpi=110)


def curves(path, runs):
    """Training curves of one or more runs (their metrics.csv): training and validation loss,
    validation Dice and NSD per epoch, each run's best epoch (best validation Dice) marked."""
    import csv
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for run in map(Path, runs):
        if not (run / "metrics.csv").is_file():
            raise UsageError(f"{run}: expected a run directory with metrics.csv, found none")
        with open(run / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            continue
        epoch = [int(r["epoch"]) for r in rows]
        col = lambda k: [float(r[k]) for r in rows]
        best = max(range(len(rows)), key=lambda i: (col("val_grid_dice")[i], -i))
        line, = axes[0].plot(epoch, col("train_loss"), label=f"{run.name} train")
        axes[0].plot(epoch, col("val_loss"), "--", color=line.get_color(), label=f"{run.name} val")
        for ax, key in ((axes[1], "val_grid_dice"), (axes[2], "val_grid_nsd")):
            ax.plot(epoch, col(key), color=line.get_color(), label=run.name)
            ax.plot(epoch[best], col(key)[best], "o", color=line.get_color(), markersize=5)
    for ax, title in zip(axes, ("loss (dashed: validation)", "validation Dice (grid)", "validation NSD (grid)")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, title="o: best epoch", title_fontsize=7)
    fig.tight_layout()
    _save(fig, path, dpi=100)
