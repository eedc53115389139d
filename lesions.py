"""Lesion by lesion (SPEC 6c): detection, lesion F1, per-component Dice and the lesion-burden
groups, beyond the paper's case-level metrics.

Self-contained: imports numpy and scipy only (torch tensors are accepted and converted),
so this one file can be copied into another project, like metrics.py.

A case-level Dice of 0.7 can be one large lesion found and five small ones missed. HIE
lesions are multifocal and small (over half of BONBID-HIE's patients have lesions under 1 %
of the brain, Bao et al. 2023), so multifocal-lesion challenges judge lesion by lesion:
WMH 2019 (Kuijf et al. 2019) ranks on lesion sensitivity and lesion F1, BraTS 2023 on
lesion-wise Dice, and the BONBID-HIE organisers report results by lesion burden.

Lesion: a connected component of a mask with full connectivity (26 neighbours in 3-D, 8
in 2-D), as BraTS 2023 and MONAI's per-component Dice count them. With G = the label's
lesions and P = the prediction's components, per case:

    lesions            = |G|
    detected           = #{g in G : g shares >= 1 voxel with the prediction}
    missed             = lesions - detected
    false_lesions      = #{p in P : p shares no voxel with the label}
    lesion_sensitivity = detected / lesions                        (NaN when lesions = 0)
    lesion_f1          = 2 detected / (2 detected + missed + false_lesions)
                         (1 when both masks are empty; 0 for a prediction without a lesion)
    cc_dice            = mean over g in G of Dice(P ∩ V_g, G ∩ V_g)     (CC-Metrics, Jaus et al. 2024)

V_g, the Voronoi region of lesion g, is every voxel whose nearest label voxel (Euclidean, in
voxels) belongs to g: a false positive counts against the lesion it lies nearest to. No
lesion: cc_dice 1 if the prediction is empty, else 0. This is MONAI's
``DiceMetric(per_component=True)``, its test oracle.

Each mask is labelled once per case and every count is read from that labelling:

    m = lesion_metrics(pred, target, spacing)     # the keys above, lesion_volumes (mm^3), lesion_detected
    b = burden(target, adc); burden_group(b)      # "none", "<1%", "1-5%" or ">5%" of the brain (ADC > 0)
    remove_small_lesions(mask, spacing, 20.0)     # post-processing: components under 20 mm^3 dropped
    size_bin(volume_mm3)                          # "<10", "10-100", "100-1000" or ">1000" mm^3

Definitions, tests and what the study reports by burden group: docs/lesions.md.

To copy one function, take the imports and exactly these (tests/test_copy.py builds each and runs it;
"reference" is lesion_metrics with backend="reference" alone):
    reference = _as_mask, _check_spacing, lesion_metrics, _reference, _result
    components = components, _run_components, _later_neighbours, RUNS
    lesion_metrics = reference + components + _fast, _rim, _cc_dice, _grid, _nearest_lesion, _voronoi_edt, NEAR,
            TABLE
    remove_small_lesions = _as_mask, _check_spacing, remove_small_lesions + components
    burden = _as_mask, burden, burden_group
    size_bin = SIZE_BINS, size_bin, GRID_BINS, grid_bin
"""
import math

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["lesion_metrics", "components", "remove_small_lesions", "burden", "burden_group", "size_bin",
           "LESION_METRICS", "GROUPS", "SIZE_BINS", "GRID_BINS", "grid_bin"]

# the per-case numbers lesion_metrics returns (the two per-lesion lists aside)
LESION_METRICS = ("lesions", "detected", "missed", "false_lesions", "lesion_sensitivity", "lesion_f1", "cc_dice")
GROUPS = ("none", "<1%", "1-5%", ">5%")                     # lesion burden, % of the brain
SIZE_BINS = ("<10", "10-100", "100-1000", ">1000")          # lesion volume, mm^3
GRID_BINS = ("<1", "1-8", "8-64", ">64")                     # lesion volume, voxels of the grid a model sees
NEAR = 4                   # rim voxels looked at per false positive before settling a possible tie by EDT
TABLE = 1 << 24            # voxels of a bounding box up to which neighbours are found by a table
RUNS = 1 / 32              # a mask with fewer runs than this share of its bounding box is labelled run by run


# --------------------------------------------------------------------------- checks

def _as_mask(x, name):
    """A 2-D or 3-D boolean numpy array from a binary numpy array or torch tensor."""
    if hasattr(x, "detach"):                                   # torch, without importing it
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D or 3-D mask, got shape {x.shape}")
    if x.dtype != bool:
        bad = (x != 0) & (x != 1)
        if bad.any():
            raise ValueError(f"{name}: expected binary values 0/1, got e.g. {x[bad].flat[0].item()!r}")
        x = x.astype(bool)
    return x


def _check_spacing(spacing, ndim):
    s = np.asarray(spacing, dtype=float).reshape(-1)
    if s.size != ndim or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing: expected {ndim} positive mm values, one per array axis, got {spacing!r}")
    return s


# --------------------------------------------------------------------------- the lesion-wise metrics

def lesion_metrics(pred, target, spacing, backend="fast"):
    """Lesion-wise metrics of one case (SPEC 6c; WMH 2019, BraTS 2023, CC-Metrics): a dict of

        lesions, detected, missed, false_lesions       counts (see the module's docstring)
        lesion_sensitivity = detected / lesions         NaN without a lesion (left out of means)
        lesion_f1 = 2 detected / (2 detected + missed + false_lesions)   1 when both are empty
        cc_dice                                         MONAI's per-component Dice
        lesion_volumes: [mm^3 of each lesion of the label], lesion_detected: [bool each]

    ``pred``, ``target``: binary 2-D or 3-D masks of one shape (numpy or torch); ``spacing``:
    mm per array axis (for the volumes only: lesions are counted in voxels). ``backend``:
    "reference" (the definition below, scipy on the whole volume) or "fast" (the same values
    from the fast paths at the end of the file). The one place that picks.
    """
    pred, target = _as_mask(pred, "pred"), _as_mask(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target: expected one shape, got {pred.shape} and {target.shape}")
    if backend not in ("fast", "reference"):
        raise ValueError(f"backend: expected 'fast' or 'reference', got {backend!r}")
    voxel_mm3 = float(np.prod(_check_spacing(spacing, target.ndim)))
    return (_reference if backend == "reference" else _fast)(pred, target, voxel_mm3)


def _reference(pred, target, voxel_mm3):
    """SPEC 6c's definition in its shortest exact form: label both masks (full connectivity),
    read the overlaps, and take Dice in each lesion's Voronoi region (every voxel belongs to the
    lesion of its nearest label voxel, by scipy's EDT feature transform, as MONAI's)."""
    full = ndimage.generate_binary_structure(target.ndim, target.ndim)
    (g, n_g), (p, n_p) = ndimage.label(target, full), ndimage.label(pred, full)
    size = np.bincount(g.ravel(), minlength=n_g + 1)[1:]
    tp = np.bincount(g[pred], minlength=n_g + 1)[1:]
    false_lesions = n_p - np.unique(p[pred & target]).size
    if n_g:
        region = g[tuple(ndimage.distance_transform_edt(g == 0, return_distances=False, return_indices=True))]
        fp = np.bincount(region[pred & ~target], minlength=n_g + 1)[1:]
        cc_dice = float(np.mean(2 * tp / (2 * tp + fp + size - tp)))
    else:
        cc_dice = 1.0 if n_p == 0 else 0.0
    return _result(n_g, n_p, size, tp, false_lesions, cc_dice, voxel_mm3)


def _result(n_g, n_p, size, tp, false_lesions, cc_dice, voxel_mm3):
    """The dict of lesion_metrics from its counts (both paths)."""
    detected = int((tp > 0).sum())
    missed = n_g - detected
    return {"lesions": n_g, "detected": detected, "missed": missed, "false_lesions": int(false_lesions),
            "lesion_sensitivity": detected / n_g if n_g else math.nan,
            "lesion_f1": 1.0 if n_g + n_p == 0 else 2 * detected / (2 * detected + missed + false_lesions),
            "cc_dice": cc_dice, "lesion_volumes": (size * voxel_mm3).tolist(), "lesion_detected": (tp > 0).tolist()}


# --------------------------------------------------------------------------- post-processing

def remove_small_lesions(mask, spacing, min_volume):
    """``mask`` without its lesions (full-connectivity components, as above) smaller than
    ``min_volume`` mm^3, in the geometry of ``spacing``: what the 2023 BONBID-HIE top teams
    did to their predictions (a minimum component size). 0 keeps every component."""
    mask = _as_mask(mask, "mask")
    voxel_mm3 = float(np.prod(_check_spacing(spacing, mask.ndim)))
    if not (isinstance(min_volume, (int, float, np.floating, np.integer)) and min_volume >= 0):
        raise ValueError(f"min_volume: expected a volume >= 0 in mm^3, got {min_volume!r}")
    indices, ids, n = components(mask)
    keep = np.bincount(ids, minlength=n) * voxel_mm3 >= min_volume
    out = np.zeros(mask.shape, bool)
    out.flat[indices[keep[ids]]] = True
    return out


# --------------------------------------------------------------------------- burden and size

def burden(target, adc):
    """Lesion burden of a case: label voxels / brain voxels, the brain being the voxels of
    its skull-stripped ADC map above 0 (background 0), both in the case's own geometry."""
    target = _as_mask(target, "target")
    adc = np.asarray(adc.detach().cpu().numpy() if hasattr(adc, "detach") else adc)
    if adc.shape != target.shape:
        raise ValueError(f"adc: expected the label's shape {target.shape}, got {adc.shape}")
    brain = int(np.count_nonzero(adc > 0))
    if brain == 0:
        raise ValueError("adc: expected a brain (voxels above 0) in the ADC map, got none")
    return int(target.sum()) / brain


def burden_group(burden):
    """The BONBID-HIE lesion-burden group of a ``burden`` (fraction of the brain):
    "none" (no lesion voxel), "<1%" (< 0.01), "1-5%" (0.01 to 0.05) or ">5%"."""
    if not (isinstance(burden, (int, float, np.floating, np.integer)) and 0 <= burden <= 1):
        raise ValueError(f"burden: expected a fraction of the brain in [0, 1], got {burden!r}")
    return "none" if burden == 0 else "<1%" if burden < 0.01 else "1-5%" if burden <= 0.05 else ">5%"


def size_bin(volume_mm3):
    """The volume bin of a lesion for detection by size: <10, 10-100, 100-1000, >1000 mm^3."""
    edges = (10.0, 100.0, 1000.0)
    return SIZE_BINS[int(np.searchsorted(edges, volume_mm3, side="right"))]


def grid_bin(voxels):
    """The bin of a lesion's volume in voxels of the grid a model sees (SPEC 6c): <1, 1-8,
    8-64, >64. A lesion under one grid voxel is below the grid's resolution: no loss can be
    blamed for missing it."""
    return GRID_BINS[int(np.searchsorted((1.0, 8.0, 64.0), voxels, side="right"))]


# --------------------------------------------------------------------------- fast paths
# Equal to _reference (tests/test_lesions.py holds them equal on random masks): each mask labelled
# once and read at its own voxels (a sparse mask as a graph of them), and the false positives alone
# assigned to their nearest lesion, by a k-d tree over the lesions' rims. At the end, so that the
# file reads as the definition first; lesion_metrics picks the path.

def _fast(pred, target, voxel_mm3):
    """lesion_metrics from one labelling of each mask, read at its own voxels."""
    g_idx, g_ids, n_g = components(target)
    p_idx, p_ids, n_p = components(pred)
    in_pred = np.isin(g_idx, p_idx, assume_unique=True)            # label voxels the prediction covers
    in_label = np.isin(p_idx, g_idx, assume_unique=True)
    size = np.bincount(g_ids, minlength=n_g)
    tp = np.bincount(g_ids[in_pred], minlength=n_g)
    false_lesions = n_p - np.unique(p_ids[in_label]).size
    cc_dice = _cc_dice(target.shape, g_idx, g_ids, n_g, size, tp, p_idx[~in_label], n_p)
    return _result(n_g, n_p, size, tp, false_lesions, cc_dice, voxel_mm3)


def _rim(coords):
    """Which voxels of a mask (``coords``, C order) have a face neighbour outside it: the
    nearest voxel of a lesion to any point outside it is one of these (from an inner voxel,
    the step towards the point along its longest axis is nearer and still in the lesion)."""
    index, strides, find = _grid(coords)
    inner = np.ones(index.size, bool)
    for stride in strides:
        for step in (-stride, stride):
            inner &= find(index + int(step)) >= 0
    return ~inner


def _cc_dice(shape, g_idx, g_ids, n_g, size, tp, fp_idx, n_p):
    """Per-component Dice: Dice inside each lesion's Voronoi region, averaged over lesions.
    A label voxel's nearest lesion is its own, so only the false positives need assigning."""
    if n_g == 0:
        return 1.0 if n_p == 0 else 0.0
    fp = np.zeros(n_g, np.int64)
    if fp_idx.size:
        coords = np.unravel_index(g_idx, shape)
        g, rim = np.stack(coords, 1), _rim(coords)
        points = np.stack(np.unravel_index(fp_idx, shape), 1)
        nearest = _nearest_lesion(points, g[rim], g_ids[rim], shape, g_idx, g_ids)
        fp = np.bincount(nearest, minlength=n_g)
    fn = size - tp
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def components(mask):
    """(indices, ids, n) of a boolean mask's fully connected components: the flat (C-order)
    indices of its True voxels in ascending order, the component of each (0 .. n-1, numbered
    in that order, as ``scipy.ndimage.label`` numbers them, less one) and their count.

    The same labelling as ``ndimage.label(mask, full connectivity)``, read at the mask's
    voxels. A lesion mask is mostly background and its lesions are runs of voxels along a
    line: a mask with few runs for its bounding box (scattered false positives across a
    volume) is labelled run by run (``_run_components``) instead of scanning every
    background voxel of the box.
    """
    mask = np.asarray(mask, bool)
    indices = np.flatnonzero(mask)
    if indices.size == 0:
        return indices, np.zeros(0, np.int64), 0
    width = mask.shape[-1] if mask.ndim > 1 else mask.size
    first = np.flatnonzero((np.diff(indices, prepend=-2) != 1) | (indices % width == 0))   # where each run starts
    starts, ends = (np.unravel_index(indices[at], mask.shape) for at in (first, np.append(first[1:], indices.size) - 1))
    box = tuple(slice(int(a.min()), int(b.max()) + 1) for a, b in zip(starts, ends))     # runs span the mask's box
    if first.size < RUNS * math.prod(s.stop - s.start for s in box):
        ids, n = _run_components(indices, first, mask.shape)
        return indices, ids, n
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labels, n = ndimage.label(mask[box], structure=structure)
    return indices, labels[mask[box]].astype(np.int64) - 1, n     # box order is the array's C order


def _run_components(indices, first, shape):
    """Components of a mask's voxels (``indices``, flat, ascending) from their runs along the
    last axis (``first``: where each run starts in ``indices``), as a graph of runs. Two runs
    touch (full connectivity) where their lines are neighbours and their extents, each grown
    by one voxel, overlap. Keys number the lines of the grid padded by one, and each line's
    voxels padded by one, so a neighbour line is a fixed step away and no run meets one of
    another line: the runs a run touches in a line are the consecutive ones, by binary
    search, whose end is at or after its start - 1 and whose start is at or before its end + 1."""
    *lines, width = shape if len(shape) > 1 else (1, shape[0])
    length = np.diff(first, append=indices.size)
    line, x = np.divmod(indices[first], width)
    padded = tuple(n + 2 for n in lines)
    key = np.ravel_multi_index(tuple(c + 1 for c in np.unravel_index(line, lines)), padded) * (width + 2)
    start = key + x + 1
    end = start + length - 1
    low = key[None, :] + _later_neighbours(padded)[:, None] * (width + 2) + x    # (neighbour lines, runs)
    high = low + length + 1
    begin = np.searchsorted(end, low.ravel()).reshape(low.shape).T.ravel()      # each run's touching runs:
    count = np.maximum(np.searchsorted(start, high.ravel(), "right").reshape(low.shape).T.ravel() - begin, 0)
    stop = np.cumsum(count)                                                 # begin .. begin + count, run by run
    touching = np.arange(stop[-1]) + np.repeat(begin - (stop - count), count)
    indptr = np.concatenate([[0], stop.reshape(first.size, -1)[:, -1]])     # CSR rows: the runs, in order
    graph = sparse.csr_matrix((np.ones(touching.size), touching, indptr), shape=(first.size,) * 2)
    n, ids = connected_components(graph, directed=False)       # numbered from the first run on: C order
    return np.repeat(ids.astype(np.int64), length), n


def _later_neighbours(padded):
    """Flat steps, in a C-order grid of shape ``padded``, from a cell to each of its full
    neighbours that comes after it (13 in 3-D, 4 in 2-D): each pair of neighbours once."""
    offsets = np.indices((3,) * len(padded)).reshape(len(padded), -1).T - 1
    later = offsets[np.arange(len(offsets)), (offsets != 0).argmax(1)] > 0     # first nonzero offset positive
    strides = np.array([math.prod(padded[k + 1:]) for k in range(len(padded))], np.int64)
    return offsets[later] @ strides


def _grid(coords):
    """(flat indices of the voxels at ``coords`` in their bounding box padded by one voxel,
    that box's strides, ``find``): in the padded box a neighbour is a fixed offset away, with
    no wrap across a border, and C order is kept. ``find(flat indices)`` gives the position
    of each in ``index``, -1 where it is no voxel of the set: by a table over the box, or by
    binary search where the box is too large for one."""
    low = [int(c.min()) for c in coords]
    padded = tuple(int(c.max()) - l + 3 for c, l in zip(coords, low))
    strides = np.array([math.prod(padded[k + 1:]) for k in range(len(padded))])
    index = np.ravel_multi_index(tuple(c - l + 1 for c, l in zip(coords, low)), padded)
    if math.prod(padded) <= TABLE:
        table = np.full(math.prod(padded), -1, np.int64)
        table[index] = np.arange(index.size)
        return index, strides, table.__getitem__

    def find(wanted):
        at = np.minimum(np.searchsorted(index, wanted), index.size - 1)
        return np.where(index[at] == wanted, at, -1)
    return index, strides, find


def _nearest_lesion(points, rim_points, rim_ids, shape, g_indices, g_ids):
    """For each voxel of ``points`` (coordinates), the lesion whose voxels lie nearest
    (Euclidean, voxel units), as scipy's EDT would assign it (MONAI's Voronoi regions).

    One k-d tree over the lesions' rim voxels gives each point its NEAR nearest ones; where
    they show a point equally near two lesions (or cannot rule it out: all NEAR are equally
    near), the tie is settled exactly as scipy's feature transform settles it
    (``_voronoi_edt``).
    """
    k = min(NEAR, len(rim_points))
    tree = cKDTree(rim_points.astype(float), balanced_tree=False, compact_nodes=False)    # built once, queried once
    distance, which = tree.query(points.astype(float), k=k)
    distance, lesion = distance.reshape(len(points), k), rim_ids[which.reshape(len(points), k)]
    nearest = lesion[:, 0]
    nearest_too = distance == distance[:, :1]
    tied = (nearest_too & (lesion != nearest[:, None])).any(1)
    if k < len(rim_points):
        tied |= nearest_too[:, -1]
    return _voronoi_edt(points, shape, g_indices, g_ids) if tied.any() else nearest


def _voronoi_edt(points, shape, g_indices, g_ids):
    """The lesion of each point by scipy's EDT feature transform (the reference, as MONAI's
    ``compute_voronoi_regions_fast``), on the bounding box of the points and the lesions:
    every feature voxel lies in it, so each voxel's nearest feature is found there too."""
    g = np.stack(np.unravel_index(g_indices, shape), 1)
    low = np.minimum(g.min(0), points.min(0))
    high = np.maximum(g.max(0), points.max(0)) + 1
    labels = np.zeros(tuple(high - low), np.int64)
    labels[tuple((g - low).T)] = g_ids + 1
    nearest = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return labels[tuple(nearest)][tuple((points - low).T)] - 1
