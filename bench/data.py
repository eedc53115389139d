"""Preprocessing and augmentation cost on this machine.

    python bench/data.py [--cases 20] [--grid 192 192 32] [--device cpu]

Synthesizes N cases of the real median size (160x160x43), times the SPEC 2
preprocessing of all of them into an empty cache, then a second run that reuses the
cache. Then SPEC 3 on a batch of 4 preprocessed cases: each transform (p = 1) and the
whole pipeline (p = 0.5, the mean over many draws), TorchIO one sample at a time (the
reference, as the loader runs it) against augment.TorchAugment on the batch, and the ratio.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import header, timed  # first: puts the repository on sys.path
import data
import synthetic
from augment import TorchAugment, torchio_transforms

NAMES = ("noise", "anisotropy", "blur", "gamma", "elastic")


def mean_seconds(fn, draws):
    """Mean wall seconds over ``draws`` calls: the median would hide the draws that apply elastic."""
    fn()
    start = time.perf_counter()
    for _ in range(draws):
        fn()
    return (time.perf_counter() - start) / draws


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--grid", type=int, nargs=3, default=data.GRID)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    grid, device = tuple(args.grid), torch.device(args.device)
    header(f"data: preprocessing {args.cases} cases of 160x160x43 to {grid}; augmentation of a batch of 4")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = synthetic.synthesize(tmp / "bonbid", args.cases, 0, seed=1, size_range=((160, 160, 43), (160, 160, 43)))
        split = root / data.SPLITS[0]
        start = time.perf_counter()
        files = data.prepare(split, tmp / "cache", grid)
        first = time.perf_counter() - start
        start = time.perf_counter()
        data.prepare(split, tmp / "cache", grid)
        second = time.perf_counter() - start
        print(f"preprocess {args.cases} cases: {first:6.2f} s ({first / args.cases * 1e3:.0f} ms/case); "
              f"again, from the cache: {second:.3f} s")

        import torchio as tio
        samples = [data.HIEDataset(files)[i] for i in range(4)]
        subjects = [tio.Subject(image=tio.ScalarImage(tensor=im, affine=af.numpy()),
                                label=tio.LabelMap(tensor=lab, affine=af.numpy())) for im, lab, af in samples]
        image, label, affine = (torch.stack(t) for t in zip(*samples))
        image, label = image.to(device), label.to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
        aug = TorchAugment(seed=0)

        def torch_batch(only=None):
            if only is None:
                aug(image, label, affine)
            else:
                params = aug.draw(4)
                params.update({k: torch.full((4,), k == only) for k in NAMES})
                aug.apply(image, label, params, affine)
            sync()

        print(f"{'ms per batch of 4':24s} {'TorchIO':>9s} {'torch':>9s} {'ratio':>7s}   ({device})")
        for name, t in zip(NAMES, torchio_transforms().transforms):
            t.probability = 1.0
            theirs = sum(timed(lambda: t(s), args.repeat) for s in subjects)
            ours = timed(lambda: torch_batch(name), args.repeat)
            print(f"{name + ' (p = 1)':24s} {theirs * 1e3:9.1f} {ours * 1e3:9.1f} {ours / theirs:7.3f}")
        whole = torchio_transforms()
        torch.manual_seed(0)
        draws = 8 * args.repeat
        theirs = sum(mean_seconds(lambda: whole(s), draws) for s in subjects)
        ours = mean_seconds(torch_batch, 4 * draws)
        print(f"{'SPEC 3 (p = 0.5), mean':24s} {theirs * 1e3:9.1f} {ours * 1e3:9.1f} {ours / theirs:7.3f}"
              f"   (TorchIO: {draws} draws per sample; torch: {4 * draws} batches)")


if __name__ == "__main__":
    main()
