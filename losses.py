"""The six losses of "Multimodal HIE Lesion Segmentation in Neonates: A Comparative
Study of Loss Functions" (Usman, Haseeb, Syed), the distance field behind HDT, and blob
loss, the instance-aware loss the paper's future work asks for.

SPEC 5 (with hdt's distance field) and 5b (blob loss; every parameter by name). Imports
torch, numpy and scipy only: copy this one file into another project. To copy one loss,
take its class with ``_BinaryLoss``, ``_check_pair``, ``_spatial_sum`` and ``EPS`` (hdt:
and the "distance field" section). The compounds ``LogCompoundLoss`` and ``BlobLoss``
take any region loss ``f(logits, target) -> scalar`` (MONAI's, or your own). At length: docs/losses.md.

Shapes: ``logits`` (B, 1, X, Y, Z) -- or (B, 1, H, W) in 2-D -- raw network outputs;
``target`` the same shape, values in {0, 1}. Every loss returns a scalar tensor.

Notation (SPEC 5): p = sigmoid(x), g = target, sums run over the spatial voxels of one
sample, then the batch is averaged. eps = 1e-5 smooths the ratios (MONAI's default,
which the paper used), so an empty prediction of an empty target costs 0, not NaN.

    >>> loss = make_loss("tversky_hdt")
    >>> loss = make_loss("tversky_hdt(a=0.7, b=0.3)")     # any parameter by name (SPEC 5b)
    >>> value = loss(logits, target)          # doctest: +SKIP
"""
import inspect
import math
import re
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "LOSS_NAMES", "BLOB_NAMES", "make_loss", "parse_loss", "loss_parameters", "distance_field",
    "DiceLoss", "FocalLoss", "DiceFocalLoss", "TverskyLoss", "HausdorffDTLoss", "LogCompoundLoss", "BlobLoss",
]

EPS = 1e-5
LOSS_NAMES = ("dice", "dice_focal", "tversky", "hdt", "dice_focal_hdt", "tversky_hdt")     # the paper's six
BLOB_NAMES = ("blob_dice", "blob_tversky_hdt")                                            # SPEC 5b


# --------------------------------------------------------------------------- checks

def _check_pair(logits, target, values=True):
    """Raise ValueError unless logits/target are (B,1,...) tensors of one shape, target binary.
    ``values`` False skips the scan of the target's values, which on a GPU waits for the
    device (a host sync every step): for callers that checked each target once already."""
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
    """Validates (logits, target) once, then calls ``compute`` in float32 (under autocast
    the logits may arrive as fp16, where sums over a 192x192x32 volume lose the small
    lesion terms). Compounds call their parts' ``compute``: the input is checked once."""

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

    BCE from the logits (log-sigmoid), never log(p), which underflows to -inf for confident
    wrong logits; (1 - p_t)^gamma as exp(gamma * logsigmoid(-x (2g - 1))) for the same
    reason. Equals MONAI ``FocalLoss(use_softmax=False, gamma=2)``.
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

    Erratum: eq. 2 prints DFL = (1 - a)(1 - DiceLoss) + a(1 - FocalLoss): minimising it
    would *maximise* both. The paper's settings ("gamma 2, equal balance, no weight",
    through MONAI) are MONAI's ``DiceFocalLoss``: dice + focal.
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

    alpha = 0.3 weighs false positives, beta = 0.7 false negatives (a missed lesion costs
    more); alpha = beta = 0.5 is Dice. Equals MONAI ``TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)``.
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

    EDT(not m) needs the whole volume; EDT(m) does not: a surface voxel of m is at 1, and
    the interior voxels (few, for a lesion) are done one component C (full connectivity)
    at a time on C's bounding box grown by one voxel, every voxel but C's as background.
    Exact: a voxel outside the grown box has a nearer one on its rim, outside C; a voxel
    of another component is never nearer than true background (one step from it towards
    C in every axis is nearer, and is background or another component, never C). So
    scattered false positives cost one full-volume EDT, not two.
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

    EDT(m): each foreground voxel's Euclidean distance, in voxels, to the nearest background
    voxel (0 on the background): every voxel gets its distance to the other class, boundary
    voxels on both sides 1. A sample whose mask is empty or full has no boundary: field 0.

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

    per sample, averaged over the batch; d_m = ``distance_field(m)``, d_p of the mask p > 0.5.
    The fields are constants (no gradient): each voxel's squared error weighs by its distance
    from the boundaries. Equals MONAI ``HausdorffDTLoss(sigmoid=True, alpha=2)``.

    Erratum: eq. 4 prints HDTL = 1 / (1 + HausdorffDistance): not the cited loss, not
    differentiable through the max, and *largest* for the best prediction. The cited
    loss, as MONAI (the paper's stated implementation) has it, is the one above.
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
        region: any callable ``f(logits, target) -> scalar tensor``: this file's, MONAI's
            ``TverskyLoss(sigmoid=True)``, or your own. a, b: the two terms' weights.
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


# --------------------------------------------------------------------------- blob loss (SPEC 5b)

class BlobLoss(_BinaryLoss):
    r"""Blob loss (Kofler et al. 2023, arXiv 2205.08209): any region loss made instance-aware.

        L_blob(x, g) = w_global * R(x, g) + w_blob * mean over samples b with >= 1 lesion
                                                    of mean over the lesions c of b of R(x_c, g_c)

    Lesions: the target's 26-connected components (8 in 2-D; SPEC 6c, scipy's full
    connectivity, as lesions.py counts them), labelled every call: augmentation moves them.
    g_c is lesion c alone; x_c the sample's logits with the voxels of its *other* lesions
    masked (probability 0: they are neither false positives of c nor carry gradient), the
    background kept, so a false positive counts against every lesion. Each lesion weighs
    the same: five small lesions missed make the blob term large where Dice barely moves.
    A batch without a lesion has no blob term (0).

    Erratum: SPEC 5b masks with logit -inf, which makes BCE-with-logits NaN (0 * inf); the
    most negative finite logit has probability 0 as well.

    Args:
        region: R, any callable ``f(logits, target) -> scalar`` (this file's, MONAI's
            ``DiceLoss(sigmoid=True)``, yours), called once per lesion on a (1, 1, ...) batch.
        w_global, w_blob: the weights of the global and of the blob term (the paper's 2, 1).
    """

    def __init__(self, region, w_global=2.0, w_blob=1.0):
        super().__init__()
        if not callable(region):
            raise ValueError(f"region: expected a loss f(logits, target) -> scalar, got {type(region).__name__}")
        if w_global < 0 or w_blob < 0:
            raise ValueError(f"w_global, w_blob: expected >= 0, got {w_global}, {w_blob}")
        self.region, self.w_global, self.w_blob = region, w_global, w_blob

    def compute(self, logits, target):
        region = _part(self.region)
        return self.w_global * region(logits, target) + self.w_blob * self.blob_term(logits, target)

    def blob_term(self, logits, target):
        """mean over samples with a lesion of the mean over its lesions of R(x_c, g_c); 0 without a lesion."""
        region, per_sample, masked = _part(self.region), [], torch.finfo(logits.dtype).min
        for b, (labels, n) in enumerate(map(lesion_labels, (target[:, :1] > 0.5).cpu().numpy())):
            labels = torch.from_numpy(labels)[None, None].to(target.device)
            lesions = [region(torch.where((labels > 0) & (labels != c), masked, logits[b:b + 1]),
                              (labels == c).to(target.dtype)) for c in range(1, n + 1)]
            per_sample += [torch.stack(lesions).mean()] if lesions else []
        return torch.stack(per_sample).mean() if per_sample else logits.new_zeros(())


def lesion_labels(mask):
    """(labels, n) of one (1, ...) boolean numpy mask: its full-connectivity components,
    0 background, 1 .. n, int64 (scipy, on the host: on CUDA, one wait for the device)."""
    labels, n = ndimage.label(mask[0], structure=np.ones((3,) * (mask.ndim - 1)))
    return labels.astype(np.int64), n


# --------------------------------------------------------------------------- factory: every loss by name

# name -> maker; a maker's keyword arguments are the loss's parameters, its defaults the paper's
# (in a compound, hdt_alpha is HDT's alpha: alpha and beta are Tversky's)
MAKERS = {
    "dice": lambda: DiceLoss(),
    "dice_focal": lambda gamma=2.0: DiceFocalLoss(gamma),
    "tversky": lambda alpha=0.3, beta=0.7: TverskyLoss(alpha, beta),
    "hdt": lambda alpha=2.0: HausdorffDTLoss(alpha),
    "dice_focal_hdt": lambda a=0.9, b=0.1, gamma=2.0, hdt_alpha=2.0:
        LogCompoundLoss(DiceFocalLoss(gamma), a, b, HausdorffDTLoss(hdt_alpha)),
    "tversky_hdt": lambda a=0.9, b=0.1, alpha=0.3, beta=0.7, hdt_alpha=2.0:
        LogCompoundLoss(TverskyLoss(alpha, beta), a, b, HausdorffDTLoss(hdt_alpha)),
    "blob_dice": lambda w_global=2.0, w_blob=1.0: BlobLoss(DiceLoss(), w_global, w_blob),
    "blob_tversky_hdt": lambda a=0.9, b=0.1, alpha=0.3, beta=0.7, hdt_alpha=2.0, w_global=2.0, w_blob=1.0:
        LogCompoundLoss(BlobLoss(TverskyLoss(alpha, beta), w_global, w_blob), a, b, HausdorffDTLoss(hdt_alpha)),
}
_CALL = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*(?:\((?P<args>.*)\))?\s*$", re.S)


def loss_parameters(name):
    """{parameter: default} of the built-in loss ``name``."""
    if name not in MAKERS:
        raise ValueError(f"loss: expected one of {', '.join(MAKERS)}; got {name!r}")
    return {k: p.default for k, p in inspect.signature(MAKERS[name]).parameters.items()}


def parse_loss(spec):
    """(name, {parameter: value}) of ``NAME`` or ``NAME(key=value, ...)`` (SPEC 5b), the
    values numbers; ValueError naming the loss's parameters or the bad value."""
    m = _CALL.match(spec) if isinstance(spec, str) else None
    if m is None or m["name"] not in MAKERS:
        raise ValueError(f"loss: expected one of {', '.join(MAKERS)}, optionally with parameters as "
                         f"NAME(key=value, ...); got {spec!r}")
    name, known, given = m["name"], loss_parameters(m["name"]), {}
    for item in filter(None, (part.strip() for part in (m["args"] or "").split(","))):
        key, sep, value = (x.strip() for x in item.partition("="))
        if not sep or key not in known or key in given:
            raise ValueError(f"loss {name}: expected parameters as key=value, each once, of "
                             f"{', '.join(known) or 'none (it has no parameters)'}; got {item!r}")
        if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
            raise ValueError(f"loss {name}: {key}: expected a number, got {value!r}")
        given[key] = float(value)
    return name, given


def make_loss(name, check_target=True):
    """The loss ``name``: one of the paper's six (LOSS_NAMES) or a blob loss (BLOB_NAMES),
    with the paper's settings, or any of their parameters by name, e.g.
    ``"tversky(alpha=0.5, beta=0.5)"`` (SPEC 5b).

    ``check_target`` False: the target's values are not scanned on each call (a training
    loop whose dataset checks every case once keeps the GPU free of host syncs).
    """
    name, given = parse_loss(name)
    loss = MAKERS[name](**given)
    loss.check_target = check_target
    return loss
