"""Shared by the bench scripts: a timer and a synthetic multifocal lesion batch."""
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, repeat=5, warmup=1):
    """Median wall seconds of fn() over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def multifocal_lesion(shape, seed, n_foci=5, radius=(3, 12)):
    """Boolean mask of a few ellipsoidal foci of different sizes (~0.5-1% of the volume)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    mask = np.zeros(shape, bool)
    for _ in range(n_foci):
        centre = rng.uniform(0.2, 0.8, 3) * np.array(shape)
        radii = rng.uniform(*radius, 3) * np.array([1, 1, 0.35])   # thick slices: fewer voxels in z
        mask |= (((grid - centre) / radii) ** 2).sum(-1) <= 1
    return mask


def header(title):
    import platform
    import torch
    print(f"# {title}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
