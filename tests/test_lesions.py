"""Lesion by lesion (SPEC 6c): hand-worked cases, scipy's 26-connected labelling as the
oracle for the counts, MONAI's DiceMetric(per_component=True) as the oracle for cc_dice."""
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

import lesions
from conftest import multifocal
from lesions import burden, burden_group, components, lesion_metrics, size_bin


def box(shape, *slices):
    m = np.zeros(shape, bool)
    m[slices] = True
    return m


# --------------------------------------------------------------------------- by hand

def test_two_lesions_one_found():
    g = box((10, 10, 10), slice(1, 3), slice(1, 3), slice(1, 3)) | box((10, 10, 10), slice(6, 8), slice(6, 8), slice(6, 8))
    p = box((10, 10, 10), slice(1, 3), slice(1, 3), slice(1, 3))
    r = lesion_metrics(p, g, (1.0, 1.0, 2.0))
    assert (r["lesions"], r["detected"], r["missed"], r["false_lesions"]) == (2, 1, 1, 0)
    assert r["lesion_sensitivity"] == 0.5
    assert r["lesion_f1"] == pytest.approx(2 / 3)                  # 2*1 / (2*1 + 1 + 0)
    assert r["cc_dice"] == pytest.approx(0.5)                      # region 1: Dice 1, region 2: Dice 0
    assert r["lesion_volumes"] == [16.0, 16.0] and r["lesion_detected"] == [True, False]   # 8 voxels of 2 mm^3


def test_a_false_lesion_counts_against_f1_and_its_nearest_lesion():
    g = box((10, 10, 10), slice(1, 3), slice(1, 3), slice(1, 3))
    p = g.copy()
    p[9, 9, 9] = True
    r = lesion_metrics(p, g, (1.0, 1.0, 1.0))
    assert (r["lesions"], r["detected"], r["false_lesions"]) == (1, 1, 1)
    assert r["lesion_f1"] == pytest.approx(2 / 3)                  # 2 / (2 + 0 + 1)
    assert r["cc_dice"] == pytest.approx(16 / 17)                  # one region: tp 8, fp 1


def test_diagonal_neighbours_are_one_lesion():
    g = np.zeros((8, 8, 8), bool)
    g[2, 2, 2] = g[3, 3, 3] = True                                 # corner to corner: 26-connected
    p = np.zeros_like(g)
    p[5, 5, 5] = p[6, 6, 6] = True
    r = lesion_metrics(p, g, (1.0, 1.0, 1.0))
    assert (r["lesions"], r["detected"], r["false_lesions"]) == (1, 0, 1)
    assert r["lesion_f1"] == 0.0 and r["cc_dice"] == 0.0


def test_a_prediction_bridging_two_lesions():
    """Lesions at x = 1-2 and x = 5-6 of a line, the prediction x = 1-6: one component
    touching both (no false lesion), each gap voxel a false positive of its nearer lesion."""
    g = np.zeros((9, 3, 3), bool)
    g[1:3, 1, 1] = g[5:7, 1, 1] = True
    p = np.zeros_like(g)
    p[1:7, 1, 1] = True
    r = lesion_metrics(p, g, (1.0, 1.0, 1.0))
    assert (r["lesions"], r["detected"], r["false_lesions"], r["lesion_f1"]) == (2, 2, 0, 1.0)
    assert r["cc_dice"] == pytest.approx(0.8)                      # each: tp 2, fp 1 -> 4 / 5
    g[5:7, 1, 1], g[6:8, 1, 1] = False, True                       # now x = 4 is as near to both
    p[1:8, 1, 1] = True
    r = lesion_metrics(p, g, (1.0, 1.0, 1.0))
    assert r["cc_dice"] == pytest.approx((4 / 6 + 4 / 5) / 2)      # whichever lesion takes the tie


@pytest.mark.parametrize("pred_empty, target_empty, expected", [
    (True, True, {"lesions": 0, "false_lesions": 0, "lesion_f1": 1.0, "cc_dice": 1.0}),
    (False, True, {"lesions": 0, "false_lesions": 1, "lesion_f1": 0.0, "cc_dice": 0.0}),
    (True, False, {"lesions": 1, "detected": 0, "lesion_sensitivity": 0.0, "lesion_f1": 0.0, "cc_dice": 0.0}),
])
def test_empty_masks(pred_empty, target_empty, expected):
    lesion = box((6, 6, 6), slice(2, 4), slice(2, 4), slice(2, 4))
    empty = np.zeros_like(lesion)
    r = lesion_metrics(empty if pred_empty else lesion, empty if target_empty else lesion, (1, 1, 1))
    assert {k: r[k] for k in expected} == expected
    assert math.isnan(r["lesion_sensitivity"]) == target_empty      # no lesion: NaN, left out of means


def test_burden_and_its_groups():
    adc = np.zeros((10, 10, 4))
    adc[:5, :5, :] = 1200.0                                         # 100 brain voxels
    label = np.zeros(adc.shape, bool)
    label[0, 0, :3] = True
    assert burden(label, adc) == 0.03 and burden_group(0.03) == "1-5%"
    assert [burden_group(b) for b in (0, 0.0099, 0.01, 0.05, 0.0501)] == ["none", "<1%", "1-5%", "1-5%", ">5%"]
    assert [size_bin(v) for v in (9.9, 10, 999, 1000, 5e4)] == ["<10", "10-100", "100-1000", ">1000", ">1000"]
    with pytest.raises(ValueError, match="adc: expected a brain"):
        burden(label, np.zeros(adc.shape))
    with pytest.raises(ValueError, match=r"adc: expected the label's shape \(10, 10, 4\), got \(3, 3, 3\)"):
        burden(label, np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="burden: expected a fraction"):
        burden_group(1.5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pred and target: expected one shape"):
        lesion_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1))
    with pytest.raises(ValueError, match="target: expected binary values"):
        lesion_metrics(np.zeros((4, 4, 4)), np.full((4, 4, 4), 2), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing: expected 2 positive mm values"):
        lesion_metrics(np.zeros((4, 4)), np.zeros((4, 4)), (1, 1, 1))


# --------------------------------------------------------------------------- scipy: the labelling and the counts

# always the box's ndimage.label, or always the graph of runs
@pytest.mark.parametrize("runs", (0.0, 2.0))
@pytest.mark.parametrize("ndim", (1, 2, 3))
def test_components_equal_scipys_full_connectivity_labels(monkeypatch, runs, ndim):
    monkeypatch.setattr(lesions, "RUNS", runs)
    rng = np.random.default_rng(ndim)
    shapes = [tuple(int(s) for s in rng.integers(4, 20, ndim)) for _ in range(8)] + [(1,) * ndim, (7,) * ndim]
    for k, shape in enumerate(shapes):
        m = rng.random(shape) < (rng.uniform(0.02, 0.7) if k < len(shapes) - 2 else 1.0)     # the last two full
        if k == 0:
            m[:] = False
            m[(0,) * (ndim - 1) + (-1,)] = m[(-1,) * ndim] = True          # a corner, and one voxel on the border
        indices, ids, n = components(m)
        labels, n_scipy = ndimage.label(m, structure=np.ones((3,) * ndim))
        assert n == n_scipy and np.array_equal(indices, np.flatnonzero(m))
        assert np.array_equal(ids, labels.flat[indices] - 1)


def test_runs_touch_across_lines_only_where_their_grown_extents_overlap():
    # worked by hand: in a 3 x 6 mask, a run of the middle line touches a run of the lines
    # beside it diagonally (columns 2 and 3), not across a gap of one empty column
    m = np.zeros((3, 6), bool)
    m[0, 0:3] = True           # 0: columns 0-2
    m[1, 3:5] = True           # 0: touches column 2 of the line above at a corner
    m[2, 0:2] = True           # 1: its column 1 is two columns from column 3
    m[0, 5] = True             # 0: a corner of the middle run's column 4
    assert lesions._run_components(np.flatnonzero(m), np.array([0, 3, 4, 6]), m.shape)[1] == 2
    indices, ids, n = components(m)
    assert n == 2 and ids.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("seed", range(6))
def test_counts_equal_scipys_labelling(seed):
    rng = np.random.default_rng(200 + seed)
    shape = tuple(int(s) for s in rng.integers(12, 30, 3))
    g = multifocal(rng, shape, int(rng.integers(0, 6)))
    p = (ndimage.shift(g.astype(float), rng.integers(-3, 4, 3), order=0) > 0.5) | multifocal(rng, shape, 2)
    full = np.ones((3, 3, 3))
    lg, n_g = ndimage.label(g, full)
    lp, n_p = ndimage.label(p, full)
    found = [k for k in range(1, n_g + 1) if p[lg == k].any()]
    false = [k for k in range(1, n_p + 1) if not g[lp == k].any()]
    r = lesion_metrics(p, g, (0.9, 1.1, 2.5))
    assert (r["lesions"], r["detected"], r["false_lesions"]) == (n_g, len(found), len(false))
    assert r["lesion_detected"] == [k in found for k in range(1, n_g + 1)]
    assert r["lesion_volumes"] == pytest.approx([(lg == k).sum() * 0.9 * 1.1 * 2.5 for k in range(1, n_g + 1)])


# --------------------------------------------------------------------------- MONAI: cc_dice

def monai_cc_dice(p, g):
    import torch
    from monai.metrics import DiceMetric
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DiceMetric(per_component=True, include_background=False, ignore_empty=False)(one_hot(p), one_hot(g)).item()


@pytest.mark.parametrize("ndim", (2, 3))
def test_cc_dice_equals_monai_per_component(ndim):
    pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(30 + ndim)
    for i in range(12):
        shape = tuple(int(s) for s in rng.integers(8, 28, ndim))
        if i % 3 == 0:                                       # noise: many lesions, many ties
            g, p = rng.random(shape) < 0.1, rng.random(shape) < 0.1
        else:
            g = rng.random(shape) < 0.02
            g = ndimage.binary_dilation(g, iterations=int(rng.integers(0, 3)))
            p = (ndimage.shift(g.astype(float), rng.integers(-2, 3, ndim), order=0) > 0.5) | (rng.random(shape) < 0.01)
        assert lesion_metrics(p, g, (1.0,) * ndim)["cc_dice"] == pytest.approx(monai_cc_dice(p, g), abs=1e-6)


def test_cc_dice_equals_monai_on_the_hand_cases():
    pytest.importorskip("monai.metrics")
    g = np.zeros((9, 3, 3), bool)
    g[1:3, 1, 1] = g[6:8, 1, 1] = True
    p = np.zeros_like(g)
    p[1:8, 1, 1] = True                                      # the tied bridge
    empty = np.zeros_like(g)
    for pred, target in ((p, g), (empty, g), (p, empty), (empty, empty)):
        assert lesion_metrics(pred, target, (1, 1, 1))["cc_dice"] == pytest.approx(monai_cc_dice(pred, target))


def _mask_pairs():
    """(pred, target) pairs a fast path could get wrong: empty and full masks, one voxel, lesions
    touching the border, sparse false positives far from the lesions, random ones; 2-D and 3-D."""
    rng = np.random.default_rng(21)
    pairs = []
    for shape in ((16, 13), (15, 12, 9)):
        empty, full = np.zeros(shape, bool), np.ones(shape, bool)
        one = empty.copy()
        one[(2,) * len(shape)] = True
        border = empty.copy()
        border[0] = True
        sparse = rng.random(shape) > 0.985
        pairs += [(empty, empty), (empty, one), (one, empty), (full, one), (one, full), (border, one),
                  (sparse, border), (rng.random(shape) > 0.8, rng.random(shape) > 0.85)]
    return pairs


@pytest.mark.parametrize("i", range(16))
def test_the_fast_path_equals_the_definition(i):
    pred, target = _mask_pairs()[i]
    spacing = (0.9, 1.3, 3.0)[:pred.ndim]                          # anisotropic: volumes in mm^3
    fast, reference = (lesion_metrics(pred, target, spacing, backend=b) for b in ("fast", "reference"))
    assert fast.keys() == reference.keys()
    for key, value in reference.items():
        assert fast[key] == pytest.approx(value, nan_ok=True), key
    with pytest.raises(ValueError, match="backend: expected 'fast' or 'reference', got 'gpu'"):
        lesion_metrics(pred, target, spacing, backend="gpu")
