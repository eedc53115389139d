"""The pictures: the paper's Figure 2 (each loss's masks on axial ADC slices), the
cross-validated study's answer (means, intervals, verdicts) and detection by lesion size (SPEC 10), and
training curves. PNG files, written atomically.
"""
import json
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


def study_plot(path, summary, comparisons, order, metrics, names):
    """The study's answer: per metric a panel, per loss its mean over seeds and cases with the
    95% CI (summary rows), the best trained loss (not post-processed) marked, and beside each
    other row its verdict against that one (comparison rows): "worse" (significant after Holm),
    "better" or "n.s."."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 0.32 * len(order) + 1.6), squeeze=False)
    y = np.arange(len(order))[::-1]
    for ax, metric in zip(axes[0], metrics):
        mean = np.array([s[f"{metric}_mean"] for s in summary], float)
        low = np.array([s[f"{metric}_ci_low"] for s in summary], float)
        high = np.array([s[f"{metric}_ci_high"] for s in summary], float)
        err = np.clip(np.nan_to_num(np.stack([mean - low, high - mean]), nan=0.0), 0.0, None)   # rounding: never < 0
        ax.errorbar(mean, y, xerr=err, fmt="o", color="tab:blue", ecolor="0.4", capsize=3, markersize=4)
        lower = metric in ("msd", "false_lesions")
        trained = [i for i, s in enumerate(summary) if s["seeds"] and "+pp(" not in s["loss"] and np.isfinite(mean[i])]
        if trained:
            best = min(trained, key=lambda i: mean[i]) if lower else max(trained, key=lambda i: mean[i])
            for i, s in enumerate(summary):
                c = next((c for c in comparisons if c["metric"] == metric
                          and {c["loss_a"], c["loss_b"]} == {s["loss"], summary[best]["loss"]}), None)
                text = "best" if i == best else "" if c is None else \
                    "worse" if c["verdict"] == f"{summary[best]['loss']} better" else \
                    "better" if c["verdict"] == f"{s['loss']} better" else "n.s."
                ax.annotate(text, (1.0, y[i]), xycoords=("axes fraction", "data"), xytext=(3, -3),
                            textcoords="offset points", fontsize=7, color="tab:red" if text == "worse" else "0.3")
        ax.set_yticks(y, [s["loss"] for s in summary] if ax is axes[0][0] else [], fontsize=7)
        ax.set_title(f"{names[metric]}" + (" (lower is better)" if lower else ""), fontsize=9)
        ax.grid(axis="x", color="0.9")
    fig.suptitle("Mean over seeds and cases, 95% CI; beside each row its verdict against the best trained loss (Holm; "
                 "n.s.: cannot tell), from the paired differences, which can differ where these intervals overlap",
                 fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=110)


MARKERS = "osD^v<>ph*"


def detection_plot(path, table, order, scales, voxel=float("nan")):
    """Detection by lesion size: per loss, the fraction of the label's lesions found in each
    volume bin with its Wilson 95% interval, one panel per scale (``scales``: [(unit, bins)],
    mm3 and grid_voxels; ``table``: rows of report.detection_rows; ``voxel``: a grid voxel's
    mm^3). The losses side by side in each bin, each with its own marker, so none hides another."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(scales), figsize=(6.5 * len(scales), 3.6), squeeze=False)
    width = 0.6 / max(len(order), 1)
    for ax, (unit, bins) in zip(axes[0], scales):
        x = np.arange(len(bins))
        mine = [r for r in table if r["unit"] == unit]
        for k, loss in enumerate(order):
            rows = {r["bin"]: r for r in mine if r["loss"] == loss}
            f = np.array([rows[b]["fraction"] if b in rows else np.nan for b in bins], float)
            lo = np.array([rows[b]["ci_low"] if b in rows else np.nan for b in bins], float)
            hi = np.array([rows[b]["ci_high"] if b in rows else np.nan for b in bins], float)
            err = np.clip(np.nan_to_num(np.stack([f - lo, hi - f])), 0, None)
            ax.errorbar(x - 0.3 + width * (k + 0.5), f, yerr=err, fmt=MARKERS[k % 10], markersize=4, capsize=2,
                        linewidth=0.8, label=loss)
        counts = {r["bin"]: r["lesions"] for r in mine}
        name = "mm³" if unit == "mm3" else "grid voxels"
        ax.set_xticks(x, [f"{b} {name}\n({counts.get(b, 0)} lesions)" for b in bins], fontsize=8)
        if unit != "mm3":
            ax.axvspan(-0.5, 0.5, color="0.9", zorder=0)          # under one grid voxel: below the resolution
            ax.text(0, 0.5, "below the grid's\nresolution", ha="center", fontsize=7, color="0.4")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("fraction detected (Wilson 95% CI)")
        ax.set_title(f"Detection by lesion size, {name}" + (f" (a grid voxel: {voxel:.1f} mm³)" if unit != "mm3"
                                                            and np.isfinite(voxel) else ""), fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    _save(fig, path, dpi=110)


def run_label(run):
    """"LOSS seed S[ fold F]" of a run directory, from its config.json (the folder's name without one)."""
    try:
        config = json.loads((run / "config.json").read_text())
        loss = json.loads((run / "summary.json").read_text())["loss"] if (run / "summary.json").exists() else \
            config["loss"]
    except (OSError, ValueError, KeyError):
        return run.name
    fold = f" fold {run.name[4:]}" if run.name.startswith("fold") else ""
    return f"{loss} seed {config.get('seed', '?')}{fold}"


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
        name = run_label(run)
        line, = axes[0].plot(epoch, col("train_loss"), label=f"{name} train")
        axes[0].plot(epoch, col("val_loss"), "--", color=line.get_color(), label=f"{name} val")
        for ax, key in ((axes[1], "val_grid_dice"), (axes[2], "val_grid_nsd")):
            ax.plot(epoch, col(key), color=line.get_color(), label=name)
            ax.plot(epoch[best], col(key)[best], "o", color=line.get_color(), markersize=5)
    for ax, title in zip(axes, ("loss (dashed: validation)", "validation Dice (grid)", "validation NSD (grid)")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, title="o: best epoch", title_fontsize=7)
    fig.tight_layout()
    _save(fig, path, dpi=100)
