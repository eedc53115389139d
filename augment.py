"""SPEC 3: the paper's augmentation, two ways behind one signature.

    image, label = augment(image, label, affine)

image (B, 2, X, Y, Z) float, label (B, 1, X, Y, Z), affine (B, 4, 4) each sample's grid
RAS affine (the millimetre parameters need the spacing). Each transform with p = 0.5, in
this order (paper 3.2.2):

    RandomNoise(mean=0, std=0.01)                  RandomGamma(log_gamma=(-0.1, 0.1))
    RandomAnisotropy(downsampling=(1.2, 2.0))      RandomElasticDeformation()  (TorchIO's defaults)
    RandomBlur(std=(0, 0.5))

- ``TorchIOAugment``: TorchIO itself, the paper's tool and the reference, one sample at a
  time on the CPU (in the data loader: ``data.HIEDataset(files, TorchIOAugment())``).
- ``TorchAugment``: the same transforms as batched torch operations on the batch's device,
  each equal to its TorchIO counterpart given the same parameters (tests/test_augment.py).

``make_augment("torch" | "torchio" | "none", space="mm" | "voxel")`` builds one by name
(AUGMENTS) in one of two spaces (SPACES):

- "mm" (the default, decided here): each sample's grid spacing in mm (the resampled
  volume's affine), so that blur widths and elastic displacements are physical;
- "voxel": every sample taken as 1 mm voxels at the origin (an identity affine), so the
  same parameters count voxels. This is what the paper most likely ran: the authors'
  preprocessing notebook saves the stacked volumes with SimpleITK's ``GetImageFromArray``
  and sets no geometry, so the images TorchIO read had 1 mm spacing.

Equality with TorchIO, what reproducing it showed, mm or voxels: docs/augmentation.md.
"""
import numpy as np
import torch

from data import LPS

__all__ = ["AUGMENTS", "make_augment", "TorchIOAugment", "TorchAugment", "torchio_transforms"]

AUGMENTS = ("torch", "torchio", "none")
SPACES = ("mm", "voxel")


def make_augment(name, space="mm"):
    """The augmentation ``name`` (one of AUGMENTS) in ``space`` (one of SPACES); None for "none"."""
    if name not in AUGMENTS:
        raise ValueError(f"augment: expected one of {', '.join(AUGMENTS)}, got {name!r}")
    if space not in SPACES:
        raise ValueError(f"augment space: expected one of {', '.join(SPACES)}, got {space!r}")
    augment = {"torch": TorchAugment, "torchio": TorchIOAugment, "none": lambda: None}[name]()
    return InVoxels(augment) if augment is not None and space == "voxel" else augment


class InVoxels:
    """An augmentation in voxel units: each sample's affine replaced by the identity (1 mm
    voxels), which is what TorchIO sees of an image saved without its geometry."""

    def __init__(self, augment):
        self.augment = augment

    def __call__(self, image, label, affine):
        affine = torch.as_tensor(affine)
        return self.augment(image, label, torch.eye(4, dtype=affine.dtype, device=affine.device).expand_as(affine))


# --------------------------------------------------------------------------- the reference: TorchIO

def torchio_transforms():
    """SPEC 3 (paper 3.2.2) as TorchIO's Compose, each transform with p = 0.5."""
    import torchio as tio
    return tio.Compose([
        tio.RandomNoise(mean=0.0, std=0.01, p=0.5),
        tio.RandomAnisotropy(downsampling=(1.2, 2.0), p=0.5),
        tio.RandomBlur(std=(0, 0.5), p=0.5),
        tio.RandomGamma(log_gamma=(-0.1, 0.1), p=0.5),
        tio.RandomElasticDeformation(p=0.5),
    ])


class TorchIOAugment:
    """SPEC 3 with TorchIO, sample by sample, in each sample's physical space (its RAS
    affine), so that millimetre parameters mean millimetres; spatial transforms move the
    label (a LabelMap) with the image. Draws from torch's global RNG, as TorchIO does."""

    def __init__(self):
        self.transform = torchio_transforms()

    def __call__(self, image, label, affine):
        import torchio as tio
        images, labels = [], []
        for x, y, a in zip(image, label, affine):
            a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            subject = self.transform(tio.Subject(image=tio.ScalarImage(tensor=x, affine=a),
                                                 label=tio.LabelMap(tensor=y, affine=a)))
            images.append(subject["image"].data.float())
            labels.append(subject["label"].data.float())
        return torch.stack(images), torch.stack(labels)


# --------------------------------------------------------------------------- the same as batched torch ops

def _uniform(n, low, high, generator, *shape):
    """TorchIO's ``sample_uniform``: low + (high - low) * U[0, 1), n draws."""
    return low + (high - low) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)


def bspline3(t):
    """Centred cubic B-spline: 2/3 - t^2 + |t|^3/2 on |t| < 1, (2 - |t|)^3/6 on 1 <= |t| < 2."""
    t = t.abs()
    return torch.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, torch.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def bspline_weights(n, points, device=None):
    """(n, points) weights of a cubic B-spline control grid laid over n voxels as SimpleITK's
    ``BSplineTransformInitializer`` lays it (measured, ITK 5.4): the mesh's points - 3
    intervals span the image's outer voxel faces grown by 1/8 voxel at each end (index
    -0.625 to n - 0.375), with one more point past each end. Made where it is used."""
    h = (n + 0.25) / (points - 3)                        # control-point spacing, voxels
    u = (torch.arange(n, dtype=torch.float64, device=device) + 0.625) / h + 1
    return bspline3(u[:, None] - torch.arange(points, dtype=torch.float64, device=device))


def elastic_field(control, shape):
    """(B, X, Y, Z, 3) displacement of every voxel from (B, P, P, P, 3) control-point
    displacements (same units), contracted one axis at a time."""
    wx, wy, wz = (bspline_weights(n, p, control.device).to(control) for n, p in zip(shape, control.shape[1:4]))
    field = torch.einsum("zk,bijkd->bijzd", wz, control)
    field = torch.einsum("yj,bijzd->biyzd", wy, field)
    return torch.einsum("xi,biyzd->bxyzd", wx, field)


def warp(volume, grid, inside, mode, fill):
    """``volume`` (B,C,X,Y,Z) sampled at ``grid`` (B,X,Y,Z,3; grid_sample's (z, y, x) in
    [-1, 1] over the voxel centres) as ITK's resampler does: linear (or nearest) within the
    image's outer faces, the edge voxel repeated over the last half voxel, and ``fill``
    (B,C) where ``inside`` (B,X,Y,Z) is False."""
    out = torch.nn.functional.grid_sample(volume, grid, mode=mode, padding_mode="border", align_corners=True)
    return torch.where(inside[:, None], out, fill[:, :, None, None, None])


def anisotropy_1d(n, spacing, factor):
    """Where RandomAnisotropy's round trip along one axis reads each voxel: (lower, upper,
    weight of upper, inside). Down: nearest onto floor(n / factor) voxels of spacing *
    factor, centred; up: linear back to the n voxels, 0 beyond the coarse image's faces."""
    m = int(np.floor(n * spacing / (spacing * factor)))  # as TorchIO computes it
    coarse = (torch.arange(m, dtype=torch.float64) - (m - 1) / 2) * factor + (n - 1) / 2
    nearest = torch.floor(coarse + 0.5).long().clamp(0, n - 1)      # ITK rounds half up
    u = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / factor + (m - 1) / 2
    inside = (u >= -0.5) & (u <= m - 0.5)
    u = u.clamp(0, m - 1)
    low = u.floor().long().clamp(max=m - 2) if m > 1 else torch.zeros(n, dtype=torch.long)
    weight = u - low
    return nearest[low], nearest[(low + 1).clamp(max=m - 1)], weight, inside


def gaussian_kernels(sigma, radius):
    """scipy's ``gaussian_filter`` kernels, (N, 2 radius + 1), each truncated at its own
    int(4 sigma + 0.5) and normalised; sigma 0 gives the identity."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    own = (4 * sigma + 0.5).floor()[:, None]
    k = torch.exp(-0.5 * t ** 2 / sigma.clamp(min=1e-12)[:, None] ** 2) * (t.abs() <= own)
    k = torch.where(sigma[:, None] > 0, k, (t == 0).double())
    return k / k.sum(1, keepdim=True)


def _filter1d(x, kernels, dim):
    """Correlate (B,C,X,Y,Z) ``x`` along spatial ``dim`` with per-(B,C) ``kernels`` (B,C,K),
    the ends mirrored as scipy's mode 'reflect' does (d c b a | a b c d)."""
    r, n = kernels.shape[-1] // 2, x.shape[dim]
    kernels = kernels[..., None, None, None]
    padded = torch.cat([x.narrow(dim, 0, r).flip(dim), x, x.narrow(dim, n - r, r).flip(dim)], dim)
    out = padded.narrow(dim, 0, n) * kernels[:, :, 0]
    for j in range(1, 2 * r + 1):
        out.addcmul_(padded.narrow(dim, j, n), kernels[:, :, j])     # in place: 3x faster than out + w * x
    return out


def add_noise(image, std, generator=None):
    """TorchIO's Noise: image + std * N(0, 1) per voxel; image (B,C,...), std (B,)."""
    std = std.to(image)[:, None, None, None, None]
    return torch.randn(image.shape, generator=generator, device=image.device).mul_(std).add_(image)


def anisotropy(image, axis, factor, spacing):
    """TorchIO's RandomAnisotropy with its draw (axis, factor) on one (C,X,Y,Z) image.

    Not copied: TorchIO sizes the coarse grid floor(n * s / s') on every axis, so an axis it
    does not downsample comes out one voxel short wherever n * s / s < n in floating point
    (about 10% of spacings at n = 192) and is resampled half a voxel off. Here only the
    drawn axis changes.
    """
    return anisotropy_at(image, axis, *(t.to(image.device) for t in anisotropy_1d(image.shape[1 + axis], spacing,
                                                                                   factor)))


def anisotropy_at(image, axis, low, high, w, inside):
    """``anisotropy`` given its read-out (``anisotropy_1d``) on the image's device."""
    shape = [1, 1, 1]
    shape[axis] = -1
    w, inside = w.to(image).view(shape), inside.view(shape)
    mixed = (1 - w) * image.index_select(1 + axis, low) + w * image.index_select(1 + axis, high)
    return torch.where(inside, mixed, 0.0)


def blur(image, sigma):
    """TorchIO's Blur (scipy's ``gaussian_filter``): image (B,C,X,Y,Z), sigma (B,3) in voxels."""
    return blur_with(image, [t.to(image.device) for t in blur_kernels(sigma)])


def blur_kernels(sigma):
    """The three axes' Gaussian kernels, (B, K) each, of ``blur``'s sigma (B,3) (host)."""
    return [gaussian_kernels(sigma[:, d], int((4 * sigma[:, d] + 0.5).floor().max())) for d in range(3)]


def blur_with(image, kernels):
    """``blur`` given its kernels (``blur_kernels``) on the image's device."""
    for d, k in enumerate(kernels):
        image = _filter1d(image, k.to(image)[:, None].expand(-1, image.shape[1], -1), 2 + d)
    return image


def gamma(image, value):
    """TorchIO's Gamma: sign(x) |x|^gamma, one gamma per (B, C)."""
    value = value.to(image)[:, :, None, None, None]
    return image.abs().log_().mul_(value).exp_().mul_(image.sign())     # |x|^g in place, 0 stays 0


def elastic(image, label, control, affine):
    """TorchIO's ElasticDeformation: control (B,P,P,P,3) displacements in LPS mm at the
    control points, affine (B,4,4) RAS; the image linear, the label nearest, each channel's
    minimum where a voxel is displaced out of the volume."""
    return elastic_at(image, label, grid_control(control, affine, image.shape[2:]).to(image.device))


def grid_control(control, affine, shape):
    """Control-point displacements from LPS mm to grid_sample's units (2 / (n - 1) per
    voxel), in its (z, y, x) order, on the host: linear, so it is applied to the 7^3 control
    points, not to the field."""
    to_voxels = torch.linalg.inv(torch.from_numpy(LPS) @ affine[:, :3, :3].double())
    per_voxel = torch.tensor([2 / (n - 1) for n in shape], dtype=torch.float64)
    to_grid = (per_voxel[:, None] * to_voxels).flip(-2)
    return torch.einsum("bed,bijkd->bijke", to_grid, control.double()).float()


def elastic_at(image, label, control):
    """``elastic`` given the control grid in grid_sample's units (``grid_control``) on the image's device."""
    shape = image.shape[2:]
    centres = torch.meshgrid(*(torch.linspace(-1, 1, n, device=image.device) for n in shape), indexing="ij")
    grid = torch.stack(centres[::-1], -1) + elastic_field(control.float(), shape)
    inside = torch.ones(grid.shape[:-1], dtype=torch.bool, device=image.device)
    for k, n in enumerate(reversed(shape)):                       # the outer faces: half a voxel out
        inside &= grid[..., k].abs() <= 1 + 1 / (n - 1)
    return (warp(image, grid, inside, "bilinear", image.amin(dim=(2, 3, 4))),
            warp(label, grid, inside, "nearest", label.amin(dim=(2, 3, 4))))


def to_device(host, device):
    """A dict of host tensors on ``device`` in one pinned, non-blocking copy, so that the
    step never waits for it (packed as float64, which holds every index and float32 exactly)."""
    if device.type == "cpu" or not host:
        return host
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in host.values()])
    flat = flat.pin_memory().to(device, non_blocking=True)
    out, start = {}, 0
    for name, t in host.items():
        out[name] = flat[start:start + t.numel()].view(t.shape).to(t.dtype)
        start += t.numel()
    return out


def _rows(host, device):
    """The samples that drew a transform: a slice where they run without a gap (a view, no
    gather or scatter), else their indices on the device."""
    first, last = int(host[0]), int(host[-1])
    return slice(first, last + 1) if last - first + 1 == len(host) else device


class TorchAugment(torch.nn.Module):
    """SPEC 3 as batched torch operations on the batch's device (CPU or CUDA).

        image, label = TorchAugment()(image, label, affine)

    image (B, 2, X, Y, Z) float, label (B, 1, X, Y, Z), affine (B, 4, 4) the grid's RAS
    affine (millimetre parameters need the spacing; default 1 mm isotropic, axis-aligned).
    Each sample draws its own transforms, each with p = 0.5, in TorchIO's order and from
    TorchIO's parameter distributions, and each equals its TorchIO counterpart given the
    same parameters (tests/test_augment.py):

    - noise: + N(0, std^2), std ~ U(0, 0.01), one std per sample;
    - anisotropy: along one random axis, nearest down to spacing * f, f ~ U(1.2, 2), then
      linear back up; the image only;
    - blur: a Gaussian of std ~ U(0, 0.5) mm per axis, scipy's truncation and mirroring;
    - gamma: sign(x) |x|^gamma per channel, log gamma ~ U(-0.1, 0.1);
    - elastic: a cubic B-spline over 7^3 control points displaced ~ U(-7.5, 7.5) mm (LPS),
      borders locked as TorchIO locks them (two planes at each end of the first two axes
      only); image linear, label nearest, the channel's minimum outside.

    The parameters are drawn on the host (``seed`` None: torch's global generator, so
    ``torch.manual_seed`` and a checkpointed RNG state reproduce them), turned there into
    what the device needs (sample indices, kernels, read-outs, control grids) and sent in
    one pinned, non-blocking copy: on CUDA a call makes no synchronizing call (tested
    with ``torch.cuda.set_sync_debug_mode("error")``).
    """

    P = 0.5
    NOISE_STD = (0.0, 0.01)
    DOWNSAMPLING = (1.2, 2.0)
    BLUR_STD = (0.0, 0.5)
    LOG_GAMMA = (-0.1, 0.1)
    CONTROL_POINTS, MAX_DISPLACEMENT, LOCKED_BORDERS = 7, 7.5, 2

    def __init__(self, seed=None):
        super().__init__()
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self._device_generators = {}

    def draw(self, batch, channels=2):
        """Every sample's parameters, as a dict of CPU tensors with a leading batch axis."""
        g, n = self.generator, batch
        on = lambda: torch.rand(n, generator=g) <= self.P       # TorchIO skips when rand > p
        control = (torch.rand(n, *(self.CONTROL_POINTS,) * 3, 3, generator=g, dtype=torch.float64) - 0.5) * 2
        control *= self.MAX_DISPLACEMENT
        for i in range(self.LOCKED_BORDERS):
            control[:, i] = control[:, -1 - i] = control[:, :, i] = control[:, :, -1 - i] = 0
        return {
            "noise": on(), "noise_std": _uniform(n, *self.NOISE_STD, g),
            "anisotropy": on(), "axis": torch.randint(0, 3, (n,), generator=g),
            "factor": _uniform(n, *self.DOWNSAMPLING, g),
            "blur": on(), "blur_std": _uniform(n, *self.BLUR_STD, g, 3),
            "gamma": on(), "gamma_value": _uniform(n, *self.LOG_GAMMA, g, channels).exp(),
            "elastic": on(), "control": control,
        }

    def forward(self, image, label, affine=None):
        if image.ndim != 5 or label.ndim != 5 or label.shape[1] != 1 or image.shape[2:] != label.shape[2:] \
                or image.shape[0] != label.shape[0]:
            raise ValueError(f"expected image (B,C,X,Y,Z) and label (B,1,X,Y,Z) of one batch and grid, "
                             f"got {tuple(image.shape)} and {tuple(label.shape)}")
        batch = image.shape[0]
        affine = torch.eye(4, dtype=torch.float64).expand(batch, 4, 4) if affine is None \
            else torch.as_tensor(affine, dtype=torch.float64).cpu()
        return self.apply(image.float(), label.float(), self.draw(batch, image.shape[1]), affine)

    def apply(self, image, label, params, affine):
        """The transforms with the given parameters; the samples a transform skips are not touched."""
        host, shape = {}, image.shape[2:]
        spacing = affine[:, :3, :3].norm(dim=1)
        for name in ("noise", "blur", "gamma", "elastic"):
            if params[name].any():
                host[name] = params[name].nonzero().flatten()                 # the samples that drew it
        if "noise" in host:
            host["noise_std"] = params["noise_std"][host["noise"]]
        anisotropic = params["anisotropy"].nonzero().flatten().tolist()         # one axis per sample
        for b in anisotropic:
            axis = int(params["axis"][b])
            low, high, w, inside = anisotropy_1d(shape[axis], float(spacing[b, axis]), float(params["factor"][b]))
            host.update({f"low{b}": low, f"high{b}": high, f"w{b}": w, f"inside{b}": inside})
        if "blur" in host:
            i = host["blur"]
            host.update({f"kernels{d}": k for d, k in enumerate(blur_kernels(params["blur_std"][i] / spacing[i]))})
        if "gamma" in host:
            host["gamma_value"] = params["gamma_value"][host["gamma"]]
        if "elastic" in host:
            i = host["elastic"]
            host["control"] = grid_control(params["control"][i], affine[i], shape)
        on = to_device(host, image.device)
        rows = {k: _rows(host[k], on[k]) for k in ("noise", "blur", "gamma", "elastic") if k in host}

        image, label = image.clone(), label.clone()
        if "noise" in on:
            i = rows["noise"]
            image[i] = add_noise(image[i], on["noise_std"], self._device_generator(image.device))
        for b in anisotropic:
            axis = int(params["axis"][b])
            image[b] = anisotropy_at(image[b], axis, on[f"low{b}"], on[f"high{b}"], on[f"w{b}"], on[f"inside{b}"])
        if "blur" in on:
            i = rows["blur"]
            image[i] = blur_with(image[i], [on[f"kernels{d}"] for d in range(3)])
        if "gamma" in on:
            i = rows["gamma"]
            image[i] = gamma(image[i], on["gamma_value"])
        if "elastic" in on:
            i = rows["elastic"]
            image[i], label[i] = elastic_at(image[i], label[i], on["control"])
        return image, label

    def _device_generator(self, device):
        if self.generator is None:
            return None
        if device not in self._device_generators:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
            self._device_generators[device] = torch.Generator(device).manual_seed(seed)
        return self._device_generators[device]


