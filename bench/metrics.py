"""evaluate_case against its peers on the same case in the same run: MONAI (voxel
surfaces) and DeepMind's surface-distance (surfels); lesion_metrics against MONAI's
per-component Dice and beside evaluate_case (its cost per case).

    python bench/metrics.py [--size 192 192 32] [--spacing 1.0 1.0 2.2] [--repeat 5]

A sparse multifocal lesion and a near-miss prediction (shifted, with a false positive and
stray single-voxel false positives across the volume).
MONAI: compute_dice, compute_average_surface_distance in both directions (the paper's
MSD is the mean of the two directed means) and compute_surface_dice.
surface-distance: compute_surface_distances, then compute_dice_coefficient,
compute_average_surface_distance and compute_surface_dice_at_tolerance.
"""
import argparse
import warnings

import numpy as np
import torch

from common import header, multifocal_lesion, timed
from lesions import lesion_metrics
from metrics import evaluate_case


def surfel(pred, target, spacing, args):
    ours = timed(lambda: evaluate_case(pred, target, spacing, args.tolerance, surfaces="surfel"), args.repeat)
    r = evaluate_case(pred, target, spacing, args.tolerance, surfaces="surfel")
    print(f"surfel ours            : {ours * 1e3:8.1f} ms   dice {r['dice']:.6f}  msd {r['msd']:.6f}  nsd {r['nsd']:.6f}")
    try:
        import surface_distance as sd
    except ImportError:
        print("# surface-distance not installed: ours only (pip install -r requirements-dev.txt)")
        return

    def theirs():
        d = sd.compute_surface_distances(target, pred, spacing)
        return (sd.compute_dice_coefficient(target, pred), float(np.mean(sd.compute_average_surface_distance(d))),
                sd.compute_surface_dice_at_tolerance(d, args.tolerance))

    peer = timed(theirs, args.repeat)
    d, msd, nsd = theirs()
    print(f"surfel surface-distance: {peer * 1e3:8.1f} ms   dice {d:.6f}  msd {msd:.6f}  nsd {nsd:.6f}")
    print(f"ratio ours/surface-distance: {ours / peer:.3f} ({peer / ours:.1f}x faster)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=(192, 192, 32))
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 2.2))
    ap.add_argument("--tolerance", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    size, spacing = tuple(args.size), tuple(args.spacing)
    header(f"metrics: one case {size}, spacing {spacing} mm, tolerance {args.tolerance} mm")
    target = multifocal_lesion(size, 0)
    pred = np.roll(target, 2, axis=0) | multifocal_lesion(size, 1, n_foci=1, radius=(2, 4))
    stray = np.random.default_rng(2).integers(0, size, (20, 3))          # scattered false positives
    pred[tuple(stray.T)] = True
    print(f"# lesion {target.sum()} voxels ({target.mean():.2%}), prediction {pred.sum()} voxels "
          f"(20 of them stray)")
    surfel(pred, target, spacing, args)

    ours = timed(lambda: evaluate_case(pred, target, spacing, args.tolerance), args.repeat)
    r = evaluate_case(pred, target, spacing, args.tolerance)
    print(f"voxel ours : {ours * 1e3:8.1f} ms   dice {r['dice']:.6f}  msd {r['msd']:.6f}  nsd {r['nsd']:.6f}")
    try:
        from monai.metrics import compute_average_surface_distance, compute_dice, compute_surface_dice
    except ImportError:
        print("# monai not installed: ours only (pip install -r requirements-dev.txt)")
        return

    def one_hot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    def theirs():
        yp, yg = one_hot(pred), one_hot(target)
        d = compute_dice(yp, yg, include_background=False).item()
        msd = 0.5 * (compute_average_surface_distance(yp, yg, spacing=spacing).item()
                     + compute_average_surface_distance(yg, yp, spacing=spacing).item())
        return d, msd, compute_surface_dice(yp, yg, [args.tolerance], spacing=spacing).item()

    peer = timed(theirs, args.repeat)
    d, msd, nsd = theirs()
    print(f"voxel monai: {peer * 1e3:8.1f} ms   dice {d:.6f}  msd {msd:.6f}  nsd {nsd:.6f}")
    print(f"ratio ours/monai: {ours / peer:.3f} ({peer / ours:.1f}x faster)")
    lesion(pred, target, spacing, ours, args)


def lesion(pred, target, spacing, voxel_seconds, args):
    """lesion_metrics: its cost beside evaluate_case's (voxel), and cc_dice against MONAI's."""
    cost = timed(lambda: lesion_metrics(pred, target, spacing), args.repeat)
    r = lesion_metrics(pred, target, spacing)
    print(f"lesions ours: {cost * 1e3:8.1f} ms   {r['lesions']} lesions, {r['detected']} detected, "
          f"{r['false_lesions']} false, lesion F1 {r['lesion_f1']:.4f}, cc_dice {r['cc_dice']:.6f}")
    print(f"lesion metrics / evaluate_case (voxel): {cost / voxel_seconds:.2f}")
    from monai.metrics import DiceMetric
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
    metric = DiceMetric(per_component=True, include_background=False, ignore_empty=False)
    peer = timed(lambda: metric(one_hot(pred), one_hot(target)), args.repeat)
    print(f"cc_dice monai: {peer * 1e3:8.1f} ms   cc_dice {metric(one_hot(pred), one_hot(target)).item():.6f}")
    print(f"ratio ours (all lesion metrics)/monai (cc_dice alone): {cost / peer:.3f} ({peer / cost:.1f}x faster)")


if __name__ == "__main__":
    main()
