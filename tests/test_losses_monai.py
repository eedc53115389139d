"""Parity with MONAI, the implementation the paper used (SPEC 5 settings), values and gradients."""
import warnings

import pytest
import torch

from losses import LOSS_NAMES, make_loss

monai_losses = pytest.importorskip("monai.losses")


def monai_loss(name):
    dice = monai_losses.DiceLoss(sigmoid=True)
    dice_focal = monai_losses.DiceFocalLoss(sigmoid=True, gamma=2.0)
    tversky = monai_losses.TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)
    hdt = monai_losses.HausdorffDTLoss(sigmoid=True, alpha=2.0)
    log_hdt = monai_losses.LogHausdorffDTLoss(sigmoid=True, alpha=2.0)
    return {
        "dice": dice, "dice_focal": dice_focal, "tversky": tversky, "hdt": hdt,
        "dice_focal_hdt": lambda x, g: 0.9 * dice_focal(x, g) + 0.1 * log_hdt(x, g),
        "tversky_hdt": lambda x, g: 0.9 * tversky(x, g) + 0.1 * log_hdt(x, g),
    }[name]


def make_case(shape, target_kind, logit_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    if target_kind == "empty":
        g = torch.zeros(shape)
    elif target_kind == "full":
        g = torch.ones(shape)
    else:                                 # sparse blobs: thresholded smooth noise
        noise = torch.nn.functional.avg_pool1d(torch.rand(1, 1, torch.Size(shape).numel(), generator=gen), 5, 1, 2)
        g = (noise.reshape(shape) > 0.62).float()
        g[0].zero_()                      # and one empty sample in the batch
    x = logit_scale * torch.randn(shape, generator=gen) + logit_scale * (2 * g - 1)
    return x, g


CASES = [
    ((2, 1, 12, 10, 7), "sparse", 1.0, 0),
    ((3, 1, 9, 16, 5), "sparse", 8.0, 1),       # confident
    ((1, 1, 20, 14, 6), "sparse", 0.05, 2),     # uncertain, p ~ 0.5
    ((4, 1, 6, 6, 6), "empty", 2.0, 3),
    ((2, 1, 7, 5, 9), "full", 2.0, 4),
    ((3, 1, 25, 19), "sparse", 1.5, 5),         # 2-D
    ((5, 1, 8, 8), "empty", 0.3, 6),
]


@pytest.mark.parametrize("shape,target_kind,scale,seed", CASES)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_equals_monai(name, shape, target_kind, scale, seed):
    x, g = make_case(shape, target_kind, scale, seed)
    ours_x, theirs_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = make_loss(name)(ours_x, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "single channel prediction, include_background ignored"
        theirs = monai_loss(name)(theirs_x, g)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-7)
    scale_grad = theirs_x.grad.abs().max().item()
    torch.testing.assert_close(ours_x.grad, theirs_x.grad, rtol=1e-5, atol=1e-5 * scale_grad + 1e-12)


@pytest.mark.parametrize("shape,target_kind,scale,seed", CASES[:3])
def test_compound_takes_monai_region_loss(shape, target_kind, scale, seed):
    """LogCompoundLoss around MONAI's own TverskyLoss equals MONAI's tversky + log-HDT, values and gradients."""
    from losses import LogCompoundLoss
    x, g = make_case(shape, target_kind, scale, seed)
    ours_x, theirs_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = LogCompoundLoss(monai_losses.TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7))(ours_x, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = monai_loss("tversky_hdt")(theirs_x, g)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours_x.grad, theirs_x.grad, rtol=1e-5, atol=1e-5 * theirs_x.grad.abs().max().item())


def test_compound_takes_a_plain_function():
    """A user's region loss as a plain function: 0.9 f + 0.1 log(1 + hdt), f worked by hand."""
    from losses import HausdorffDTLoss, LogCompoundLoss
    x, g = make_case((2, 1, 8, 8, 4), "sparse", 1.0, 7)
    mean_abs = lambda logits, target: (torch.sigmoid(logits) - target).abs().mean()
    expected = 0.9 * (torch.sigmoid(x) - g).abs().mean() + 0.1 * torch.log1p(HausdorffDTLoss()(x, g))
    torch.testing.assert_close(LogCompoundLoss(mean_abs)(x, g), expected)
    with pytest.raises(ValueError, match="region: expected a loss f\\(logits, target\\) -> scalar, got int"):
        LogCompoundLoss(3)
