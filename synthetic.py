"""SPEC 8: a synthetic BONBID-HIE, the project's embedded default dataset.

    synthesize(out_dir, n_train=48, n_val=4, seed=0)   -> root with BONBID2023_Train/, BONBID2023_Val/
    default_data(n_train, n_val)                       -> data/synthetic-TRAIN-VAL/, made once

The real layout, file names and .mha format, deterministic from a seed: brain-shaped
volumes with geometry and intensities in the ranges of SPEC 1 (background 0; grey and
white matter and CSF with different ADC), ZADC derived from the ADC against a "normal"
reference, smoothed and clipped, multifocal lesions (low ADC, negative ZADC) from < 1% to
tens of percent of the brain, one case with no lesion, oblique directions and non-zero
origins so that geometry bugs show. The real loading code (data.py) is what reads it.

The synthetic set in the quickstart: docs/training.md.
"""
import functools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage

from data import SPLITS, Geometry, file_names, resize_linear, write_image
from plumbing import HERE, atomic_dir, log, shown

__all__ = ["synthesize", "default_data", "synthetic_root"]


def _smooth_noise(rng, shape, sigma):
    """Gaussian-smoothed white noise with unit std. Smooth fields carry no detail finer
    than sigma, so they are made on a grid coarser by up to sigma / 2 and interpolated
    back: the same kind of field at a fraction of the cost of filtering the full volume."""
    sigma = np.broadcast_to(np.asarray(sigma, float), (len(shape),))
    step = np.maximum(1, np.floor(sigma / 2)).astype(int)
    coarse = tuple(int(np.ceil(n / k)) + 1 for n, k in zip(shape, step))
    field = resize_linear(ndimage.gaussian_filter(rng.standard_normal(coarse), sigma / step), tuple(shape))
    return field / (field.std() + 1e-12)


def _synthetic_case(rng, size, lesion_fraction):
    """(adc, zadc, label) arrays (x, y, z) and spacing: a neonatal-brain-like volume."""
    size = np.asarray(size)
    spacing = np.array([*[np.clip(rng.uniform(170, 230) / size[0], 0.625, 2.0)] * 2,
                        np.clip(rng.uniform(95, 140) / size[2], 2.0, 6.0)])
    # mm from the centre of the field of view; the brain an ellipsoid with a bumpy surface
    mm = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(size, spacing)]
    x, y, z = np.meshgrid(*mm, indexing="ij", sparse=True)
    axes = np.array([62.0, 76.0, 48.0]) * rng.uniform(0.85, 1.05)
    r = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)
    r = r + 0.04 * _smooth_noise(rng, size, 6 / spacing)
    brain = r < 1.0
    ventricles = np.zeros(tuple(size), bool)
    for side in (-1, 1):
        ventricles |= ((x - side * 13) / 8) ** 2 + (y / 26) ** 2 + ((z - 5) / 11) ** 2 < 1
    tissue = np.where(r < 0.72, 1500.0, 1100.0)                      # white matter, grey matter
    tissue = np.where(ventricles | (r > 0.96), 2400.0, tissue)       # CSF: ventricles, outer rim
    tissue = tissue * (1 + 0.05 * _smooth_noise(rng, size, 10 / spacing))
    normal = np.where(brain, tissue, 0.0)
    # multifocal lesions: restricted diffusion (low ADC) in a few blobs inside the brain
    label = np.zeros(tuple(size), bool)
    inside = np.argwhere(brain & (r < 0.9) & ~ventricles)
    if lesion_fraction > 0 and len(inside):
        n_foci = int(rng.integers(1, 6))
        volume = lesion_fraction * brain.sum() * np.prod(spacing) / n_foci     # mm^3 per focus
        bumps = 0.25 * _smooth_noise(rng, size, 3 / spacing)                  # irregular borders
        for _ in range(n_foci):
            c = inside[rng.integers(len(inside))] * spacing - (size - 1) / 2 * spacing
            radii = (3 * volume / (4 * np.pi)) ** (1 / 3) * rng.uniform(0.7, 1.4, 3)
            d = ((x - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((z - c[2]) / radii[2]) ** 2
            label |= d + bumps < 1
        label &= brain & ~ventricles
    adc = normal * np.where(label, rng.uniform(0.4, 0.6), 1.0)
    adc = np.where(brain, adc + rng.normal(0, 60, adc.shape), 0.0).clip(0, None)
    # ZADC: z-score against the "normal" reference (sd 12 % of it), smoothed 2 mm, clipped at +-10
    z_map = np.where(brain, (adc - normal) / (0.12 * normal + 1e-6) + 0.35 + 2.0 * _smooth_noise(rng, size, 8 / spacing), 0)
    z_map = np.where(brain, ndimage.gaussian_filter(z_map, 2 / 2.355 / spacing), 0.0).clip(-10, 10)
    return adc.astype(np.float32), z_map.astype(np.float32), label.astype(np.uint8), spacing


def _random_direction(rng, max_degrees=15):
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def synthesize(out_dir, n_train=48, n_val=4, seed=0, size_range=((128, 128, 16), (256, 256, 64)), ext=".mha",
               workers=None):
    """Write a synthetic BONBID-HIE (SPEC 8) under ``out_dir``: BONBID2023_Train/ and
    BONBID2023_Val/ in the real layout and file names, deterministic from ``seed``.

    Sizes are drawn from ``size_range`` (x = y), spacing in the real
    ranges, oblique directions and non-zero origins; lesion burden log-uniform from 0.2 %
    to 30 % of the brain, multifocal; the first training case has no lesion. Each case
    draws from its own generator, so ``workers`` processes (default: up to 4, for 16 cases
    or more, where the OS can fork) write the same files as one. Returns the dataset root.
    """
    out_dir = Path(out_dir)
    jobs = [(split, i) for split, n in zip(SPLITS, (n_train, n_val)) for i in range(n)]
    write = functools.partial(_write_case, out_dir, seed, tuple(map(tuple, size_range)), ext)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if len(jobs) >= 16 else 1
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(write, jobs))
    else:
        for job in jobs:
            write(job)
    return out_dir


def _write_case(out_dir, seed, size_range, ext, job):
    """Case ``i`` of ``split``: its three files, from its own generator."""
    split, i = job
    lo, hi = np.asarray(size_range[0]), np.asarray(size_range[1])
    rng = np.random.default_rng([seed, SPLITS.index(split), i])
    # sizes around the real median (160, 160, 43)
    side = int(round(rng.triangular(lo[0], np.clip(160, lo[0], hi[0]), hi[0] + 1e-9)))
    size = (side, side, int(round(rng.triangular(lo[2], np.clip(43, lo[2], hi[2]), hi[2] + 1e-9))))
    no_lesion = split == SPLITS[0] and i == 0
    fraction = 0.0 if no_lesion else float(np.exp(rng.uniform(np.log(0.002), np.log(0.3))))
    adc, zadc, label, spacing = _synthetic_case(rng, size, fraction)
    geometry = Geometry.of(size, spacing, rng.uniform(-120, -60, 3), _random_direction(rng))
    base = f"MGHNICU_{(SPLITS.index(split) * 500 + i + 1):03d}-VISIT_01"
    for kind, array in zip(("adc", "zadc", "label"), (adc, zadc, label)):
        write_image(array, geometry, out_dir / split / file_names(base, ext)[kind])


def synthetic_root(n_train, n_val):
    """Where the default synthetic set of ``n_train`` + ``n_val`` cases lives."""
    return HERE / "data" / f"synthetic-{n_train}-{n_val}"


def default_data(n_train, n_val):
    """The synthetic BONBID-HIE of ``n_train`` + ``n_val`` cases (seed 0), made once."""
    root = synthetic_root(n_train, n_val)
    if (root / SPLITS[1]).is_dir():
        log(f"no --data: using the synthetic BONBID-HIE at {shown(root)} (made earlier)")
    else:
        log(f"no --data: making a synthetic BONBID-HIE at {shown(root)} ({n_train} train, {n_val} val cases; once)")
        atomic_dir(root, lambda tmp: synthesize(tmp, n_train, n_val, seed=0))
    return root
