"""Forward+backward time of each loss against MONAI's equivalent, same batch, same run;
then the blob losses (SPEC 5b) against their non-blob counterparts; then the distance field
behind hdt against scipy's EDT.

    python bench/losses.py [--batch 4] [--size 192 192 32] [--repeat 3] [--device cpu]

A (4,1,192,192,32) batch of sparse multifocal lesions and a near-miss prediction (the
lesions shifted by two voxels, with noise): the situation mid-training. The distance
field is timed on the target masks: ours (scipy backend on the host; the torch backend on
the device) against the plain definition, two whole-volume float64 scipy EDTs per sample
(what MONAI's HausdorffDTLoss runs).
"""
import argparse
import warnings

import numpy as np
import torch

from common import header, multifocal_lesion, timed
from losses import (LOSS_NAMES, HausdorffDTLoss, LogCompoundLoss, TverskyLoss, distance_field, edt, lesion_labels,
                    make_loss)


def monai_equivalents():
    from monai.losses import DiceFocalLoss, DiceLoss, HausdorffDTLoss, LogHausdorffDTLoss, TverskyLoss
    dice_focal, tversky = DiceFocalLoss(sigmoid=True, gamma=2.0), TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)
    log_hdt = LogHausdorffDTLoss(sigmoid=True)
    return {
        "dice": DiceLoss(sigmoid=True), "dice_focal": dice_focal, "tversky": tversky,
        "hdt": HausdorffDTLoss(sigmoid=True),
        "dice_focal_hdt": lambda x, g: 0.9 * dice_focal(x, g) + 0.1 * log_hdt(x, g),
        "tversky_hdt": lambda x, g: 0.9 * tversky(x, g) + 0.1 * log_hdt(x, g),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=3, default=(192, 192, 32))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    header(f"losses: forward+backward, batch ({args.batch},1,{','.join(map(str, args.size))}), {args.device}")

    target = np.stack([multifocal_lesion(tuple(args.size), seed) for seed in range(args.batch)])[:, None]
    near_miss = np.roll(target, 2, axis=2)
    rng = np.random.default_rng(0)
    logits = np.where(near_miss, 4.0, -4.0) + rng.normal(0, 1.5, target.shape)
    g = torch.from_numpy(target.astype(np.float32)).to(args.device)
    x = torch.from_numpy(logits.astype(np.float32)).to(args.device)
    print(f"# lesion fraction {target.mean():.2%}")

    def step(loss):
        def run():
            xg = x.clone().requires_grad_(True)
            loss(xg, g).backward()
            if x.is_cuda:
                torch.cuda.synchronize()
        return run

    try:
        theirs = monai_equivalents()
    except ImportError:
        theirs = {}
        print("# monai not installed: ours only (pip install -r requirements-dev.txt)")
    print(f"{'loss':16s} {'ours ms':>9s} {'monai ms':>9s} {'ratio':>6s}")
    for name in LOSS_NAMES:
        ours = timed(step(make_loss(name)), args.repeat) * 1e3
        if name in theirs:
            peer = timed(step(theirs[name]), args.repeat) * 1e3
            print(f"{name:16s} {ours:9.1f} {peer:9.1f} {ours / peer:6.2f}")
        else:
            print(f"{name:16s} {ours:9.1f}")
    blob_times(step, g, args.repeat)
    field_times(target, args.device, args.repeat)
    if x.is_cuda:      # the on-device distance field against a host round trip (edt where installed)
        backend = "edt" if edt is not None else "reference"
        host = {"hdt": HausdorffDTLoss(backend=backend),
                "tversky_hdt": LogCompoundLoss(TverskyLoss(), hdt=HausdorffDTLoss(backend=backend))}
        print(f"{'loss':16s} {'device ms':>9s} {'host ms':>9s} {'ratio':>6s}")
        for name, loss in host.items():
            on_device, round_trip = timed(step(make_loss(name)), args.repeat), timed(step(loss), args.repeat)
            print(f"{name:16s} {on_device * 1e3:9.1f} {round_trip * 1e3:9.1f} {on_device / round_trip:6.2f}")


def blob_times(step, g, repeat):
    """Each blob loss against the same loss without its blob term, and the lesion labelling inside it."""
    print(f"{'blob loss':16s} {'ms':>9s} {'vs':>16s} {'ms':>9s} {'ratio':>6s}")
    for blob, plain in (("blob_dice", "dice"), ("blob_tversky_hdt", "tversky_hdt")):
        ours, peer = timed(step(make_loss(blob)), repeat) * 1e3, timed(step(make_loss(plain)), repeat) * 1e3
        print(f"{blob:16s} {ours:9.1f} {plain:>16s} {peer:9.1f} {ours / peer:6.2f}")
    labelling = timed(lambda: [lesion_labels(m) for m in (g > 0.5).cpu().numpy()], repeat) * 1e3
    print(f"of which the lesion labelling (scipy, host, the batch's {len(g)} targets): {labelling:.1f} ms")


def field_times(target, device, repeat):
    """The distance field of the batch's target masks: ours against two scipy EDTs per sample."""
    from scipy import ndimage

    def plain():
        for m in target[:, 0]:
            ndimage.distance_transform_edt(m) + ndimage.distance_transform_edt(~m)

    mask = torch.from_numpy(target)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    on_device = mask.to(device)

    def torch_backend():
        distance_field(on_device, "torch")
        sync()

    peer = timed(plain, repeat) * 1e3
    print(f"{'distance field':24s} {'ms':>9s} {'scipy ms':>9s} {'ratio':>6s}")
    for backend in ("reference", "edt") if edt is not None else ("reference",):
        ours = timed(lambda: distance_field(mask, backend), repeat) * 1e3
        print(f"{'ours, ' + backend + ' backend':24s} {ours:9.1f} {peer:9.1f} {ours / peer:6.2f}")
    ours = timed(torch_backend, repeat, warmup=2) * 1e3
    print(f"{'ours, torch on ' + str(device):24s} {ours:9.1f} {peer:9.1f} {ours / peer:6.2f}")


if __name__ == "__main__":
    main()
