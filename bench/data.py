"""Preprocessing and augmentation cost on this machine.

    python bench/data.py [--cases 20] [--grid 192 192 32]

Synthesizes N cases of the real median size (160x160x43), times the SPEC 2
preprocessing of all of them into an empty cache, then a second run that reuses the
cache; then the per-sample time of each SPEC 3 augmentation transform (p = 1) on one
preprocessed (2,X,Y,Z) sample.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import header, timed  # first: puts the repository on sys.path
import data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--grid", type=int, nargs=3, default=data.GRID)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    grid = tuple(args.grid)
    header(f"data: preprocessing {args.cases} cases of 160x160x43 to {grid}; augmentation per sample")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = data.synthesize(tmp / "bonbid", args.cases, 0, seed=1, size_range=((160, 160, 43), (160, 160, 43)))
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
        c = data.load_cached(files[1])
        affine = c["grid"].affine_ras()
        subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(c["image"]), affine=affine),
                              label=tio.LabelMap(tensor=torch.from_numpy(c["label"]), affine=affine))
        print(f"{'transform (p = 1)':34s} {'ms/sample':>10s}")
        for t in data.augmentation().transforms:
            t.probability = 1.0
            print(f"{type(t).__name__:34s} {timed(lambda: t(subject), args.repeat) * 1e3:10.1f}")
        whole = data.augmentation()
        torch.manual_seed(0)
        draws = 8 * args.repeat             # a mean over random draws: the median would hide the elastic half
        start = time.perf_counter()
        for _ in range(draws):
            whole(subject)
        print(f"{'the whole SPEC 3 pipeline (p = 0.5)':34s} {(time.perf_counter() - start) / draws * 1e3:10.1f}"
              f"   (mean of {draws} draws)")


if __name__ == "__main__":
    main()
