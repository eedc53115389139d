"""The six losses of "Multimodal HIE Lesion Segmentation in Neonates: A Comparative Study of
Loss Functions" (Usman, Haseeb, Syed), the distance field behind HDT, and blob loss, the
instance-aware loss the paper's future work asks for (SPEC 5, 5b). At length: docs/losses.md.

Imports torch, numpy and scipy only. logits (B, 1, X, Y, Z) or (B, 1, H, W), raw network
outputs; target the same shape, in {0, 1}; each loss returns a scalar tensor. p = sigmoid(x),
g = target, sums over one sample's voxels, then the mean over the batch; eps = 1e-5 (MONAI's
default, which the paper used) smooths the ratios: an empty prediction of an empty target
costs 0, not NaN. The compounds take any region loss f(logits, target) -> scalar (MONAI's, yours).

    >>> loss = make_loss("tversky_hdt", a=0.7, b=0.3)      # any parameter by name (SPEC 5b)

To copy one loss, take the imports and exactly these (tests/test_copy.py builds each and runs it):
    base = EPS, _check_pair, _BinaryLoss, _spatial_sum, _part
    field = distance_field, field_reference, _field_edt, _field_torch, _sq_edt_torch, _nearest_1d,
            _min_plus, _min_plus_step, _min_plus_rows, CHUNK, _COMPILED
    dice = base + DiceLoss
    tversky = base + TverskyLoss
    dice_focal = dice + FocalLoss, DiceFocalLoss
    hdt = base + field + HausdorffDTLoss
    tversky_hdt = tversky + hdt + LogCompoundLoss
    dice_focal_hdt = dice_focal + hdt + LogCompoundLoss
    blob_dice = dice + BlobLoss, lesion_labels
"""
import inspect
import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

try:                        # seung-lab's edt (requirements.txt): the host's distance field 3-4x faster
    import edt
except ImportError:         # a copy of this file without it: scipy computes the same field
    edt = None

__all__ = [
    "LOSS_NAMES", "BLOB_NAMES", "make_loss", "loss_parameters", "distance_field", "field_reference",
    "DiceLoss", "FocalLoss", "DiceFocalLoss", "TverskyLoss", "HausdorffDTLoss", "LogCompoundLoss", "BlobLoss",
]

EPS = 1e-5
LOSS_NAMES = ("dice", "dice_focal", "tversky", "hdt", "dice_focal_hdt", "tversky_hdt")     # the paper's six
BLOB_NAMES = ("blob_dice", "blob_tversky_hdt")                                            # SPEC 5b


# --------------------------------------------------------------------------- the distance field (SPEC 5)

def field_reference(mask):
    """SPEC 5's definition, for one boolean numpy mask: EDT(m) + EDT(not m) with scipy, each
    voxel's Euclidean distance in voxels to the nearest voxel of the other class; 0 without a
    boundary (an empty or full mask). The fast paths at the end of this file equal it."""
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, np.float32)
    return (ndimage.distance_transform_edt(mask) + ndimage.distance_transform_edt(~mask)).astype(np.float32)


@torch.no_grad()
def distance_field(mask, backend="auto"):
    r"""Distance field of a binary mask, per sample (SPEC 5; Karimi & Salcudean 2019).

        d_m = EDT(m) + EDT(not m)

    EDT(m): each foreground voxel's Euclidean distance, in voxels, to the nearest background
    voxel (0 on the background): every voxel gets its distance to the other class, boundary
    voxels on both sides 1. A sample whose mask is empty or full has no boundary: field 0.
    The one place that chooses how it is computed.

    Args:
        mask: (B, 1, ...) tensor; a float mask is thresholded at 0.5 (as MONAI does).
        backend: "reference" (``field_reference`` per sample: the definition, scipy on the
            host), "edt" (the same in one C++ call of the optional ``edt`` package, 3-4x
            faster), "torch" (exact separable min-plus EDT, runs where the tensor is), or
            "auto": torch for CUDA tensors, so a GPU loss never copies to the host, else edt
            where it is installed, else the reference.
    Returns:
        float32 tensor of ``mask``'s shape, on ``mask``'s device, without gradient.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim < 3:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a (B, 1, ...) tensor, got {got}")
    if backend not in ("auto", "reference", "edt", "torch"):
        raise ValueError(f"backend: expected 'auto', 'reference', 'edt' or 'torch', got {backend!r}")
    if backend == "edt" and (edt is None or mask.ndim > 5):
        raise ValueError("backend 'edt': " + ("needs the edt package (pip install edt)" if edt is None else
                                              f"1-3 spatial axes, got shape {tuple(mask.shape)}"))
    if backend == "auto":
        backend = "torch" if mask.is_cuda else "edt" if edt is not None and mask.ndim <= 5 else "reference"
    flat = (mask if mask.dtype == torch.bool else mask > 0.5).flatten(0, 1)
    if backend == "torch":
        return _field_torch(flat).view(mask.shape)
    host, threads = flat.cpu().numpy(), torch.get_num_threads()
    if backend == "edt":                                     # edt holds the GIL: its own threads, mask by mask
        fields = [_field_edt(m, threads) for m in host]
    else:
        with ThreadPoolExecutor(min(len(host), threads)) as pool:   # scipy's EDT releases the GIL
            fields = list(pool.map(field_reference, host))
    return torch.from_numpy(np.stack(fields)).view(mask.shape).to(mask.device)


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

        L_DF = lambda_dice * L_dice + lambda_focal * L_focal      (weights 1 and 1, gamma = 2)

    Erratum: eq. 2 prints DFL = (1 - a)(1 - DiceLoss) + a(1 - FocalLoss): minimising it
    would *maximise* both. The paper's settings ("gamma 2, equal balance, no weight",
    through MONAI) are MONAI's ``DiceFocalLoss``: dice + focal. Decided here (docs/
    specification.md, "Decided here"): "equal balance" as MONAI's weights 1 and 1; it could
    also read 0.5 and 0.5, which halves dice_focal's weight against HDT in dice_focal_hdt
    (``dice_focal(lambda_dice=0.5, lambda_focal=0.5)``).
    """

    def __init__(self, gamma=2.0, lambda_dice=1.0, lambda_focal=1.0):
        super().__init__()
        if lambda_dice < 0 or lambda_focal < 0:
            raise ValueError(f"lambda_dice, lambda_focal: expected >= 0, got {lambda_dice}, {lambda_focal}")
        self.dice, self.focal = DiceLoss(), FocalLoss(gamma)
        self.lambda_dice, self.lambda_focal = lambda_dice, lambda_focal

    def compute(self, logits, target):
        return self.lambda_dice * self.dice.compute(logits, target) + \
            self.lambda_focal * self.focal.compute(logits, target)


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

    Erratum: eqs. 5-6 print log(HDTL). With eq. 4 as printed, log(HDTL) = -log(1 + HD),
    which the compound minimises by making the Hausdorff distance *large*. With the cited
    loss (Karimi's, ``HausdorffDTLoss``) in eq. 4's place, log(L_HDT) = -inf for a perfect
    (or correctly empty) prediction and is unbounded below near it. Either way the printed
    form cannot be trained. We use log(1 + L_HDT), MONAI's ``LogHausdorffDTLoss``: 0 for a
    perfect prediction, growing with L_HDT, and keeping the intended damping of outliers.

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
    """(labels, n) of a (1, ...) boolean numpy mask: its full-connectivity components, 1 .. n (int64)."""
    labels, n = ndimage.label(mask[0], structure=np.ones((3,) * (mask.ndim - 1)))
    return labels.astype(np.int64), n


# --------------------------------------------------------------------------- factory: every loss by name

# name -> maker; a maker's keyword arguments are the loss's parameters, its defaults the paper's
# (in a compound, hdt_alpha is HDT's alpha: alpha and beta are Tversky's)
MAKERS = {
    "dice": lambda: DiceLoss(),
    "dice_focal": lambda gamma=2.0, lambda_dice=1.0, lambda_focal=1.0: DiceFocalLoss(gamma, lambda_dice, lambda_focal),
    "tversky": lambda alpha=0.3, beta=0.7: TverskyLoss(alpha, beta),
    "hdt": lambda alpha=2.0: HausdorffDTLoss(alpha),
    "dice_focal_hdt": lambda a=0.9, b=0.1, gamma=2.0, lambda_dice=1.0, lambda_focal=1.0, hdt_alpha=2.0:
        LogCompoundLoss(DiceFocalLoss(gamma, lambda_dice, lambda_focal), a, b, HausdorffDTLoss(hdt_alpha)),
    "tversky_hdt": lambda a=0.9, b=0.1, alpha=0.3, beta=0.7, hdt_alpha=2.0:
        LogCompoundLoss(TverskyLoss(alpha, beta), a, b, HausdorffDTLoss(hdt_alpha)),
    "blob_dice": lambda w_global=2.0, w_blob=1.0: BlobLoss(DiceLoss(), w_global, w_blob),
    "blob_tversky_hdt": lambda a=0.9, b=0.1, alpha=0.3, beta=0.7, hdt_alpha=2.0, w_global=2.0, w_blob=1.0:
        LogCompoundLoss(BlobLoss(TverskyLoss(alpha, beta), w_global, w_blob), a, b, HausdorffDTLoss(hdt_alpha)),
}


def loss_parameters(name):
    """{parameter: default} of the built-in loss ``name``."""
    if name not in MAKERS:
        raise ValueError(f"loss: expected one of {', '.join(MAKERS)}; got {name!r}")
    return {k: p.default for k, p in inspect.signature(MAKERS[name]).parameters.items()}


def make_loss(name, check_target=True, **parameters):
    """The loss ``name``: one of the paper's six (LOSS_NAMES) or a blob loss (BLOB_NAMES),
    with the paper's settings or any of its parameters by keyword, e.g.
    ``make_loss("tversky", alpha=0.5, beta=0.5)`` (SPEC 5b; the call-like strings that the
    command line takes, "tversky(alpha=0.5, beta=0.5)", are user_losses.py's).

    ``check_target`` False: the target's values are not scanned on each call (a training
    loop whose dataset checks every case once keeps the GPU free of host syncs).
    """
    known = loss_parameters(name)
    if set(parameters) - set(known):
        raise ValueError(f"loss {name}: expected parameters of {', '.join(known) or 'none'}; got "
                         f"{', '.join(sorted(set(parameters) - set(known)))}")
    loss = MAKERS[name](**parameters)
    loss.check_target = check_target
    return loss


# --------------------------------------------------------------------------- fast paths
# Each equals field_reference (tests/test_losses.py holds them equal on random masks): on the host
# in one call of seung-lab's edt (_field_edt), on the device as an exact separable EDT
# (_field_torch). At the end, so that the file reads as the paper first; distance_field picks one.

def _field_edt(mask, threads=1):
    """``field_reference`` of one boolean numpy mask in one call of seung-lab's multi-label EDT
    (C++, on ``threads``): labelled 1 outside the mask and 2 inside, each voxel gets its
    distance to the nearest voxel of the other label, EDT(m) + EDT(not m) (the border is no
    label: ``black_border=False``). Equal to the reference bit for bit (tests/test_losses.py)."""
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, np.float32)
    return edt.edt(mask.view(np.uint8) + np.uint8(1), black_border=False, parallel=threads).astype(np.float32, copy=False)


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


CHUNK = 1 << 26            # elements of the (rows, n, n) sums one min-plus step may hold: 256 MB in float32
# The compiled step, made once per process on first CUDA use and kept here (a cache: it changes no
# result). dynamic=False compiles once per shape, and every call has the shape (CHUNK // n^2, n), the
# last chunk padded: one kernel per axis length, whatever the batch; validation adds none.
_COMPILED = {}


def _min_plus_step(cuda):
    """The function that takes one chunk of rows: compiled on CUDA (one kernel that never
    stores the (rows, n, n) sums), eager elsewhere or where compiling fails."""
    if not cuda:
        return _min_plus_rows
    if "step" not in _COMPILED:
        try:
            _COMPILED["step"] = torch.compile(_min_plus_rows, dynamic=False)
        except Exception:                                          # noqa: BLE001 - eager is exact too
            _COMPILED["step"] = _min_plus_rows
    return _COMPILED["step"]


def _min_plus(f, dim):
    """Exact 1-D squared-distance pass along ``dim``: out(i) = min_j f(j) + (i - j)^2. Brute
    force over j, fully parallel (what a GPU wants), in chunks of rows of one shape: the
    (rows, n, n) sums stay within CHUNK elements whichever step runs, compiled or eager."""
    f = f.movedim(dim, -1)
    shape, n = f.shape, f.shape[-1]
    rows = f.reshape(-1, n)
    idx = torch.arange(n, device=f.device, dtype=f.dtype)
    parabola = (idx[:, None] - idx[None, :]) ** 2          # (i, j)
    chunk, step = max(1, CHUNK // (n * n)), _min_plus_step(f.is_cuda)
    out = torch.empty_like(rows)
    for s in range(0, rows.shape[0], chunk):
        part = rows[s:s + chunk]
        if step is not _min_plus_rows and len(part) < chunk:      # one shape: no recompile for the last chunk
            part = torch.cat([part, part.new_full((chunk - len(part), n), math.inf)])
        try:
            out[s:s + chunk] = step(part, parabola)[:len(out[s:s + chunk])]
        except Exception as e:                                     # noqa: BLE001 - e.g. no Triton: eager
            warnings.warn(f"distance_field: the compiled min-plus pass failed ({type(e).__name__}: "
                          f"{str(e).strip()[:200]}); exact but slower eager passes from now on")
            _COMPILED["step"] = step = _min_plus_rows
            out[s:s + chunk] = step(rows[s:s + chunk], parabola)
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
    """``field_reference`` of (N, *spatial) boolean masks on their device: both halves of every
    field in one batched transform, then 0 where a mask has no boundary (no data-dependent
    indexing, so the GPU never waits for the host; an empty mask's inf field is dropped)."""
    d = _sq_edt_torch(torch.cat([~masks, masks])).sqrt()
    count = masks.flatten(1).sum(1)
    mixed = ((count > 0) & (count < masks[0].numel())).view((-1,) + (1,) * (masks.ndim - 1))
    return torch.where(mixed, d[:len(masks)] + d[len(masks):], 0.0)
