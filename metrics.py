"""The study's three metrics: Dice, mean surface distance (MSD) and normalized surface
Dice (NSD), in mm (paper 3.3, eqs. 7-9; SPEC 6).

Self-contained: imports numpy and scipy only (torch tensors are accepted and converted),
so this one file can be copied into another project.

Inputs are two binary 3-D masks of one shape, ``pred`` (P) and ``target`` (G), and the
voxel spacing in mm per array axis.

Surface: the voxels of a mask with at least one of their 6 face neighbours outside it
(mask XOR its 6-connected erosion; outside the array counts as background).
d(a -> B): the Euclidean distance, in mm, from surface voxel a to the nearest surface
voxel of the other mask.

These voxel-surface definitions equal MONAI's (``get_mask_edges``,
``compute_average_surface_distance`` taken in each direction, ``compute_surface_dice``
without sub-voxels). The official BONBID-HIE evaluator uses DeepMind's sub-voxel
surfels weighted by their area instead, so its MSD and NSD differ from these (and from
MONAI's) by a fraction of a voxel on smooth surfaces; Dice is the same.

Empty masks (the BONBID-HIE evaluator's convention, except MSD):
    both empty:        Dice 1, MSD 0,   NSD 1
    exactly one empty: Dice 0, MSD inf, NSD 0   (the paper's Table 1 prints "Inf")
"""
import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["dice", "mean_surface_distance", "normalized_surface_dice", "evaluate_case", "summarize",
           "surface", "METRICS"]

METRICS = ("dice", "msd", "nsd")


# --------------------------------------------------------------------------- checks

def _as_mask(x, name):
    """A 3-D boolean numpy array from a binary numpy array or torch tensor."""
    if hasattr(x, "detach"):                                   # torch, without importing it
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D mask, got shape {x.shape}")
    if x.dtype != bool:
        bad = (x != 0) & (x != 1)
        if bad.any():
            raise ValueError(f"{name}: expected binary values 0/1, got e.g. {x[bad].flat[0].item()!r}")
        x = x.astype(bool)
    return x


def _check_pair(pred, target):
    pred, target = _as_mask(pred, "pred"), _as_mask(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target: expected one shape, got {pred.shape} and {target.shape}")
    return pred, target


def _check_spacing(spacing):
    s = np.asarray(spacing, dtype=float).reshape(-1)
    if s.size != 3 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing: expected 3 positive mm values, one per array axis, got {spacing!r}")
    return tuple(s)


def _check_tolerance(tolerance):
    if not (isinstance(tolerance, (int, float, np.floating, np.integer)) and tolerance >= 0):
        raise ValueError(f"tolerance: expected a distance >= 0 in mm, got {tolerance!r}")
    return float(tolerance)


# --------------------------------------------------------------------------- pieces

def surface(mask):
    """Voxels of ``mask`` with a face neighbour outside it (outside the array included)."""
    return mask ^ ndimage.binary_erosion(mask, border_value=0)


def dice(pred, target):
    r"""Dice (eq. 9): 2 |P ∩ G| / (|P| + |G|); 1 when both are empty."""
    pred, target = _check_pair(pred, target)
    total = int(pred.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & target).sum()) / total


def _surface_distances(pred, target, spacing):
    """(d(∂G -> ∂P), d(∂P -> ∂G)) in mm for two non-empty masks, each set computed once.

    Every surface voxel lies in the bounding box of P ∪ G, and whether a voxel is on the
    surface depends on its face neighbours only, so the surfaces are extracted from that
    box grown by one voxel. The distances are the Euclidean distance transform of each
    surface read at the other surface's voxels; a k-d tree over the surface voxels (in
    mm) gives exactly those values without filling the rest of the box.
    """
    box = ndimage.find_objects((pred | target).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    points_p = np.argwhere(surface(pred[box])) * np.asarray(spacing)
    points_g = np.argwhere(surface(target[box])) * np.asarray(spacing)
    return cKDTree(points_p).query(points_g)[0], cKDTree(points_g).query(points_p)[0]


def _metrics(pred, target, spacing, tolerance):
    n_pred, n_target = int(pred.sum()), int(target.sum())
    out = {"pred_voxels": n_pred, "target_voxels": n_target}
    if n_pred == 0 or n_target == 0:
        both = n_pred == n_target
        return {"dice": float(both), "msd": 0.0 if both else math.inf, "nsd": float(both), **out}
    g_to_p, p_to_g = _surface_distances(pred, target, spacing)
    return {
        "dice": 2.0 * int((pred & target).sum()) / (n_pred + n_target),
        "msd": 0.5 * (g_to_p.mean() + p_to_g.mean()),
        "nsd": (int((g_to_p <= tolerance).sum()) + int((p_to_g <= tolerance).sum())) / (g_to_p.size + p_to_g.size),
        **out,
    }


# --------------------------------------------------------------------------- public metrics

def mean_surface_distance(pred, target, spacing):
    r"""Mean surface distance in mm (eq. 7), the mean of the two directed means:

        MSD = 1/2 ( mean_{a in ∂G} d(a -> ∂P) + mean_{a in ∂P} d(a -> ∂G) )

    0 when both masks are empty, inf when exactly one is. (MONAI's ``symmetric=True``
    pools the two sets of distances instead, which differs when |∂P| != |∂G|.)
    """
    pred, target = _check_pair(pred, target)
    return float(_metrics(pred, target, _check_spacing(spacing), 0.0)["msd"])


def normalized_surface_dice(pred, target, tolerance=2.0, spacing=None):
    r"""Normalized surface Dice at tolerance tau mm (eq. 8; Nikolov et al. 2021):

        NSD = ( #{a in ∂G : d(a -> ∂P) <= tau} + #{a in ∂P : d(a -> ∂G) <= tau} ) / (|∂G| + |∂P|)

    tau = 2 mm by default (the BONBID-HIE challenge's; the paper gives none). ``spacing``
    is required: a silent 1 mm default would give wrong numbers on real scans.
    1 when both masks are empty, 0 when exactly one is.
    """
    pred, target = _check_pair(pred, target)
    return float(_metrics(pred, target, _check_spacing(spacing), _check_tolerance(tolerance))["nsd"])


def evaluate_case(pred, target, spacing, tolerance=2.0):
    """All three metrics from one pair of surface-distance sets (not three passes).

    Returns {"dice", "msd", "nsd", "pred_voxels", "target_voxels"}.
    """
    pred, target = _check_pair(pred, target)
    result = _metrics(pred, target, _check_spacing(spacing), _check_tolerance(tolerance))
    return {k: float(v) if k in METRICS else v for k, v in result.items()}


def summarize(rows):
    """Per metric over cases: mean, std, median and the count of cases, with the counts of
    cases with an empty prediction and with an empty target.

    ``rows``: dicts as returned by ``evaluate_case``. A mean or std over cases that
    contain inf is inf (one missed lesion makes the MSD of a model inf, as in the
    paper's Table 1); the median is taken as it is.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows: expected at least one evaluated case, got none")
    out = {"cases": len(rows),
           "empty_pred": sum(r["pred_voxels"] == 0 for r in rows),
           "empty_target": sum(r["target_voxels"] == 0 for r in rows)}
    for m in METRICS:
        v = np.array([r[m] for r in rows], dtype=float)
        finite = np.isfinite(v).all()
        out[m] = {
            "mean": float(v.mean()) if finite else math.inf,
            "std": float(v.std()) if finite else math.inf,
            "median": float(np.median(v)),
            "inf": int(np.isinf(v).sum()),
        }
    return out
