"""hie-ref against exacta (C++ kernels on the CPU, Triton on CUDA; the fastest peer found) on
the same inputs in the same run: each part's values checked equal first, then timed.

    python bench/against_exacta.py [--size 192 192 32] [--spacing 1.0 1.0 2.2] [--repeat 5]

exacta is a test-only peer (requirements-dev.txt); without it the script says so and stops.
The case is bench/metrics.py's: a sparse multifocal lesion and a near miss with a false
positive and 20 stray voxels. Parts:

  voxel metrics      evaluate_case (Dice, MSD, NSD; voxel surfaces) | exacta.functional.evaluate,
                     assd with combine="mean" (the paper's MSD: the mean of the two directed means)
  surfel metrics     the same on surfels (DeepMind's) | surface="surfels"
  components         lesions.components (26-connected) | exacta.components.label(connectivity=3)
  lesion matching    lesion_metrics (TP / FP / FN, F1; and cc_dice, which exacta does not give)
                     | exacta.lesions.evaluate(matching="overlap", connectivity=3)
  hdt                HausdorffDTLoss forward + backward, batch 4 (bench/losses.py's near-miss logits)
                     | exacta.losses.HausdorffDTLoss (sigmoid, one channel), the same values
"""
import argparse
import warnings

import numpy as np
import torch

from common import header, multifocal_lesion, timed
from lesions import components, lesion_metrics
from losses import HausdorffDTLoss
from metrics import evaluate_case


def row(name, ours, peer, agree):
    print(f"{name:18s} {ours * 1e3:9.2f} ms  {peer * 1e3:9.2f} ms  {ours / peer:6.2f}   {agree}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=(192, 192, 32))
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 2.2))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    try:
        import exacta
        import exacta.components as ec
        import exacta.functional as ef
        import exacta.lesions as el
        from exacta.losses import HausdorffDTLoss as TheirHDT
    except ImportError:
        print("# exacta is not installed: pip install -r requirements-dev.txt (a test-only peer)")
        return
    size, spacing = tuple(args.size), tuple(args.spacing)
    header(f"hie-ref against exacta {exacta.__version__}: one case {size}, spacing {spacing} mm, tolerance 2 mm")
    target = multifocal_lesion(size, 0)
    pred = np.roll(target, 2, axis=0) | multifocal_lesion(size, 1, n_foci=1, radius=(2, 4))
    pred[tuple(np.random.default_rng(2).integers(0, size, (20, 3)).T)] = True
    p, g = torch.from_numpy(pred[None].astype(np.int64)), torch.from_numpy(target[None].astype(np.int64))
    print(f"{'part':18s} {'hie-ref':>12s}  {'exacta':>12s}  {'ratio':>6s}   values")

    for surfaces, theirs in (("voxel", "voxels"), ("surfel", "surfels")):
        ours = lambda: evaluate_case(pred, target, spacing, 2.0, surfaces=surfaces)
        peer = lambda: ef.evaluate(p, g, metrics={"dice": {}, "assd": {"combine": "mean", "surface": theirs},
                                                  "nsd": {"tolerance": 2.0, "surface": theirs}},
                                   spacing=spacing, num_classes=2, include_background=False)
        a, b = ours(), peer()
        gap = max(abs(a["dice"] - float(b["dice"][0, 0])), abs(a["msd"] - float(b["assd"][0, 0])),
                  abs(a["nsd"] - float(b["nsd"][0, 0])))
        row(f"{surfaces} metrics", timed(ours, args.repeat), timed(peer, args.repeat), f"equal to {gap:.1e}")

    mask = pred
    ours, peer = lambda: components(mask), lambda: ec.label(mask, connectivity=3)
    n_ours, n_peer = ours()[2], peer()[1]
    row("components", timed(ours, args.repeat), timed(peer, args.repeat), f"{n_ours} and {n_peer} components")

    ours = lambda: lesion_metrics(pred, target, spacing)
    peer = lambda: el.evaluate(p, g, matching="overlap", connectivity=3, num_classes=2, include_background=False)
    a, b = ours(), peer()
    same = (a["detected"], a["missed"], a["false_lesions"]) == tuple(int(np.asarray(getattr(b, k)).ravel()[0])
                                                                    for k in ("tp", "fn", "fp"))
    row("lesion matching", timed(ours, args.repeat), timed(peer, args.repeat),
        f"TP/FN/FP {a['detected']}/{a['missed']}/{a['false_lesions']} {'equal' if same else 'DIFFER'}")

    # bench/losses.py's batch: four lesions, logits of a near miss (+-4) with noise (sd 1.5)
    target4 = np.stack([multifocal_lesion(size, s) for s in range(4)])[:, None]
    batch = torch.from_numpy(target4.astype(np.float32))
    noise = np.random.default_rng(0).normal(0, 1.5, target4.shape)
    logits = torch.from_numpy((np.where(np.roll(target4, 2, axis=2), 4.0, -4.0) + noise).astype(np.float32))
    mine, their = HausdorffDTLoss(), TheirHDT(activation="sigmoid", target_format="one-hot", include_background=True)

    def step(loss):
        x = logits.clone().requires_grad_()
        value = loss(x, batch) if loss is mine else loss(x, batch, spacing=(1.0, 1.0, 1.0))   # ours: voxels
        value.backward()
        return value.item()
    a, b = step(mine), step(their)
    row("hdt fwd+bwd, b=4", timed(lambda: step(mine), args.repeat), timed(lambda: step(their), args.repeat),
        f"equal to {abs(a - b) / abs(b):.1e} (relative)")


if __name__ == "__main__":
    main()
