"""The six losses of "Multimodal HIE Lesion Segmentation in Neonates: A Comparative
Study of Loss Functions" (Usman, Haseeb, Syed), and the distance field behind HDT.

SPEC 5 (and the distance field of SPEC 5's hdt). Self-contained: imports torch, numpy and
scipy only, so this one file can be copied into another project. To copy one loss, take
its class with ``_BinaryLoss``, ``_check_pair``, ``_spatial_sum`` and ``EPS``; the hdt
losses also need the "distance field" section. The compound ``LogCompoundLoss`` takes any
region loss ``f(logits, target) -> scalar`` (MONAI's, or your own) beside HDT.

Shapes: ``logits`` (B, 1, X, Y, Z) -- or (B, 1, H, W) in 2-D -- raw network outputs;
``target`` the same shape, values in {0, 1}. Every loss returns a scalar tensor.

Notation (SPEC 5): p = sigmoid(x), g = target, sums run over the spatial voxels of one
sample, then the batch is averaged. eps = 1e-5 smooths the ratios (MONAI's default,
which the paper used), so an empty prediction of an empty target costs 0, not NaN.

    >>> loss = make_loss("tversky_hdt")
    >>> value = loss(logits, target)          # doctest: +SKIP
"""
import math
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "LOSS_NAMES", "make_loss", "distance_field",
    "DiceLoss", "FocalLoss", "DiceFocalLoss", "TverskyLoss", "HausdorffDTLoss", "LogCompoundLoss",
]

EPS = 1e-5
LOSS_NAMES = ("dice", "dice_focal", "tversky", "hdt", "dice_focal_hdt", "tversky_hdt")


# --------------------------------------------------------------------------- checks

def _check_pair(logits, target, values=True):
    """Raise ValueError unless logits/target are (B,1,...) tensors of one shape, target binary.

    ``values`` False skips the scan of the target's values, which on a GPU waits for the
    device (a host sync every step): for callers that checked each target once already.
    """
    for name, t in (("logits", logits), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits: expected 4-D (B,1,H,W) or 5-D (B,1,X,Y,Z), got shape {tuple(logits.shape)}")
    if logits.shape[1] != 1:
        raise ValueError(f"logits: expected 1 channel (binary lesion logits), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating tensor, got dtype {logits.dtype}")
    if target.shape != logits.shape:
        raise ValueError(f"target: expected the shape of logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    if values and target.dtype != torch.bool and bool(target.ne(0).logical_and_(target.ne(1)).any()):
        bad = target[(target != 0) & (target != 1)].flatten()[:3].tolist()
        raise ValueError(f"target: expected values in {{0, 1}}, got e.g. {bad}")


class _BinaryLoss(nn.Module):
    """Validates (logits, target) once, then calls ``compute`` in float32.

    Compounds call their parts' ``compute`` directly so the input is checked once.
    float32 because under autocast the logits may arrive as fp16, where the sums
    over a 192x192x32 volume lose the small lesion terms.
    """

    check_target = True        # False: shapes and dtypes only (see _check_pair)

    def forward(self, logits, target):
        _check_pair(logits, target, self.check_target)
        return self.compute(logits.float(), target.to(device=logits.device, dtype=torch.float32))

    def compute(self, logits, target):  # pragma: no cover - abstract
        raise NotImplementedError


def _spatial_sum(t):
    return t.sum(dim=tuple(range(2, t.ndim)))


# --------------------------------------------------------------------------- region losses

class DiceLoss(_BinaryLoss):
    r"""Soft Dice loss (paper eq. 1, Milletari et al. 2016).

        L_dice = 1 - (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps)

    per sample, averaged over the batch. Equals MONAI ``DiceLoss(sigmoid=True)``.
    """

    def compute(self, logits, target):
        p = torch.sigmoid(logits)
        intersection = _spatial_sum(p * target)
        denominator = _spatial_sum(p) + _spatial_sum(target)
        return (1 - (2 * intersection + EPS) / (denominator + EPS)).mean()


class FocalLoss(_BinaryLoss):
    r"""Binary focal loss, the distribution term of eq. 2 (Lin et al. 2017).

        L_focal = mean over all voxels of (1 - p_t)^gamma * BCE(x, g),
        p_t = p where g = 1, 1 - p where g = 0, gamma = 2, no class weight.

    BCE comes from the logits (log-sigmoid), never log(p): log(sigmoid(x)) underflows
    to -inf for confident wrong logits. (1 - p_t)^gamma is exp(gamma * logsigmoid(-x*(2g-1)))
    for the same reason. Equals MONAI ``FocalLoss(use_softmax=False, gamma=2)``.
    """

    def __init__(self, gamma=2.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma: expected >= 0, got {gamma}")
        self.gamma = gamma

    def compute(self, logits, target):
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        log_one_minus_pt = F.logsigmoid(-logits * (2 * target - 1))
        return (torch.exp(self.gamma * log_one_minus_pt) * bce).mean()


class DiceFocalLoss(_BinaryLoss):
    r"""Dice-Focal loss (paper eq. 2).

        L_DF = L_dice + L_focal          (weights 1 and 1, gamma = 2)

    Erratum: eq. 2 prints DFL = (1 - a)(1 - DiceLoss) + a(1 - FocalLoss); minimising
    that would *maximise* both losses. The settings the paper states ("gamma 2, equal
    balance, no weight", through MONAI) are MONAI's ``DiceFocalLoss``: dice + focal.
    """

    def __init__(self, gamma=2.0):
        super().__init__()
        self.dice, self.focal = DiceLoss(), FocalLoss(gamma)

    def compute(self, logits, target):
        return self.dice.compute(logits, target) + self.focal.compute(logits, target)


class TverskyLoss(_BinaryLoss):
    r"""Tversky loss (paper eq. 3, Salehi et al. 2017).

        L_T = 1 - (TP + eps) / (TP + alpha * FP + beta * FN + eps)
        TP = sum(p g), FP = sum(p (1 - g)), FN = sum((1 - p) g)

    alpha = 0.3 weighs false positives, beta = 0.7 false negatives: a missed lesion
    costs more than a false alarm. alpha = beta = 0.5 is the Dice loss. Equals MONAI
    ``TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)``.
    """

    def __init__(self, alpha=0.3, beta=0.7):
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha, beta: expected >= 0, got {alpha}, {beta}")
        self.alpha, self.beta = alpha, beta

    def compute(self, logits, target):
        p = torch.sigmoid(logits)
        tp = _spatial_sum(p * target)
        fp = _spatial_sum(p) - tp            # sum(p (1 - g))
        fn = _spatial_sum(target) - tp       # sum((1 - p) g)
        return (1 - (tp + EPS) / (tp + self.alpha * fp + self.beta * fn + EPS)).mean()


# --------------------------------------------------------------------------- distance field

def _edt_float32(mask):
    """scipy's EDT with the distances taken from its feature transform in float32
    (exact: squared voxel distances are integers far below 2^24)."""
    nearest = ndimage.distance_transform_edt(mask, return_distances=False, return_indices=True)
    d2 = np.zeros(mask.shape, np.float32)
    for axis, n in enumerate(mask.shape):
        shape = [1] * mask.ndim
        shape[axis] = n
        offset = (nearest[axis] - np.arange(n, dtype=nearest.dtype).reshape(shape)).astype(np.float32)
        d2 += offset * offset
    return np.sqrt(d2, out=d2)


def _field_scipy(mask):
    """EDT(m) + EDT(not m) of one boolean numpy mask that has both classes.

    EDT(not m) needs the whole volume; EDT(m), non-zero only on the foreground, does not:
    - a foreground voxel with a background face neighbour (a surface voxel) is at 1;
    - the others (interior voxels, few for a lesion) are done one connected component
      C (full connectivity) at a time, on C's bounding box grown by one voxel, with
      every voxel but C's counted as background. That is exact: a voxel outside the
      grown box has a nearer one on the box's rim, outside C; and a voxel of another
      component is never nearer than true background (step from it one voxel towards
      the point of C in every axis at once: that is nearer, and it is background or
      yet another component, never C, or the two would touch).
    So a sparse prediction with scattered false positives costs one full-volume EDT,
    not two, and no per-voxel-blob Python loop.
    """
    field = _edt_float32(~mask)
    interior = ndimage.binary_erosion(mask, border_value=1)    # outside the array is no background
    field[mask & ~interior] = 1.0
    if interior.any():
        labels, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
        boxes = ndimage.find_objects(labels)
        for k in np.unique(labels[interior]):
            grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[k - 1])
            component = labels[grown] == k
            inner = component & interior[grown]
            field[grown][inner] = ndimage.distance_transform_edt(component)[inner]
    return field


def _nearest_1d(features, dim):
    """Squared distance along ``dim`` alone to the nearest True of ``features`` (inf where the
    line has none): the first separable pass, on a binary input a running index of the last
    feature from each side, O(n) per line instead of the min-plus pass's O(n^2)."""
    n = features.shape[dim]
    shape = [1] * features.ndim
    shape[dim] = n
    index = torch.arange(n, device=features.device, dtype=torch.float32).view(shape)
    before = torch.where(features, index, -math.inf).cummax(dim).values
    after = torch.where(features, index, math.inf).flip(dim).cummin(dim).values.flip(dim)
    d = torch.minimum(index - before, after - index)
    return d * d


def _min_plus_rows(rows, parabola):
    """out[r, i] = min_j rows[r, j] + parabola[i, j]."""
    return (rows[:, None, :] + parabola).amin(dim=-1)


_FUSED = {}


def _fused_min_plus():
    """``_min_plus_rows`` compiled (CUDA): one kernel that never stores the (rows, n, n)
    sums, which is what makes the eager form memory-bound. None where compiling fails."""
    if "fn" not in _FUSED:
        try:
            _FUSED["fn"] = torch.compile(_min_plus_rows, dynamic=False)
        except Exception:                                          # noqa: BLE001 - eager is exact too
            _FUSED["fn"] = None
    return _FUSED["fn"]


def _min_plus(f, dim):
    """Exact 1-D squared-distance pass along ``dim``: out(i) = min_j f(j) + (i - j)^2.

    Brute force over j, fully parallel, which is what a GPU wants: on CUDA one compiled
    kernel; elsewhere (or if compiling fails) in row chunks so that the (rows, n, n)
    intermediate stays ~256 MB.
    """
    f = f.movedim(dim, -1)
    shape, n = f.shape, f.shape[-1]
    rows = f.reshape(-1, n)
    idx = torch.arange(n, device=f.device, dtype=f.dtype)
    parabola = (idx[:, None] - idx[None, :]) ** 2          # (i, j)
    fused = _fused_min_plus() if f.is_cuda else None
    if fused is not None:
        try:
            return fused(rows, parabola).reshape(shape).movedim(-1, dim)
        except Exception as e:                                     # noqa: BLE001 - e.g. no Triton: eager
            warnings.warn(f"distance_field: the compiled min-plus pass failed ({type(e).__name__}: "
                          f"{str(e).strip()[:200]}); exact but slower eager passes from now on")
            _FUSED["fn"] = None
    chunk = max(1, (1 << 26) // (n * n))
    out = torch.empty_like(rows)
    for s in range(0, rows.shape[0], chunk):
        out[s:s + chunk] = _min_plus_rows(rows[s:s + chunk], parabola)
    return out.reshape(shape).movedim(-1, dim)


def _sq_edt_torch(features):
    """Squared Euclidean distance (voxels) from every voxel to the nearest True of
    ``features`` (N, *spatial), separably: a linear scan along the longest axis, then one
    min-plus pass per other axis."""
    axes = sorted(range(1, features.ndim), key=lambda d: -features.shape[d])
    d2 = _nearest_1d(features, axes[0])
    for dim in axes[1:]:
        d2 = _min_plus(d2, dim)
    return d2


def _field_torch(masks):
    """Distance fields of (N, *spatial) boolean masks, each with both classes, on their
    device: both halves of every field in one batched transform."""
    d = _sq_edt_torch(torch.cat([~masks, masks])).sqrt()
    return d[:len(masks)] + d[len(masks):]


@torch.no_grad()
def distance_field(mask, backend="auto"):
    r"""Distance field of a binary mask, per sample (SPEC 5; Karimi & Salcudean 2019).

        d_m = EDT(m) + EDT(not m)

    EDT(m) gives each foreground voxel its Euclidean distance, in voxels, to the
    nearest background voxel (0 on the background), so every voxel gets its distance
    to the nearest voxel of the other class and boundary voxels on both sides get 1.
    A sample whose mask is empty or full has no boundary: its field is 0.

    Args:
        mask: (B, 1, ...) tensor; a float mask is thresholded at 0.5 (as MONAI does).
        backend: "scipy" (reference, host), "torch" (exact separable min-plus EDT,
            runs where the tensor is), or "auto": torch for CUDA tensors, so a GPU
            loss never copies to the host, scipy otherwise.
    Returns:
        float32 tensor of ``mask``'s shape, on ``mask``'s device, without gradient.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim < 3:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a (B, 1, ...) tensor, got {got}")
    if backend not in ("auto", "scipy", "torch"):
        raise ValueError(f"backend: expected 'auto', 'scipy' or 'torch', got {backend!r}")
    if backend == "auto":
        backend = "torch" if mask.is_cuda else "scipy"
    fg = mask if mask.dtype == torch.bool else mask > 0.5
    flat = fg.reshape(fg.shape[0] * fg.shape[1], *fg.shape[2:])
    count = flat.flatten(1).sum(1)
    mixed = (count > 0) & (count < flat[0].numel())
    if backend == "torch":
        # every sample, then 0 where there is no boundary: no data-dependent indexing,
        # so the GPU never waits for the host (an empty mask's inf field is dropped)
        shape = (-1,) + (1,) * (flat.ndim - 1)
        return torch.where(mixed.view(shape), _field_torch(flat), 0.0).view(mask.shape)
    field = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out, host = field.view(flat.shape), flat.cpu().numpy()
    for i in mixed.nonzero().flatten().tolist():
        out[i] = torch.from_numpy(_field_scipy(host[i])).to(mask.device)
    return field


# --------------------------------------------------------------------------- boundary loss

class HausdorffDTLoss(_BinaryLoss):
    r"""Hausdorff distance-transform loss, alpha = 2 (paper eq. 4; Karimi & Salcudean 2019).

        L_HDT = mean over voxels of (p - g)^2 * (d_p^alpha + d_g^alpha)

    per sample, averaged over the batch; d_m = ``distance_field(m)``, d_p of the mask
    p > 0.5. The fields are constants (no gradient): the loss weights each voxel's
    squared error by how far it lies from the boundaries. Equals MONAI
    ``HausdorffDTLoss(sigmoid=True, alpha=2)``.

    Erratum: eq. 4 prints HDTL = 1 / (1 + HausdorffDistance). That is not the cited
    loss, is not differentiable through the max, and is *largest* for the best
    prediction. The cited loss, as MONAI implements it (the paper's stated
    implementation), is the one above.
    """

    def __init__(self, alpha=2.0, backend="auto"):
        super().__init__()
        self.alpha, self.backend = alpha, backend

    def compute(self, logits, target):
        p = torch.sigmoid(logits)
        d_p, d_g = distance_field(torch.cat([p.detach() > 0.5, target > 0.5]), self.backend).chunk(2)
        weight = d_p ** self.alpha + d_g ** self.alpha
        error = (p - target) ** 2 * weight
        return error.mean(dim=tuple(range(2, error.ndim))).mean()


class LogCompoundLoss(_BinaryLoss):
    r"""Region loss plus log-HDT: the paper's two new losses (eqs. 5 and 6).

        L = a * L_region + b * log(1 + L_HDT),      a = 0.9, b = 0.1

    eq. 5 (dice_focal_hdt): L_region = L_DF;  eq. 6 (tversky_hdt): L_region = L_T.

    Erratum: eqs. 5-6 print log(HDTL): log(0) = -inf for a perfect (or empty and
    correctly empty) prediction, and the loss is unbounded below. We use
    log(1 + L_HDT), MONAI's ``LogHausdorffDTLoss``, which is 0 there and keeps the
    intended damping of outlier distances.

    Args:
        region: the region loss, any callable ``f(logits, target) -> scalar tensor``: one of
            this file's (called without checking the input twice), MONAI's
            ``TverskyLoss(sigmoid=True)``, or your own.
        a, b: the weights of the region term and of log(1 + HDT).
        hdt: the boundary term, ``HausdorffDTLoss()`` by default (any such callable).
    """

    def __init__(self, region, a=0.9, b=0.1, hdt=None):
        super().__init__()
        if not callable(region):
            raise ValueError(f"region: expected a loss f(logits, target) -> scalar, got {type(region).__name__}")
        self.region, self.hdt = region, hdt if hdt is not None else HausdorffDTLoss()
        self.a, self.b = a, b

    def compute(self, logits, target):
        return self.a * _part(self.region)(logits, target) + self.b * torch.log1p(_part(self.hdt)(logits, target))


def _part(loss):
    """A compound's part as a function: this file's losses skip the input check (done once
    by the compound), anything else is called as it is."""
    return loss.compute if isinstance(loss, _BinaryLoss) else loss


# --------------------------------------------------------------------------- factory

def make_loss(name, check_target=True):
    """The paper's loss ``name`` (one of LOSS_NAMES) with the paper's settings.

    ``check_target`` False: the target's values are not scanned on each call (a training
    loop whose dataset checks every case once keeps the GPU free of host syncs).
    """
    makers = {
        "dice": DiceLoss,
        "dice_focal": DiceFocalLoss,
        "tversky": TverskyLoss,
        "hdt": HausdorffDTLoss,
        "dice_focal_hdt": lambda: LogCompoundLoss(DiceFocalLoss()),
        "tversky_hdt": lambda: LogCompoundLoss(TverskyLoss()),
    }
    if name not in makers:
        raise ValueError(f"loss: expected one of {', '.join(LOSS_NAMES)}; got {name!r}")
    loss = makers[name]()
    loss.check_target = check_target
    return loss
