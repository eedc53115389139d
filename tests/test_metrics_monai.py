"""Parity with MONAI's voxel-surface metrics (SPEC 6) on random multifocal cases."""
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import multifocal
from metrics import dice, evaluate_case, mean_surface_distance, normalized_surface_dice

monai_metrics = pytest.importorskip("monai.metrics")


def monai_three(p, g, spacing, tolerance):
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
    yp, yg = one_hot(p), one_hot(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = monai_metrics.compute_dice(yp, yg, include_background=False).item()
        g_to_p = monai_metrics.compute_average_surface_distance(yg, yp, spacing=spacing).item()
        p_to_g = monai_metrics.compute_average_surface_distance(yp, yg, spacing=spacing).item()
        nsd = monai_metrics.compute_surface_dice(yp, yg, [tolerance], spacing=spacing).item()
    return d, 0.5 * (g_to_p + p_to_g), nsd


@pytest.mark.parametrize("seed", range(12))
def test_equals_monai(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(10, 40, 3))
    spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, 3))
    tolerance = float(rng.uniform(0.3, 6.0))
    g = multifocal(rng, shape, int(rng.integers(1, 5)))
    p = ndimage.shift(g.astype(float), rng.integers(-2, 3, 3), order=0) > 0.5   # a near miss
    p |= multifocal(rng, shape, int(rng.integers(0, 3)))                        # and false positives
    if not (p.any() and g.any()):
        pytest.skip("drawn case has an empty mask")
    ours = evaluate_case(p, g, spacing, tolerance)
    d, msd, nsd = monai_three(p, g, spacing, tolerance)
    assert ours["dice"] == pytest.approx(d, rel=1e-6)
    assert ours["msd"] == pytest.approx(msd, rel=1e-6)
    assert ours["nsd"] == pytest.approx(nsd, rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_single_metrics_equal_monai(seed):
    # the public one-metric functions, each against MONAI directly (not against evaluate_case)
    rng = np.random.default_rng(200 + seed)
    shape, spacing, tolerance = (18, 15, 9), (1.2, 1.2, 2.5), 3.0
    g = multifocal(rng, shape, 3)
    p = multifocal(rng, shape, 3) | (ndimage.shift(g.astype(float), (1, -1, 0), order=0) > 0.5)
    d, msd, nsd = monai_three(p, g, spacing, tolerance)
    assert dice(p, g) == pytest.approx(d, rel=1e-6)
    assert mean_surface_distance(p, g, spacing) == pytest.approx(msd, rel=1e-6)
    assert normalized_surface_dice(p, g, spacing, tolerance) == pytest.approx(nsd, rel=1e-6)
    r = evaluate_case(p, g, spacing, tolerance)
    assert (r["pred_voxels"], r["target_voxels"]) == (int(p.sum()), int(g.sum()))


@pytest.mark.parametrize("spacing,shift", [((0.8, 1.2, 3.0), (2, 1, 0)), ((0.6, 0.8, 2.0), (2, 2, 0)),
                                           ((1.0, 1.6, 1.2), (0, 1, 1))])
def test_voxel_distances_at_the_tolerance_count_as_monai_counts_them(spacing, shift):
    # lattice offsets of exactly 2 mm ((0.8 * 2)^2 + 1.2^2 = 4): MONAI's EDT arithmetic counts them within
    g = np.zeros((40, 40, 20), bool)
    g[8:32, 8:32, 5:15] = True
    g[12:20, 20:26, 3:8] = True
    p = np.roll(g, shift, axis=(0, 1, 2))
    nsd = monai_three(p, g, spacing, 2.0)[2]
    assert evaluate_case(p, g, spacing, 2.0)["nsd"] == pytest.approx(nsd, rel=1e-6)
