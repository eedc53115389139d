"""losses.py against cases worked by hand, against scipy, and against MONAI (the paper's code)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import losses
from conftest import special_masks
from losses import LOSS_NAMES, distance_field, make_loss

E = 1e-5    # the smoothing eps of SPEC 5
BIG = 30.0  # sigmoid(30) == 1.0 in float32, sigmoid(-30) ~ 1e-13: a hard mask as logits
# every way of computing the distance field; edt is the optional accelerator (requirements.txt)
BACKENDS = ["reference", pytest.param("edt", marks=pytest.mark.skipif(losses.edt is None, reason="edt not installed")),
            "torch"]


def hard_logits(mask):
    return torch.where(torch.as_tensor(mask, dtype=torch.bool), BIG, -BIG)[None, None].float()


def vol(shape, *boxes):
    m = torch.zeros(shape, dtype=torch.float32)
    for box in boxes:
        m[box] = 1
    return m


# ---------------------------------------------------------------- hand-worked region losses

def test_dice_perfect_disjoint_half():
    g = vol((4, 4, 4), np.s_[:2, :2, :1])                           # 4 voxels
    assert make_loss("dice")(hard_logits(g), g[None, None]).item() == pytest.approx(0, abs=1e-6)
    disjoint = vol((4, 4, 4), np.s_[2:, 2:, 3:])
    assert make_loss("dice")(hard_logits(disjoint), g[None, None]).item() == pytest.approx(1 - E / (8 + E), abs=1e-6)
    half = vol((4, 4, 4), np.s_[1:3, :2, :1])                        # 4 voxels, 2 shared
    assert make_loss("dice")(hard_logits(half), g[None, None]).item() == pytest.approx(1 - (4 + E) / (8 + E), abs=1e-6)


def test_dice_uncertain_prediction_by_hand():
    # logits 0 -> p = 0.5 on 8 voxels, 2 of them lesion: 1 - (2*1 + eps) / (4 + 2 + eps)
    g = vol((2, 2, 2), np.s_[0, 0, :])[None, None]
    expected = 1 - (2 * 1 + 1e-5) / (4 + 2 + 1e-5)
    assert make_loss("dice")(torch.zeros_like(g), g).item() == pytest.approx(expected, rel=1e-6)


def test_tversky_by_hand():
    g = vol((4, 4, 4), np.s_[:2, :2, :1])                            # 4 voxels
    half = vol((4, 4, 4), np.s_[1:3, :2, :1])                        # TP 2, FP 2, FN 2
    t = make_loss("tversky")
    assert t(hard_logits(half), g[None, None]).item() == pytest.approx(1 - (2 + E) / (2 + 0.3 * 2 + 0.7 * 2 + E), abs=1e-6)
    over = vol((4, 4, 4), np.s_[:2, :3, :1])                         # TP 4, FP 2, FN 0
    assert t(hard_logits(over), g[None, None]).item() == pytest.approx(1 - (4 + E) / (4 + 0.3 * 2 + E), abs=1e-6)
    under = vol((4, 4, 4), np.s_[:1, :1, :1])                        # TP 1, FP 0, FN 3
    assert t(hard_logits(under), g[None, None]).item() == pytest.approx(1 - (1 + E) / (1 + 0.7 * 3 + E), abs=1e-6)
    # false negatives cost more than false positives (beta > alpha)
    assert t(hard_logits(under), g[None, None]) > t(hard_logits(over), g[None, None])


def test_tversky_half_half_is_dice():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 7, 5, 6, generator=gen)
    g = (torch.rand(3, 1, 7, 5, 6, generator=gen) > 0.7).float()
    assert losses.TverskyLoss(0.5, 0.5)(x, g).item() == pytest.approx(make_loss("dice")(x, g).item(), rel=1e-6)


@pytest.mark.parametrize("c", [-3.0, 0.0, 0.7, 4.0])
def test_focal_constant_logits_closed_form(c):
    g = vol((3, 4, 5), np.s_[:1, :2, :], np.s_[2, 3, 4])[None, None]   # 11 lesion voxels of 60
    k, n = int(g.sum()), g.numel()
    s = 1 / (1 + math.exp(-c))
    on_lesion = (1 - s) ** 2 * -math.log(s)
    off_lesion = s ** 2 * -math.log(1 - s)
    expected = (k * on_lesion + (n - k) * off_lesion) / n
    assert losses.FocalLoss()(torch.full_like(g, c), g).item() == pytest.approx(expected, rel=1e-5)


def test_focal_is_finite_for_confident_wrong_logits():
    g = vol((2, 2, 2), np.s_[0])[None, None]
    value = losses.FocalLoss()(torch.where(g > 0, -200.0, 200.0), g)
    assert math.isfinite(value.item()) and value.item() == pytest.approx(200.0, rel=1e-6)


@pytest.mark.parametrize("c", [-2.0, 0.5])
def test_dice_focal_constant_logits_by_hand(c):
    # k = 8 lesion voxels of n = 32, every logit c, s = sigmoid(c):
    #   dice  = 1 - (2 k s + eps) / (n s + k + eps)
    #   focal = (k (1 - s)^2 (-log s) + (n - k) s^2 (-log(1 - s))) / n
    g = vol((4, 4, 2), np.s_[1:3, 1:3, :])[None, None]
    k, n, s, eps = 8, 32, 1 / (1 + math.exp(-c)), 1e-5
    dice = 1 - (2 * k * s + eps) / (n * s + k + eps)
    focal = (k * (1 - s) ** 2 * -math.log(s) + (n - k) * s ** 2 * -math.log(1 - s)) / n
    assert make_loss("dice_focal")(torch.full_like(g, c), g).item() == pytest.approx(dice + focal, rel=1e-5)


# ---------------------------------------------------------------- distance field by hand

@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_field_single_voxel(backend):
    m = torch.zeros(1, 1, 7, 7, 7)
    m[0, 0, 3, 3, 3] = 1
    idx = torch.stack(torch.meshgrid(*[torch.arange(7.0)] * 3, indexing="ij"))
    expected = ((idx - 3) ** 2).sum(0).sqrt()
    expected[3, 3, 3] = 1          # the voxel itself: 1 to its nearest background neighbour
    torch.testing.assert_close(distance_field(m, backend)[0, 0], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_field_slab(backend):
    m = torch.zeros(2, 1, 8, 5, 4)
    m[:, :, :3] = 1                                     # x in {0,1,2}
    x = torch.arange(8.0)[:, None, None].expand(8, 5, 4)
    expected = (x - 2.5).abs() + 0.5                    # 3-x inside, x-2 outside
    out = distance_field(m, backend)
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[1, 0], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_field_empty_and_full_are_zero(backend):
    m = torch.zeros(3, 1, 5, 6, 4)
    m[1] = 1
    m[2, 0, 2, 2, 2] = 1
    out = distance_field(m, backend)
    assert out[0].abs().sum() == 0 and out[1].abs().sum() == 0 and out[2].abs().sum() > 0
    assert out.shape == m.shape and out.dtype == torch.float32


def scipy_field(mask):
    """The SPEC's definition, whole-volume, per sample: the oracle for both backends."""
    out = np.zeros(mask.shape, np.float64)
    for i, m in enumerate(mask[:, 0]):
        if m.any() and not m.all():
            out[i, 0] = ndimage.distance_transform_edt(m) + ndimage.distance_transform_edt(~m)
    return out


@pytest.mark.parametrize("shape,density,seed", [
    ((2, 1, 17, 9, 6), 0.05, 0), ((3, 1, 5, 23, 11), 0.4, 1), ((2, 1, 31, 12), 0.1, 2),
    ((1, 1, 1, 40, 3), 0.5, 3), ((2, 1, 12, 12, 12), 0.002, 4), ((4, 1, 6, 7), 0.9, 5), ((3, 1, 40), 0.3, 6),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_field_equals_scipy_on_random_masks(shape, density, seed, backend):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    mask[0, 0][(0,) * (len(shape) - 2)] = True            # touch the border
    if shape[0] > 2:
        mask[1] = False                                   # an empty sample
        mask[2] = True                                    # and a full one
    out = distance_field(torch.from_numpy(mask), backend).numpy()
    np.testing.assert_allclose(out, scipy_field(mask), rtol=1e-6, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape,density", [((2, 1, 17, 9, 6), 0.05), ((3, 1, 5, 23, 11), 0.4), ((2, 1, 31, 12), 0.1),
                                           ((4, 1, 64, 48, 16), 0.01)])
def test_distance_field_on_cuda_equals_scipy(shape, density):
    mask = np.random.default_rng(7).random(shape) < density
    mask[-1] = False                                      # an empty sample
    field = distance_field(torch.from_numpy(mask).cuda())  # auto: the torch backend, on the device
    assert field.is_cuda
    np.testing.assert_allclose(field.cpu().numpy(), scipy_field(mask), rtol=1e-6, atol=1e-5)


def test_distance_field_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        distance_field(torch.zeros(1, 1, 2, 2), "cupy")
    with pytest.raises(ValueError, match="backend 'edt': 1-3 spatial axes, got shape \\(1, 1, 2, 2, 2, 2\\)"):
        distance_field(torch.zeros(1, 1, 2, 2, 2, 2), "edt")


def test_auto_takes_edt_on_the_host_where_installed_else_the_reference(monkeypatch):
    mask = torch.zeros(2, 1, 6, 5, 4, dtype=torch.bool)
    mask[0, 0, 2:4, 1:3, 1] = True
    expected = distance_field(mask, "reference")
    calls = []
    for name in ("field_reference", "_field_edt"):
        real = getattr(losses, name)
        monkeypatch.setattr(losses, name, lambda m, *a, real=real, name=name: calls.append(name) or real(m, *a))
    if losses.edt is not None:
        torch.testing.assert_close(distance_field(mask), expected)
        assert calls == ["_field_edt"] * 2
        assert distance_field(mask[..., 1, 1, None, None, None].expand(2, 1, 6, 1, 1, 3)).shape == (2, 1, 6, 1, 1, 3)
        assert calls[2:] == ["field_reference"] * 2               # four spatial axes: edt has three at most
    calls.clear()
    monkeypatch.setattr(losses, "edt", None)                      # a copy of losses.py without the package
    torch.testing.assert_close(distance_field(mask), expected)
    assert calls == ["field_reference"] * 2
    with pytest.raises(ValueError, match="backend 'edt': needs the edt package \\(pip install edt\\)"):
        distance_field(mask, "edt")


# ---------------------------------------------------------------- hdt by hand

def test_hdt_by_hand_empty_prediction():
    g = torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 1, 4)
    # p = 0.5 -> mask p > 0.5 empty -> d_p = 0; d_g = [2, 1, 1, 2]; (p - g)^2 = 1/4
    assert make_loss("hdt")(torch.zeros_like(g), g).item() == pytest.approx(0.25 * (4 + 1 + 1 + 4) / 4, rel=1e-6)


def test_hdt_by_hand_with_both_fields():
    g = torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 1, 4)
    x = torch.tensor([5.0, -5, 5, -5]).reshape(1, 1, 1, 4)
    s = 1 / (1 + math.exp(-5))
    # d_p of [1,0,1,0] = [1,1,1,1]; d_g = [2,1,1,2]; weights d_p^2 + d_g^2 = [5,2,2,5]
    expected = (5 * (1 - s) ** 2 + 2 * s ** 2 + 2 * s ** 2 + 5 * (1 - s) ** 2) / 4
    assert make_loss("hdt")(x, g).item() == pytest.approx(expected, rel=1e-5)


def test_log_compound_by_hand():
    g = torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 1, 4)
    x = torch.zeros_like(g)
    tversky = 1 - (1 + 1e-5) / (1 + 0.3 * 1 + 0.7 * 1 + 1e-5)     # TP 1, FP 1, FN 1
    expected = 0.9 * tversky + 0.1 * math.log(1 + 0.625)
    assert make_loss("tversky_hdt")(x, g).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- behaviour

@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("case", ["perfect", "empty_both", "empty_prediction", "full"])
def test_losses_finite_value_and_gradient(name, case):
    g = vol((6, 6, 4), np.s_[2:4, 1:5, 1:3])[None, None].repeat(2, 1, 1, 1, 1)
    if case == "perfect":
        x = torch.where(g > 0, 80.0, -80.0)
    elif case == "empty_both":
        g, x = torch.zeros_like(g), torch.full_like(g, -80.0)
    elif case == "empty_prediction":
        x = torch.full_like(g, -80.0)
    else:
        g, x = torch.ones_like(g), torch.full_like(g, 80.0)
    x.requires_grad_(True)
    value = make_loss(name)(x, g)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and torch.isfinite(x.grad).all()
    if case in ("perfect", "empty_both", "full"):
        assert value.item() == pytest.approx(0, abs=1e-4)
    else:
        assert value.item() > 0.05


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradient_sign_pulls_towards_target(name):
    gen = torch.Generator().manual_seed(0)
    g = vol((8, 8, 4), np.s_[2:5, 3:6, 1:3])[None, None]
    # below 0.5 everywhere, so that a small step leaves the mask p > 0.5 (and d_p) unchanged
    x = (-1 + 0.1 * torch.randn(g.shape, generator=gen)).requires_grad_(True)
    make_loss(name)(x, g).backward()
    lesion, background = x.grad[g > 0], x.grad[g == 0]
    assert (lesion <= 0).all() and lesion.sum() < 0             # raise the lesion logits
    assert (background >= 0).all() and background.sum() > 0    # lower the others
    # and a small step along -grad lowers the loss
    with torch.no_grad():
        stepped = x - 0.1 * x.grad / x.grad.abs().max()
    assert make_loss(name)(stepped, g) < make_loss(name)(x.detach(), g)


def test_losses_accept_autocast_dtypes():
    g = vol((4, 4, 4), np.s_[1:3, 1:3, 1:3])[None, None]
    x = torch.randn(g.shape).to(torch.bfloat16)
    value = make_loss("tversky_hdt")(x, g)
    assert value.dtype == torch.float32 and torch.isfinite(value)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("x,g,match", [
    (torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), "got shape \\(2, 1, 4\\)"),
    (torch.zeros(2, 2, 4, 4, 4), torch.zeros(2, 2, 4, 4, 4), "expected 1 channel"),
    (torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 3), "expected the shape of logits"),
    (torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5), "expected values in \\{0, 1\\}, got e.g. \\[0.5"),
    (torch.zeros(1, 1, 2, 2, dtype=torch.long), torch.zeros(1, 1, 2, 2), "floating"),
    (np.zeros((1, 1, 2, 2)), torch.zeros(1, 1, 2, 2), "expected a torch.Tensor, got ndarray"),
])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bad_input_raises(name, x, g, match):
    with pytest.raises(ValueError, match=match):
        make_loss(name)(x, g)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="expected one of dice, dice_focal, tversky, hdt, dice_focal_hdt, tversky_hdt, "
                                         "blob_dice, blob_tversky_hdt; got 'hausdorff'"):
        make_loss("hausdorff")
    with pytest.raises(ValueError, match="loss tversky: expected parameters of alpha, beta; got gamma"):
        make_loss("tversky", gamma=2)
    assert make_loss("tversky", alpha=0.5, beta=0.5).alpha == 0.5                  # a parameter by keyword


@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_field_components_with_overlapping_boxes(backend):
    # A: a small cube; B: a thick C-shape whose bounding box contains A. Both have
    # interior voxels, A is labelled first: the per-component path must not let B's
    # box overwrite A's inside.
    m = np.zeros((1, 1, 14, 14, 5), bool)
    m[0, 0, 0:3, 5:8, 0:3] = True                 # A
    m[0, 0, 0:12, 10:13, 0:3] = True              # B ...
    m[0, 0, 9:12, 0:13, 0:3] = True               # ... B
    out = distance_field(torch.from_numpy(m), backend).numpy()
    np.testing.assert_allclose(out, scipy_field(m), rtol=1e-6, atol=1e-5)


def test_distance_field_bad_mask():
    with pytest.raises(ValueError, match="expected a \\(B, 1, ...\\) tensor, got ndarray"):
        distance_field(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="got \\(4, 4\\)"):
        distance_field(torch.zeros(4, 4))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_check_target_off_skips_only_the_value_scan(name):
    # train.py checks each case's label once in its dataset, then builds its loss with
    # check_target=False so that a GPU step never waits for the host; shapes are still checked
    logits, half = torch.zeros(1, 1, 4, 4, 4), torch.full((1, 1, 4, 4, 4), 0.5)
    with pytest.raises(ValueError, match="target: expected values in"):
        make_loss(name)(logits, half)
    assert torch.isfinite(make_loss(name, check_target=False)(logits, half))
    with pytest.raises(ValueError, match="target: expected the shape of logits"):
        make_loss(name, check_target=False)(logits, half[..., :2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(21))
def test_each_fast_path_equals_the_definition(backend, i):
    mask = special_masks()[i]
    expected = losses.field_reference(mask)
    out = distance_field(torch.from_numpy(mask)[None, None], backend)[0, 0].cpu().numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    if mask.any() and not mask.all():       # by hand: EDT(m) + EDT(not m) with scipy, boundary voxels at 1
        from scipy import ndimage
        np.testing.assert_allclose(expected, ndimage.distance_transform_edt(mask) + ndimage.distance_transform_edt(~mask))


def test_the_min_plus_pass_stays_chunked_when_the_compiled_step_fails(monkeypatch):
    # what a CUDA run does once dynamo gives up: the eager step, in chunks of the same bound
    calls = []

    def compiled(rows, parabola):           # stands for torch.compile's kernel: one shape per axis length
        calls.append(tuple(rows.shape))
        if len(calls) > 2:
            raise RuntimeError("recompile limit reached")
        return losses._min_plus_rows(rows, parabola)

    eager = losses._min_plus_rows
    sizes = []
    monkeypatch.setattr(losses, "CHUNK", 4 * 20 * 20)                            # 4 rows of 20 at a time
    monkeypatch.setattr(losses, "_min_plus_step", lambda cuda: compiled)
    monkeypatch.setattr(losses, "_min_plus_rows", lambda rows, p: sizes.append(rows.shape[0] * p.numel()) or eager(rows, p))
    f = torch.rand(3, 20, 7) * 50
    with pytest.warns(UserWarning, match="compiled min-plus pass failed"):
        out = losses._min_plus(f, 1)
    assert set(calls) == {(4, 20)} and max(sizes) <= losses.CHUNK                  # one shape, bounded chunks
    expected = (f.movedim(1, -1)[..., None, :] + (torch.arange(20.)[:, None] - torch.arange(20.)) ** 2).amin(-1)
    torch.testing.assert_close(out, expected.movedim(-1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_distance_field_on_cuda_keeps_its_peak_memory_bounded(monkeypatch):
    masks = torch.rand(4, 1, 192, 192, 32, device="cuda") > 0.99
    monkeypatch.setattr(losses, "_min_plus_step", lambda cuda: losses._min_plus_rows)     # the eager fallback
    torch.cuda.reset_peak_memory_stats()
    distance_field(masks, "torch")
    assert torch.cuda.max_memory_allocated() < 2 * losses.CHUNK * 4 + 200 * masks.numel()  # not (rows, n, n)
