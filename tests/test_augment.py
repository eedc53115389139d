"""augment.TorchAugment against TorchIO, the reference (SPEC 3): each transform equal given
the same parameters, the parameter draws from the same distributions."""
import numpy as np
import pytest
import torch
from scipy import stats

import augment
import data
import synthetic

tio = pytest.importorskip("torchio")

SHAPE = (24, 20, 12)


def geometry(seed, spacing=(0.9, 1.1, 3.0)):
    """An oblique, anisotropic grid: millimetre parameters and LPS displacements must be converted."""
    rng = np.random.default_rng(seed)
    return data.Geometry.of(SHAPE, spacing, rng.uniform(-20, 20, 3), synthetic._random_direction(rng))


def keeps_other_axes(geom):
    """TorchIO sizes RandomAnisotropy's coarse grid floor(n * s / s') on every axis, so an axis
    it does not downsample comes out one voxel short where n * s / s < n in floating point
    (about 10% of spacings at n = 192) and is resampled half a voxel off: an accident of the
    reference that the torch path does not copy. Equality holds on the other grids."""
    s = np.sqrt(np.sum(geom.affine_ras()[:3, :3] ** 2, axis=0))   # TorchIO's spacing, to the bit
    return bool(np.all(np.floor(np.array(SHAPE) * s / s) == SHAPE))


def volumes(seed):
    """(2,X,Y,Z) image of smooth structure plus noise, both signs (gamma's sign rule), and a (1,X,Y,Z) label."""
    rng = np.random.default_rng(seed)
    image = np.stack([synthetic._smooth_noise(rng, SHAPE, 3) * 3 + rng.normal(0, 0.3, SHAPE) for _ in range(2)])
    label = (synthetic._smooth_noise(rng, SHAPE, 3)[None] > 0.5).astype(np.float32)
    return torch.from_numpy(image.astype(np.float32)), torch.from_numpy(label)


def subject(image, label, geom):
    affine = geom.affine_ras()
    return tio.Subject(image=tio.ScalarImage(tensor=image.clone(), affine=affine),
                       label=tio.LabelMap(tensor=label.clone(), affine=affine))


def affines(*geoms):
    return torch.from_numpy(np.stack([g.affine_ras() for g in geoms]))


# ---------------------------------------------------------------- each transform given its parameters

def test_elastic_field_equals_simpleitk_bspline():
    # TorchIO's own B-spline transform (SimpleITK), evaluated at every voxel centre,
    # against augment.elastic_field: displacements in voxels to 1e-3 (measured: 4e-7)
    import SimpleITK as sitk
    from torchio.data.io import nib_to_sitk
    torch.manual_seed(0)
    control = tio.RandomElasticDeformation.get_params((7, 7, 7), (7.5, 7.5, 7.5), 2)
    geom = geometry(1)
    reference = nib_to_sitk(np.zeros((1, *SHAPE), np.float32), geom.affine_ras())
    transform = tio.ElasticDeformation(control_points=control, max_displacement=(7.5,) * 3) \
        .get_bspline_transform(reference)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(),
                                              reference.GetDirection())
    lps = sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3)          # (X,Y,Z,3) mm
    theirs = lps @ np.linalg.inv(geom.matrix() @ np.diag(geom.spacing)).T   # -> voxels
    lps_to_index = torch.linalg.inv(torch.diag(torch.tensor([-1.0, -1, 1], dtype=torch.float64))
                                    @ torch.from_numpy(geom.affine_ras()[:3, :3]))
    ours = augment.elastic_field(torch.einsum("ed,ijkd->ijke", lps_to_index, torch.from_numpy(control).double())[None],
                              SHAPE)[0].numpy()
    assert np.abs(theirs).max() > 1.0                                  # a real deformation
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_elastic_warp_equals_torchio():
    torch.manual_seed(1)
    geom, (image, label) = geometry(2), volumes(3)
    control = tio.RandomElasticDeformation.get_params((7, 7, 7), (7.5, 7.5, 7.5), 2)
    theirs = tio.ElasticDeformation(control_points=control, max_displacement=(7.5,) * 3)(subject(image, label, geom))
    image_ours, label_ours = augment.elastic(image[None], label[None], torch.from_numpy(control)[None], affines(geom))
    assert (label_ours[0] != label).sum() > 20                       # the label did move
    torch.testing.assert_close(image_ours[0], theirs["image"].data, atol=1e-4, rtol=0)
    assert torch.equal(label_ours[0], theirs["label"].data)         # nearest: not a voxel differs
    assert image_ours.amin() >= image.amin() - 1e-6                  # outside: the channel minimum


# Off the ties: on an even axis whose coarse grid has an odd number of voxels, the middle
# coarse voxel lands exactly half-way between two fine ones, and which one ITK's nearest
# reads then depends on the floating-point error of its physical-space arithmetic (we read
# the upper one). These factors give every axis of SHAPE an even coarse grid.
UNTIED = [(0, 1.45), (1, 1.95), (2, 1.45), (2, 1.85)]


@pytest.mark.parametrize("axis,factor", UNTIED)
def test_anisotropy_equals_torchio(monkeypatch, axis, factor):
    geom, (image, label) = geometry(4), volumes(5)
    assert keeps_other_axes(geom)
    monkeypatch.setattr(tio.RandomAnisotropy, "get_params", lambda self, axes, r: (axis, factor))
    theirs = tio.RandomAnisotropy(downsampling=(1.2, 2.0), p=1)(subject(image, label, geom))
    ours = augment.anisotropy(image, axis, factor, geom.spacing[axis])
    torch.testing.assert_close(ours, theirs["image"].data, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, image, atol=1e-2)
    assert torch.equal(theirs["label"].data, label)                  # scalars only: the label stays


def test_anisotropy_by_hand():
    # 8 voxels, factor 2: 4 coarse voxels centred at fine 0.5, 2.5, 4.5, 6.5; nearest, half
    # up, reads fine 1, 3, 5, 7; linear back at coarse u = (i - 3.5) / 2 + 1.5, the edge
    # value repeated within the coarse image's outer half voxels (u = -0.25 and 3.25)
    x = torch.arange(8.0).reshape(1, 8, 1, 1)
    out = augment.anisotropy(x, 0, 2.0, 1.0).flatten()
    torch.testing.assert_close(out, torch.tensor([1.0, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.0]))
    # factor 1.7: floor(8 / 1.7) = 4 coarse voxels at fine 0.95, 2.65, 4.35, 6.05 read fine
    # 1, 3, 4, 6; they span 4 * 1.7 = 6.8 fine voxels about 3.5, so fine 0 and 7 lie beyond
    # the coarse image's faces and become 0, as in ITK
    out = augment.anisotropy(x, 0, 1.7, 1.0).flatten()
    u = (np.arange(1, 7) - 3.5) / 1.7 + 1.5
    expected = [0.0, *np.interp(u, [0, 1, 2, 3], [1, 3, 4, 6]), 0.0]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("std", [(0.3, 0.5, 0.1), (1.5, 0.0, 4.1)])
def test_blur_equals_torchio(std):
    geom, (image, label) = geometry(6), volumes(7)
    theirs = tio.Blur(std=std)(subject(image, label, geom))
    sigma = torch.tensor(std, dtype=torch.float64)[None] / torch.tensor(geom.spacing)   # mm -> voxels
    torch.testing.assert_close(augment.blur(image[None], sigma)[0], theirs["image"].data, atol=1e-5, rtol=0)


def test_gaussian_kernels_by_hand():
    k = augment.gaussian_kernels(torch.tensor([0.0, 0.5, 0.2]), 2)
    torch.testing.assert_close(k[0], torch.tensor([0, 0, 1, 0, 0], dtype=torch.float64))
    e = np.exp(-2.0)                                   # sigma 0.5: radius int(2.5) = 2, weights e^{-2 t^2}
    torch.testing.assert_close(k[1], torch.tensor([e ** 4, e, 1, e, e ** 4], dtype=torch.float64)
                               / (1 + 2 * e + 2 * e ** 4))
    e = np.exp(-12.5)                                  # sigma 0.2: radius int(1.3) = 1, the outer taps cut
    torch.testing.assert_close(k[2], torch.tensor([0, e, 1, e, 0], dtype=torch.float64) / (1 + 2 * e))


def test_gamma_and_noise_equal_torchio():
    geom, (image, label) = geometry(8), volumes(9)
    theirs = tio.Gamma(gamma=[0.93, 1.08])(subject(image, label, geom))
    assert (image < 0).any() and (image > 0).any()                  # both signs: sign(x)|x|^gamma
    torch.testing.assert_close(augment.gamma(image[None], torch.tensor([[0.93, 1.08]]))[0], theirs["image"].data)
    theirs = tio.Noise(mean=0, std=0.007, seed=42)(subject(image, label, geom))
    ours = augment.add_noise(image[None], torch.tensor([0.007]), torch.Generator().manual_seed(42))
    torch.testing.assert_close(ours[0], theirs["image"].data)


def test_one_batch_equals_torchio_sample_by_sample(monkeypatch):
    # three samples with their own grids and draws; TorchIO given each sample's parameters
    geoms = [geometry(11), geometry(12, (1.0, 1.0, 2.5)), geometry(14)]
    assert all(keeps_other_axes(g) for g in geoms)
    pairs = [volumes(20 + b) for b in range(3)]
    image, label = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    aug = augment.TorchAugment(seed=0)
    params = aug.draw(3)
    for name, on in [("noise", [0, 0, 0]), ("anisotropy", [1, 0, 1]), ("blur", [1, 0, 0]),
                     ("gamma", [1, 0, 1]), ("elastic", [1, 0, 1])]:
        params[name] = torch.tensor(on, dtype=torch.bool)
    params["factor"] = torch.tensor([1.95, 1.5, 1.85], dtype=torch.float64)   # off the ties (see UNTIED)
    image_ours, label_ours = aug.apply(image, label, params, affines(*geoms))
    assert torch.equal(image_ours[1], image[1]) and torch.equal(label_ours[1], label[1])   # nothing drawn
    for b in (0, 2):
        axis, factor = int(params["axis"][b]), float(params["factor"][b])
        monkeypatch.setattr(tio.RandomAnisotropy, "get_params", lambda self, axes, r: (axis, factor))
        steps = [tio.RandomAnisotropy(p=1)]
        if params["blur"][b]:
            steps.append(tio.Blur(std=tuple(params["blur_std"][b].tolist())))
        steps += [tio.Gamma(gamma=params["gamma_value"][b].tolist()),
                  tio.ElasticDeformation(control_points=params["control"][b].numpy(), max_displacement=(7.5,) * 3)]
        theirs = tio.Compose(steps)(subject(image[b], label[b], geoms[b]))
        torch.testing.assert_close(image_ours[b], theirs["image"].data.float(), atol=1e-4, rtol=0)
        assert torch.equal(label_ours[b], theirs["label"].data.float())


# ---------------------------------------------------------------- the parameter distributions

N = 2000


@pytest.fixture(scope="module")
def draws():
    return augment.TorchAugment(seed=123).draw(N)


def torchio_draws(get):
    torch.manual_seed(321)
    return np.array([get() for _ in range(N)], dtype=float)


def same_distribution(ours, theirs):
    assert stats.ks_2samp(np.asarray(ours, float), theirs).pvalue > 1e-3


def test_parameters_follow_torchios_distributions(draws):
    spec = augment.torchio_transforms().transforms
    noise, aniso, blur_t, gamma_t, elastic_t = spec
    same_distribution(draws["noise_std"], torchio_draws(lambda: noise.get_params(noise.mean_range, noise.std_range)[1]))
    theirs = torchio_draws(lambda: aniso.get_params(aniso.axes, aniso.downsampling_range))
    same_distribution(draws["factor"], theirs[:, 1])
    counts = [np.bincount(draws["axis"].numpy(), minlength=3), np.bincount(theirs[:, 0].astype(int), minlength=3)]
    assert stats.chi2_contingency(counts).pvalue > 1e-3
    theirs = torchio_draws(lambda: blur_t.get_params(blur_t.std_ranges))
    for d in range(3):
        same_distribution(draws["blur_std"][:, d], theirs[:, d])
    same_distribution(draws["gamma_value"].flatten(), torchio_draws(lambda: gamma_t.get_params(gamma_t.log_gamma_range)))
    theirs = torchio_draws(lambda: elastic_t.get_params(elastic_t.num_control_points, elastic_t.max_displacement,
                                                        elastic_t.num_locked_borders)[3, 3, 3])
    same_distribution(draws["control"][:, 3, 3, 3].flatten(), theirs.flatten())


def test_locked_control_points_are_torchios(draws):
    torch.manual_seed(0)
    elastic_t = augment.torchio_transforms().transforms[-1]
    theirs = elastic_t.get_params(elastic_t.num_control_points, elastic_t.max_displacement, elastic_t.num_locked_borders)
    assert np.array_equal((draws["control"] == 0).all(0).numpy(), theirs == 0)


def test_each_transform_drawn_with_probability_one_half(draws):
    for name in ("noise", "anisotropy", "blur", "gamma", "elastic"):
        assert stats.binomtest(int(draws[name].sum()), N, 0.5).pvalue > 1e-3, name


def test_constants_are_the_torchio_pipelines():
    noise, aniso, blur_t, gamma_t, elastic_t = augment.torchio_transforms().transforms
    a = augment.TorchAugment
    assert a.P == noise.probability == elastic_t.probability
    assert a.NOISE_STD == noise.std_range and a.DOWNSAMPLING == aniso.downsampling_range
    assert a.BLUR_STD * 3 == blur_t.std_ranges and a.LOG_GAMMA == gamma_t.log_gamma_range
    assert (a.CONTROL_POINTS,) * 3 == elastic_t.num_control_points
    assert (a.MAX_DISPLACEMENT,) * 3 == elastic_t.max_displacement and a.LOCKED_BORDERS == elastic_t.num_locked_borders


# ---------------------------------------------------------------- the module

def test_seeded_module_reproduces_and_keeps_shapes():
    image, label = volumes(30)
    image, label = image.expand(4, -1, -1, -1, -1), label.expand(4, -1, -1, -1, -1)
    first = augment.TorchAugment(seed=5)(image, label)
    second = augment.TorchAugment(seed=5)(image, label)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[0].shape == image.shape and first[1].shape == label.shape
    assert set(first[1].unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first[0][0], first[0][1])                # each sample its own draw


def test_module_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected image \(B,C,X,Y,Z\) and label \(B,1,X,Y,Z\).*got \(2, 8, 8, 8\)"):
        augment.TorchAugment()(torch.zeros(2, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8))


# ---------------------------------------------------------------- on a GPU (skipped without CUDA)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _batch(n=4):
    geoms = [geometry(30 + b) for b in range(n)]
    pairs = [volumes(40 + b) for b in range(n)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), affines(*geoms)


@cuda
def test_cuda_call_makes_no_synchronizing_call():
    image, label, affine = _batch()
    image, label = image.cuda(), label.cuda()
    aug = augment.TorchAugment()
    params = aug.draw(4)
    for name in ("noise", "anisotropy", "blur", "gamma", "elastic"):
        params[name] = torch.tensor([True, False, True, True])      # every transform, an index with a gap
    aug.apply(image, label, params, affine)                          # warm-up: cuDNN and allocator set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        aug.apply(image, label, params, affine)
        for _ in range(3):
            aug(image, label, affine)                                # random draws
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
def test_cuda_equals_cpu_given_the_same_parameters():
    image, label, affine = _batch()
    aug = augment.TorchAugment(seed=1)
    params = aug.draw(4)
    for name in ("anisotropy", "blur", "gamma", "elastic"):
        params[name] = torch.tensor([True, True, False, True])
    params["noise"] = torch.zeros(4, dtype=torch.bool)               # the device draws its own noise
    cpu = aug.apply(image, label, params, affine)
    gpu = aug.apply(image.cuda(), label.cuda(), params, affine)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=0)
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 1e-3           # nearest labels: ties may round either way
