"""metrics.py against cases worked by hand and against its invariants."""
import math

import numpy as np
import pytest
import torch

import metrics
from conftest import special_masks
from metrics import dice, evaluate_case, mean_surface_distance, normalized_surface_dice, summarize, surface


def box(shape, *slices):
    m = np.zeros(shape, bool)
    for s in slices:
        m[s] = True
    return m


def test_identical_masks():
    m = box((10, 9, 8), np.s_[2:6, 3:7, 1:5], np.s_[7:9, 0:2, 6:8])
    r = evaluate_case(m, m, spacing=(0.7, 0.7, 2.2))
    assert (r["dice"], r["msd"], r["nsd"]) == (1.0, 0.0, 1.0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_single_voxels_k_apart_anisotropic(k):
    p = box((5, 5, 12), np.s_[2, 2, 3])
    g = box((5, 5, 12), np.s_[2, 2, 3 + k])
    spacing = (0.5, 0.5, 2.2)                      # the voxels are k * 2.2 mm apart along z
    assert dice(p, g) == 0
    assert mean_surface_distance(p, g, spacing) == pytest.approx(2.2 * k)
    assert normalized_surface_dice(p, g, spacing, 2.2 * k) == 1.0
    assert normalized_surface_dice(p, g, spacing, 2.2 * k - 0.01) == 0.0
    # the same pair along x: k * 0.5 mm
    p2, g2 = box((12, 5, 5), np.s_[3, 2, 2]), box((12, 5, 5), np.s_[3 + k, 2, 2])
    assert mean_surface_distance(p2, g2, (0.5, 2.2, 2.2)) == pytest.approx(0.5 * k)


def nested_cubes():
    # G: the 9-cube [2, 11)^3; P: the 5-cube [4, 9)^3 inside it, 2 voxels from each face.
    g = box((13, 13, 13), np.s_[2:11, 2:11, 2:11])
    p = box((13, 13, 13), np.s_[4:9, 4:9, 4:9])
    return p, g


def test_nested_cubes_surfaces_by_hand():
    p, g = nested_cubes()
    assert surface(g).sum() == 9 ** 3 - 7 ** 3 == 386
    assert surface(p).sum() == 5 ** 3 - 3 ** 3 == 98


def test_nested_cubes_msd_and_nsd():
    p, g = nested_cubes()
    # every voxel of ∂P is 2 from the nearest face of G; a voxel v of ∂G is at
    # |v - clamp(v, 4, 8)| from the solid P, whose nearest point lies on ∂P.
    v = np.argwhere(surface(g)).astype(float)
    g_to_p = np.linalg.norm(v - np.clip(v, 4, 8), axis=1)
    expected_msd = 0.5 * (g_to_p.mean() + 2.0)
    assert mean_surface_distance(p, g, (1, 1, 1)) == pytest.approx(expected_msd)
    # below tau = 2 nothing is close enough; at 2: all 98 of ∂P and the 6 x 5 x 5 face
    # centres of ∂G that sit straight above P's faces
    assert normalized_surface_dice(p, g, (1, 1, 1), 1.99) == 0.0
    assert normalized_surface_dice(p, g, (1, 1, 1), 2.0) == pytest.approx((98 + 150) / (98 + 386))
    # at tau = sqrt(5): add the rings one voxel further out on each face, 6 x 4 x 5
    assert normalized_surface_dice(p, g, (1, 1, 1), math.sqrt(5)) == pytest.approx((98 + 150 + 120) / 484)
    # spacing scales distances: at 2 mm/voxel the 2-voxel gap is 4 mm
    assert normalized_surface_dice(p, g, (2, 2, 2), 2.0) == 0.0
    assert mean_surface_distance(p, g, (2, 2, 2)) == pytest.approx(2 * expected_msd)


@pytest.mark.parametrize("i", range(21))
def test_surface_points_are_the_surfaces_voxels(i):
    # the fast path of _voxel_distances against the definition (mask XOR its erosion)
    mask = special_masks()[i]
    spacing = (0.7, 1.1, 2.5)[-mask.ndim:]
    expected = np.argwhere(surface(mask)) * np.asarray(spacing)
    np.testing.assert_array_equal(metrics._surface_indices(mask) * np.asarray(spacing), expected)


def test_masks_touching_the_border():
    p = box((6, 6, 6), np.s_[0:3, 0:4, 0:4])
    g = box((6, 6, 6), np.s_[1:4, 0:4, 0:4])
    # outside the array is background: only 2 x 2 x 1 voxels of the 3x4x4 block are interior
    assert surface(p).sum() == 48 - 4
    # of P's 44 surface voxels, the 16 of the face x=0 are 1 from G's face x=1; the 4
    # centre voxels of the face x=2 are inside G (its interior), 1 from G's faces; the
    # other 24 lie on G's surface. G mirrors P.
    assert mean_surface_distance(p, g, (1, 1, 1)) == pytest.approx(20 / 44)
    assert normalized_surface_dice(p, g, (1, 1, 1), 0.5) == pytest.approx(48 / 88)
    assert normalized_surface_dice(p, g, (1, 1, 1), 1.0) == 1.0
    assert dice(p, g) == pytest.approx(2 * 32 / 96)


@pytest.mark.parametrize("p_empty,g_empty,expected", [
    (True, True, (1.0, 0.0, 1.0)),
    (True, False, (0.0, math.inf, 0.0)),
    (False, True, (0.0, math.inf, 0.0)),
])
def test_empty_mask_conventions(p_empty, g_empty, expected):
    m = box((6, 6, 6), np.s_[1:3, 1:3, 1:3])
    p = np.zeros_like(m) if p_empty else m
    g = np.zeros_like(m) if g_empty else m
    r = evaluate_case(p, g, (1, 1, 2))
    assert (r["dice"], r["msd"], r["nsd"]) == expected
    assert dice(p, g) == expected[0]
    assert mean_surface_distance(p, g, (1, 1, 2)) == expected[1]
    assert normalized_surface_dice(p, g, (1, 1, 2), 2.0) == expected[2]


def random_mask(rng, shape, density):
    from scipy import ndimage
    noise = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return noise > np.quantile(noise, 1 - density)


@pytest.mark.parametrize("seed", range(5))
def test_invariants(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(8, 20, 3))
    p, g = random_mask(rng, shape, 0.1), random_mask(rng, shape, 0.15)
    spacing = tuple(rng.uniform(0.5, 3, 3))
    assert mean_surface_distance(p, g, spacing) == pytest.approx(mean_surface_distance(g, p, spacing))
    nsd = [normalized_surface_dice(p, g, spacing, t) for t in (0, 0.5, 1, 2, 4, 8, 100)]
    assert nsd == sorted(nsd) and nsd[-1] == 1.0
    assert normalized_surface_dice(p, g, spacing, 2) == pytest.approx(normalized_surface_dice(g, p, spacing, 2))
    assert dice(p, p) == 1.0 and dice(p, g) == dice(g, p)
    assert 0 <= evaluate_case(p, g, spacing)["dice"] < 1


def test_accepts_torch_and_int_masks():
    m = box((6, 6, 6), np.s_[1:4, 1:4, 1:3])
    r = evaluate_case(torch.from_numpy(m).float(), m.astype(np.uint8), [1, 1, 1])
    assert (r["dice"], r["msd"], r["nsd"]) == (1.0, 0.0, 1.0)


def test_summarize_with_inf():
    rows = [
        {"dice": 0.5, "msd": 2.0, "nsd": 0.6, "pred_voxels": 10, "target_voxels": 12},
        {"dice": 0.0, "msd": math.inf, "nsd": 0.0, "pred_voxels": 0, "target_voxels": 5},
        {"dice": 1.0, "msd": 0.0, "nsd": 1.0, "pred_voxels": 0, "target_voxels": 0},
    ]
    s = summarize(rows)
    assert (s["cases"], s["empty_pred"], s["empty_target"]) == (3, 2, 1)
    assert s["dice"]["mean"] == pytest.approx(0.5) and s["dice"]["median"] == 0.5
    assert s["dice"]["std"] == pytest.approx(np.std([0.5, 0.0, 1.0]))
    assert s["msd"]["mean"] == math.inf and s["msd"]["std"] == math.inf and s["msd"]["inf"] == 1
    assert s["msd"]["median"] == 2.0
    assert summarize(rows[::2])["msd"]["mean"] == pytest.approx(1.0)


@pytest.mark.parametrize("call,match", [
    (lambda: dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5))), "expected one shape, got \\(4, 4, 4\\) and \\(4, 4, 5\\)"),
    (lambda: dice(np.zeros((4,)), np.zeros((4,))), "pred: expected a 3-D \\(or 2-D\\) mask, got shape \\(4,\\)"),
    (lambda: dice(np.zeros((4, 4, 4)), np.full((4, 4, 4), 2)), "target: expected binary values 0/1, got e.g. 2"),
    (lambda: mean_surface_distance(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 1)), "spacing: expected 3 positive"),
    (lambda: mean_surface_distance(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 0, 1)), "got \\(1, 0, 1\\)"),
    (lambda: normalized_surface_dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), None), "spacing: .* got None"),
    (lambda: normalized_surface_dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 1, 1), -1), "tolerance: expected a distance >= 0 in mm, got -1"),
    (lambda: evaluate_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 1, -2)), "spacing"),
    (lambda: summarize([]), "at least one"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
