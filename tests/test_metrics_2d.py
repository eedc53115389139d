"""metrics.py in 2-D as in 3-D (issue: SPARSeg, the best published BONBID-HIE result, is a 2-D
network): voxel surfaces against MONAI, surfels against DeepMind's surface-distance, their own
2-D test cases, and a case by hand."""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from metrics import contour_length_table, evaluate_case, surface_distances, surfels


def random_pair(rng):
    shape = tuple(int(s) for s in rng.integers(8, 40, 2))
    g = ndimage.binary_dilation(rng.random(shape) < 0.03, iterations=int(rng.integers(0, 3)))
    p = (ndimage.shift(g.astype(float), rng.integers(-2, 3, 2), order=0) > 0.5) | (rng.random(shape) < 0.01)
    return p, g, tuple(float(s) for s in rng.uniform(0.3, 3.0, 2)), float(rng.uniform(0.5, 5.0))


def test_voxel_surfaces_in_2d_by_hand():
    # a 3x3 square and the same square one pixel along axis 1, 1 x 2 mm pixels: 8 surface pixels
    # each (all but the centre). Of G's: the column the shift leaves (3 pixels) is one pixel, 2 mm,
    # from P's surface; the pixel that becomes P's centre is 1 mm (one row) from it; 4 lie on it.
    # P's by symmetry the same: each directed mean (3 * 2 + 1) / 8, NSD at 1 mm (5 + 5) / 16.
    g, p = np.zeros((7, 7), bool), np.zeros((7, 7), bool)
    g[2:5, 1:4], p[2:5, 2:5] = True, True
    r = evaluate_case(p, g, (1.0, 2.0), tolerance=1.0)
    assert r["dice"] == pytest.approx(2 * 6 / 18)
    assert r["msd"] == pytest.approx(7 / 8)
    assert r["nsd"] == pytest.approx(10 / 16)
    empty = np.zeros_like(g)
    assert math.isinf(evaluate_case(empty, g, (1, 1))["msd"]) and evaluate_case(empty, empty, (1, 1))["nsd"] == 1.0


@pytest.mark.parametrize("seed", range(8))
def test_voxel_surfaces_equal_monai_in_2d(seed):
    monai = pytest.importorskip("monai.metrics")
    p, g, spacing, tolerance = random_pair(np.random.default_rng(seed))
    if not (p.any() and g.any()):
        pytest.skip("an empty mask drawn")
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msd = 0.5 * (monai.compute_average_surface_distance(one_hot(p), one_hot(g), spacing=spacing).item()
                     + monai.compute_average_surface_distance(one_hot(g), one_hot(p), spacing=spacing).item())
        nsd = monai.compute_surface_dice(one_hot(p), one_hot(g), [tolerance], spacing=spacing).item()
    ours = evaluate_case(p, g, spacing, tolerance)
    assert ours["msd"] == pytest.approx(msd, rel=1e-6) and ours["nsd"] == pytest.approx(nsd, rel=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_surfels_equal_surface_distance_in_2d(seed):
    sd = pytest.importorskip("surface_distance")
    p, g, spacing, tolerance = random_pair(np.random.default_rng(50 + seed))
    if not (p.any() and g.any()):
        pytest.skip("an empty mask drawn")
    d = sd.compute_surface_distances(g, p, spacing)
    ours = evaluate_case(p, g, spacing, tolerance, surfaces="surfel")
    assert ours["msd"] == pytest.approx(float(np.mean(sd.compute_average_surface_distance(d))), rel=1e-6)
    assert ours["nsd"] == pytest.approx(sd.compute_surface_dice_at_tolerance(d, tolerance), rel=1e-6)


def test_contour_lengths_equal_surface_distances_table():
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    for spacing in ((1.0, 1.0), (2.0, 1.0), (0.7, 3.1)):
        theirs = lookup.create_table_neighbour_code_to_contour_length(spacing)
        ours = contour_length_table(spacing)
        # the same 16 codes with the corners numbered the other way round: bit i <-> bit 3 - i
        for code in range(16):
            assert ours[code] == pytest.approx(theirs[int(f"{code:04b}"[::-1], 2)])


def test_deepminds_2d_cases():
    """surface_distance_test.py's SurfaceDistance2DTest: two pixels 2 mm apart, and two squares
    shifted by one pixel, at 2 x 1 mm."""
    g, p = np.zeros((128, 128), bool), np.zeros((128, 128), bool)
    g[50, 70], p[50, 72] = True, True
    d = surface_distances(p, g, (2, 1), surfaces="surfel")
    diag = 0.5 * math.sqrt(2 ** 2 + 1 ** 2)
    assert sorted(d["areas_gt"]) == pytest.approx([diag] * 4) and sorted(d["areas_pred"]) == pytest.approx([diag] * 4)
    assert sorted(d["distances_gt_to_pred"]) == [1, 1, 2, 2] and sorted(d["distances_pred_to_gt"]) == [1, 1, 2, 2]
    r = evaluate_case(p, g, (2, 1), tolerance=1.0, surfaces="surfel")
    assert (r["msd"], r["nsd"], r["dice"]) == pytest.approx((1.5, 0.5, 0.0))

    g, p = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    g[1:3, 1:3], p[1:4, 1:3] = True, True
    d = surface_distances(p, g, (2, 1), surfaces="surfel")
    assert sorted(d["areas_gt"]) == pytest.approx(sorted([diag, 1, diag, 2, diag, 1, diag, 2]))
    assert sorted(d["areas_pred"]) == pytest.approx(sorted([diag, 1, diag, 2, 2, diag, 1, diag, 2, 2]))
    assert sorted(d["distances_gt_to_pred"]) == [0] * 7 + [1]
    assert sorted(d["distances_pred_to_gt"]) == [0] * 7 + [2] * 3
    positions, lengths = surfels(g, (2, 1))
    assert len(positions) == 8 and lengths.sum() == pytest.approx(4 * diag + 2 * 1 + 2 * 2)
