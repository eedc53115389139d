"""SPEC 5b: blob loss against a per-lesion loop written from its definition, by hand and with
MONAI's Dice as the region; every loss parameter by name, against the classes built by hand."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from losses import BlobLoss, DiceLoss, FocalLoss, HausdorffDTLoss, LogCompoundLoss, TverskyLoss, make_loss
from user_losses import parse_loss

E = 1e-5


def soft_dice(p, g):
    """1 - (2 sum(p g) + eps) / (sum p + sum g + eps) of one sample's probabilities."""
    return 1 - (2 * (p * g).sum() + E) / (p.sum() + g.sum() + E)


def blob_by_definition(logits, target, w_global=2.0, w_blob=1.0):
    """SPEC 5b written out: per sample, per 26-connected lesion c, Dice of the probabilities with
    every other lesion's voxels at probability 0 against lesion c alone."""
    p = torch.sigmoid(logits)
    global_term = torch.stack([soft_dice(p[b], target[b]) for b in range(len(p))]).mean()
    per_sample = []
    for b in range(len(p)):
        labels, n = ndimage.label(target[b, 0].numpy() > 0.5, structure=np.ones((3, 3, 3)))
        labels = torch.from_numpy(labels)
        if n:
            per_sample.append(torch.stack([soft_dice(torch.where((labels > 0) & (labels != c), 0.0, p[b, 0]),
                                                     (labels == c).float()) for c in range(1, n + 1)]).mean())
    blob = torch.stack(per_sample).mean() if per_sample else torch.zeros(())
    return w_global * global_term + w_blob * blob


def multifocal_batch(seed):
    rng = np.random.default_rng(seed)
    target = np.zeros((3, 1, 14, 12, 10), np.float32)
    for b in (0, 2):                                                     # sample 1 has no lesion
        for _ in range(int(rng.integers(1, 4))):
            c = rng.integers(2, 9, 3)
            target[b, 0, c[0]:c[0] + rng.integers(1, 4), c[1]:c[1] + 2, c[2]:c[2] + rng.integers(1, 3)] = 1
    logits = torch.from_numpy(rng.normal(0, 2, target.shape).astype(np.float32)).requires_grad_(True)
    return logits, torch.from_numpy(target)


@pytest.mark.parametrize("seed", range(4))
def test_blob_dice_equals_its_definition_values_and_gradients(seed):
    logits, target = multifocal_batch(seed)
    ours = make_loss("blob_dice")(logits, target)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    ref = blob_by_definition(logits, target)
    (grad_ref,) = torch.autograd.grad(ref, logits)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-4, atol=1e-7)


def test_two_small_lesions_of_three_missed_by_hand():
    """One lesion of 216 voxels found, two of 8 missed: Dice barely moves (1 - 432/448), the
    blob term is the mean of (0, 1, 1) = 2/3."""
    target = torch.zeros(1, 1, 16, 16, 8)
    target[0, 0, 1:7, 1:7, 1:7] = 1
    target[0, 0, 10:12, 10:12, 1:3] = 1
    target[0, 0, 10:12, 1:3, 5:7] = 1
    logits = torch.where(target > 0, 30.0, -30.0)
    logits[0, 0, 10:, :, :] = -30.0                                     # the two small lesions: nothing predicted
    dice = DiceLoss()(logits, target).item()
    blob = BlobLoss(DiceLoss())
    assert dice == pytest.approx(1 - 432 / 448, abs=1e-4)
    assert blob.blob_term(logits, target).item() == pytest.approx(2 / 3, abs=1e-4)
    assert blob(logits, target).item() == pytest.approx(2 * dice + 2 / 3, abs=1e-4)


def test_a_batch_without_lesions_has_no_blob_term():
    logits = torch.randn(2, 1, 6, 6, 6, requires_grad=True)
    target = torch.zeros(2, 1, 6, 6, 6)
    blob = BlobLoss(DiceLoss(), w_global=2.0, w_blob=1.0)
    assert blob.blob_term(logits, target).item() == 0.0
    assert blob(logits, target).item() == pytest.approx(2 * DiceLoss()(logits, target).item(), rel=1e-6)
    blob(logits, target).backward()                                     # still a gradient, through the global term
    assert torch.isfinite(logits.grad).all()


def test_a_focal_region_stays_finite_on_masked_lesions():
    logits, target = multifocal_batch(1)
    value = BlobLoss(make_loss("dice_focal"))(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_monai_dice_as_the_region_equals_ours():
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = multifocal_batch(2)
    ours = BlobLoss(DiceLoss())(logits, target)
    theirs = BlobLoss(monai_losses.DiceLoss(sigmoid=True))(logits, target)
    g_ours, = torch.autograd.grad(ours, logits)
    g_theirs, = torch.autograd.grad(theirs, logits)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-7)


def test_blob_tversky_hdt_is_the_compound_of_its_parts():
    logits, target = multifocal_batch(3)
    ours = make_loss("blob_tversky_hdt")(logits, target)
    by_hand = LogCompoundLoss(BlobLoss(TverskyLoss(0.3, 0.7), 2.0, 1.0), 0.9, 0.1, HausdorffDTLoss(2.0))(logits, target)
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-6)


# ---------------------------------------------------------------- every parameter by name

def test_parameters_by_name_against_the_classes_built_by_hand():
    logits, target = multifocal_batch(0)
    built = lambda spec: (lambda name, given: make_loss(name, **given))(*parse_loss(spec))
    same = lambda spec, loss: built(spec)(logits, target).item() == pytest.approx(loss(logits, target).item(),
                                                                                  rel=1e-6)
    assert same("tversky(alpha=0.5, beta=0.5)", DiceLoss())                       # Tversky at 1/2, 1/2 is Dice
    bce = lambda x, g: F.binary_cross_entropy_with_logits(x, g)
    assert same("dice_focal(gamma=0)", lambda x, g: DiceLoss()(x, g) + bce(x, g))  # focal at gamma 0 is BCE
    assert same("tversky_hdt(a=0.7, b=0.3, alpha=0.4, beta=0.6)",
                LogCompoundLoss(TverskyLoss(0.4, 0.6), 0.7, 0.3))               # a compound sets its parts' too
    assert same("hdt(alpha=1)", HausdorffDTLoss(1.0))
    # "equal balance" read as 0.5 / 0.5 (decided here: 1 / 1, MONAI's)
    assert same("dice_focal(lambda_dice=0.5, lambda_focal=0.5)", lambda x, g: 0.5 * (DiceLoss()(x, g) + FocalLoss()(x, g)))
    assert same("blob_dice(w_global=1, w_blob=2)", lambda x, g: blob_by_definition(x, g, 1.0, 2.0))
    assert parse_loss(" tversky ( alpha = 1e-1 ) ") == ("tversky", {"alpha": 0.1})


@pytest.mark.parametrize("spec, message", [
    ("tversky(gamma=1)", "loss tversky: expected parameters as key=value, each once, of alpha, beta; got 'gamma=1'"),
    ("dice(alpha=1)", "loss dice: expected parameters as key=value, each once, of none"),
    ("tversky(alpha=0.5, alpha=0.6)", "each once, of alpha, beta; got 'alpha=0.6'"),
    ("tversky(alpha=half)", "loss tversky: alpha: expected a number, got 'half'"),
    ("tversky(alpha=nan)", "alpha: expected a number, got 'nan'"),
    ("tversky(alpha=0.5", "expected one of dice, "),
    ("blob", "expected one of dice, "),
])
def test_bad_parameters_are_refused_naming_the_loss_parameters(spec, message):
    with pytest.raises(ValueError) as e:
        parse_loss(spec)                        # the command line's string form (user_losses.py)
    assert message in str(e.value)
