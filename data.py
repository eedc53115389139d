"""BONBID-HIE in, tensors out, predictions back in each case's own geometry (SPEC 1-3, 6, 8).

    discover(split_dir)            -> [Case]       pair the three files of each case by base name
    prepare(split_dir, cache_dir)  -> [Path]       SPEC 2 preprocessing, cached one file per case
    HIEDataset(files, augment)                     (2,X,Y,Z) input, (1,X,Y,Z) label, grid affine
    TorchAugment()(image, label, affine)           SPEC 3 augmentation as batched torch ops
    to_native(prob, grid, native)  -> array        a grid probability map back to the case's geometry
    write_mask(mask, geometry, path)               .mha / .nii.gz readable by ITK-SNAP and 3D Slicer
    synthesize(out_dir, ...)                       the synthetic BONBID-HIE of SPEC 8

Arrays are indexed (x, y, z), TorchIO's convention. Geometry is ITK's (LPS): a point of
voxel index i is origin + direction @ (spacing * i); ``.mha`` files are read and written
with SimpleITK, NIfTI with nibabel (its RAS affine converted to and from LPS).
"""
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

SPLITS = ("BONBID2023_Train", "BONBID2023_Val")
FOLDERS = {"adc": "1ADC_ss", "zadc": "2Z_ADC", "label": "3LABEL"}
PATTERNS = {   # file name -> case id ("base"), e.g. MGHNICU_010-VISIT_01
    "adc": re.compile(r"^(?P<base>.+)-ADC_ss(?P<ext>\.mha|\.nii|\.nii\.gz)$"),
    "zadc": re.compile(r"^Zmap_(?P<base>.+)-ADC_smooth2mm_clipped10(?P<ext>\.mha|\.nii|\.nii\.gz)$"),
    "label": re.compile(r"^(?P<base>.+)_lesion(?P<ext>\.mha|\.nii|\.nii\.gz)$"),
}
GRID = (192, 192, 32)
PREPROCESS_VERSION = 2          # bump when the preprocessing changes: every cache is rebuilt
_LPS = np.diag([-1.0, -1.0, 1.0])


class DataError(ValueError):
    """Problems with a dataset on disk; the message names every offending case and file."""


def file_names(base, ext=".mha"):
    """The three BONBID-HIE file names of case ``base``, relative to the split directory."""
    return {
        "adc": f"{FOLDERS['adc']}/{base}-ADC_ss{ext}",
        "zadc": f"{FOLDERS['zadc']}/Zmap_{base}-ADC_smooth2mm_clipped10{ext}",
        "label": f"{FOLDERS['label']}/{base}_lesion{ext}",
    }


# --------------------------------------------------------------------------- geometry and I/O

@dataclass(frozen=True)
class Geometry:
    """Voxel grid in physical space (ITK/LPS): size, spacing (mm), origin (mm), direction (3x3, row-major)."""
    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple

    @classmethod
    def of(cls, size, spacing, origin, direction):
        return cls(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                   tuple(float(o) for o in origin), tuple(float(d) for d in np.asarray(direction).ravel()))

    def matrix(self):
        return np.asarray(self.direction).reshape(3, 3)

    def affine_ras(self):
        """4x4 voxel-to-RAS affine, as nibabel and TorchIO want it."""
        affine = np.eye(4)
        affine[:3, :3] = _LPS @ self.matrix() @ np.diag(self.spacing)
        affine[:3, 3] = _LPS @ np.asarray(self.origin)
        return affine

    @classmethod
    def from_affine_ras(cls, affine, size):
        linear = _LPS @ np.asarray(affine)[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        return cls.of(size, spacing, _LPS @ np.asarray(affine)[:3, 3], linear / spacing)

    def resized(self, size):
        """SPEC 2: the same origin and direction, spacing * old size / new size."""
        spacing = np.asarray(self.spacing) * np.asarray(self.size) / np.asarray(size)
        return Geometry.of(size, spacing, self.origin, self.direction)

    def differences(self, other, tol=1e-4):
        """Names of the fields in which ``other`` differs (relative tolerance for mm values)."""
        out = [] if self.size == other.size else ["size"]
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, rtol=tol, atol=tol):
                out.append(name)
        return out

    def describe(self, fields):
        return ", ".join(f"{f} {tuple(round(v, 4) for v in getattr(self, f))}" for f in fields)


def _nifti(path):
    return str(path).endswith((".nii", ".nii.gz"))


def read_image(path):
    """(array indexed (x, y, z), Geometry) of a .mha (SimpleITK) or .nii/.nii.gz (nibabel) file."""
    if _nifti(path):
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
        while array.ndim > 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 3:
            raise ValueError(f"expected a 3-D image, got shape {array.shape}")
        return array, Geometry.from_affine_ras(img.affine, array.shape)
    img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a 3-D scalar image, got {img.GetDimension()}-D "
                         f"with {img.GetNumberOfComponentsPerPixel()} components")
    return (sitk.GetArrayFromImage(img).transpose(2, 1, 0),
            Geometry.of(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()))


def _to_sitk(array, geometry):
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def write_image(array, geometry, path):
    """Write ``array`` (x, y, z) with ``geometry`` as .mha or .nii/.nii.gz, atomically."""
    path = Path(path)
    if tuple(array.shape) != geometry.size:
        raise ValueError(f"{path.name}: array shape {tuple(array.shape)} does not match geometry size {geometry.size}")
    suffix = "".join(path.suffixes[-2:]) if _nifti(path) else path.suffix
    if suffix not in (".mha", ".nii", ".nii.gz"):
        raise ValueError(f"{path}: expected a .mha, .nii or .nii.gz file name, got suffix {suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    if suffix == ".mha":
        sitk.WriteImage(_to_sitk(array, geometry), str(tmp), True)
    else:
        img = nib.Nifti1Image(np.asarray(array), geometry.affine_ras())
        img.set_qform(geometry.affine_ras(), code=1)     # scanner coordinates: what viewers read
        img.set_sform(geometry.affine_ras(), code=1)
        nib.save(img, str(tmp))
    os.replace(tmp, path)


def write_mask(mask, reference, path):
    """Write a binary mask (uint8) with the geometry of ``reference`` (a Geometry or an image path)."""
    geometry = reference if isinstance(reference, Geometry) else read_image(reference)[1]
    write_image(np.asarray(mask).astype(np.uint8), geometry, path)


def resize_linear(array, size):
    """Linear resize in index space, with SPEC 2's edge rule, one axis at a time.

    On SPEC 2's grid (the same origin and direction, spacing * old size / new size),
    grid voxel i lies at source index i * n_old / n_new, whatever the direction matrix:
    so resampling is a separable 1-D interpolation per axis, exact and independent of the
    file format's float precision. Points beyond the outer source voxel centre (up to
    almost a voxel when a side doubles, e.g. 16 -> 32 slices) take the edge value
    (clamped). ITK's physical-space resampling clamps only within half a voxel and
    gives 0 further out: the zero last slice that SPEC 2's edge rule forbids.
    """
    out = np.asarray(array, dtype=np.float32)
    for axis, new in enumerate(size):
        old = out.shape[axis]
        position = np.minimum(np.arange(new) * (old / new), old - 1)
        lo = np.floor(position).astype(int)
        hi = np.minimum(lo + 1, old - 1)
        shape = [1] * out.ndim
        shape[axis] = new
        w = (position - lo).astype(np.float32).reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


def resample(array, source, target):
    """Linear resample of ``array`` on grid ``source`` onto ``target``, one of the
    grids of SPEC 2 (same origin and direction; sizes and spacings in inverse ratio):
    the preprocessing grid, or the way back to the case's own."""
    if source.differences(target.resized(source.size)):
        raise ValueError(f"resample: expected grids of one origin, direction and extent, got {source} and {target}")
    return resize_linear(array, target.size)


def to_native(prob, grid, native):
    """A probability map on the preprocessing grid back in the case's own size, spacing,
    origin and direction (linear, edges clamped), so a mask can be taken where the label
    lives (SPEC 6)."""
    return resample(prob, grid, native)


# --------------------------------------------------------------------------- discovery

@dataclass(frozen=True)
class Case:
    base: str
    adc: Path
    zadc: Path
    label: Path = None


def split_dirs(root):
    """The split directories under ``root``: the train and val splits of a dataset root,
    or ``root`` itself when it is one split (it holds 1ADC_ss/)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: expected a BONBID-HIE directory, got {'a file' if root.exists() else 'nothing'}")
    if (root / FOLDERS["adc"]).is_dir():
        return {root.name: root}
    found = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not found:
        raise DataError(f"{root}: expected {' and '.join(SPLITS)}/ (or a split's {'/, '.join(FOLDERS.values())}/), "
                        f"found {sorted(p.name for p in root.iterdir())[:6]}")
    return found


MAX_LISTED = 10       # problems spelled out in one error line; the rest are counted


def report(where, problems):
    """One line naming every problem (the first MAX_LISTED of them, and how many more)."""
    listed = " | ".join(problems[:MAX_LISTED])
    more = f" | ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{where}: {len(problems)} problem(s): {listed}{more}"


def find_cases(split_dir):
    """(cases, problems) of one split directory: the complete cases, paired by base name,
    and a line for every unpaired file, stray file or missing folder."""
    split_dir = Path(split_dir)
    problems, files = [], {}
    for kind, folder in FOLDERS.items():
        if not (split_dir / folder).is_dir():
            problems.append(f"missing folder {folder}/")
            continue
        for path in sorted((split_dir / folder).iterdir()):
            m = PATTERNS[kind].match(path.name)
            if m is None:
                if not path.name.startswith("."):
                    problems.append(f"{folder}/{path.name}: not a BONBID-HIE {kind} file name "
                                    f"(expected e.g. {file_names('MGHNICU_010-VISIT_01')[kind]})")
                continue
            if kind in files.setdefault(m["base"], {}):
                problems.append(f"{m['base']}: two {kind} files, {files[m['base']][kind].name} and {path.name}")
            files[m["base"]][kind] = path
    cases = []
    for base, found in sorted(files.items()):
        missing = [kind for kind in FOLDERS if kind not in found]
        if missing:
            ext = PATTERNS[next(iter(found))].match(next(iter(found.values())).name)["ext"]
            problems.append(f"{base}: missing {', '.join(file_names(base, ext)[k] for k in missing)}")
        else:
            cases.append(Case(base, found["adc"], found["zadc"], found["label"]))
    if not problems and not cases:
        problems.append("no cases (an empty split)")
    return cases, problems


def discover(split_dir):
    """The cases of one split directory, paired by base name; every unpaired file and
    missing folder is reported in one DataError."""
    cases, problems = find_cases(split_dir)
    if problems:
        raise DataError(report(split_dir, problems))
    return cases


# --------------------------------------------------------------------------- reading and preprocessing

def load_case(case):
    """(adc, zadc, label or None, geometry) of a case, checked; DataError lists every problem."""
    problems, arrays, geometries = [], {}, {}
    for kind in ("adc", "zadc", "label"):
        path = getattr(case, kind)
        if path is None:
            continue
        try:
            arrays[kind], geometries[kind] = read_image(path)
        except Exception as e:                      # noqa: BLE001 - any reader failure is "unreadable"
            problems.append(f"{path.name}: unreadable ({str(e).strip().splitlines()[0][:120]})")
            continue
        a = arrays[kind]
        if not np.issubdtype(a.dtype, np.number):
            problems.append(f"{path.name}: expected numeric voxels, got {a.dtype}")
        elif kind != "label" and not np.isfinite(a).all():
            problems.append(f"{path.name}: {int((~np.isfinite(a)).sum())} NaN/Inf voxels")
        elif kind == "label" and not np.isin(a, (0, 1)).all():
            bad = np.unique(a[~np.isin(a, (0, 1))])[:3].tolist()
            problems.append(f"{path.name}: label values other than 0/1, e.g. {bad}")
    if "adc" in geometries:
        for kind in ("zadc", "label"):
            if kind in geometries:
                diff = geometries["adc"].differences(geometries[kind])
                if diff:
                    problems.append(f"{getattr(case, kind).name} and {case.adc.name} differ in {', '.join(diff)} "
                                    f"({geometries[kind].describe(diff)} vs {geometries['adc'].describe(diff)})")
    if problems:
        raise DataError(f"{case.base}: " + "; ".join(problems))
    label = arrays["label"].astype(np.uint8) if "label" in arrays else None
    return arrays["adc"].astype(np.float32), arrays["zadc"].astype(np.float32), label, geometries["adc"]


def resize_nearest(label, size):
    """Nearest-neighbour resize in index space (SPEC 2's grid: same origin and direction).

    Grid voxel i samples source index i * n_old / n_new, rounded half up in integer
    arithmetic: exact ties (160 -> 192 has them) then fall the same way whatever the
    file format's float precision, so MHA and NIfTI give the same labels. Beyond the
    outer source voxel the index is clamped: the edge value, as for the maps.
    """
    index = [np.minimum((2 * np.arange(new) * old + new) // (2 * new), old - 1)
             for old, new in zip(label.shape, size)]
    return label[np.ix_(*index)]


def zscore(a):
    """(a - mean) / std over the whole volume (SPEC 2); a constant map becomes 0."""
    std = float(a.std())
    return (a - a.mean()) / (std if std > 0 else 1.0)


def preprocess(case, grid=GRID):
    """SPEC 2: resample to ``grid`` (maps linear, label nearest), z-score each map, stack.

    Returns {"image": (2,X,Y,Z) float32, "label": (1,X,Y,Z) uint8 or None,
             "native": Geometry of the ADC, "grid": Geometry of the resampled grid}.
    """
    adc, zadc, label, native = load_case(case)
    target = native.resized(grid)
    maps = [zscore(resize_linear(m, grid)) for m in (adc, zadc)]
    out = {"image": np.stack(maps).astype(np.float32), "native": native, "grid": target, "label": None}
    if label is not None:
        out["label"] = resize_nearest(label, grid)[None]
    return out


def _cache_key(case, grid):
    stamp = [PREPROCESS_VERSION, list(grid)]
    for path in (case.adc, case.zadc, case.label):
        st = path.stat()
        stamp.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()


def _save_npz(path, rename=True, **arrays):
    """Write the arrays to a temporary file beside ``path`` and rename it to ``path``
    (or, with ``rename=False``, return the temporary file's name for the caller to rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    if not rename:
        return tmp
    os.replace(tmp, path)
    return path


def load_cached(path):
    """One cache file: {"image", "label", "native", "grid", "base", "key"}."""
    with np.load(path) as z:
        out = {k: z[k] for k in ("image", "label")}
        meta = json.loads(str(z["meta"]))
    out.update(base=meta["base"], key=meta["key"],
               native=Geometry(**{k: tuple(v) for k, v in meta["native"].items()}),
               grid=Geometry(**{k: tuple(v) for k, v in meta["grid"].items()}))
    return out


def _cached_key(path):
    try:
        with np.load(path) as z:
            return json.loads(str(z["meta"]))["key"]
    except Exception:                                # noqa: BLE001 - a broken cache file is rebuilt
        return None


def prepare(split_dir, cache_dir, grid=GRID, log=None):
    """Preprocess every case of a split into ``cache_dir`` (one .npz per case), reusing
    files whose inputs and parameters are unchanged.

    Returns the cache paths in case order. Every broken case of the split, whether
    found by discovery (missing partner, stray file) or on reading (unreadable, geometry,
    NaN/Inf, label values), is named in one DataError, and then nothing is written:
    the new cache files are renamed into place only when the whole split is good.
    """
    cases, problems = find_cases(split_dir)
    where = hashlib.sha256(str(Path(split_dir).resolve()).encode()).hexdigest()[:8]      # one per dataset
    cache_dir = Path(cache_dir) / f"{Path(split_dir).name}_{'x'.join(map(str, grid))}_{where}"
    paths, pending = [], []
    for case in cases:
        path, key = cache_dir / f"{case.base}.npz", _cache_key(case, grid)
        paths.append(path)
        if path.exists() and _cached_key(path) == key:
            continue
        try:
            if problems:                           # the split is refused already: only check the rest
                load_case(case)
                continue
            p = preprocess(case, grid)
        except DataError as e:
            problems.append(str(e))
            continue
        meta = {"base": case.base, "key": key, "native": asdict(p["native"]), "grid": asdict(p["grid"])}
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = _save_npz(path, rename=False, image=p["image"], label=p["label"], meta=np.array(json.dumps(meta)))
        pending.append((tmp, path))
    if problems:
        for tmp, _ in pending:
            os.unlink(tmp)
        raise DataError(report(split_dir, problems))
    for tmp, path in pending:
        os.replace(tmp, path)
    if log:
        log(f"{Path(split_dir).name}: {len(cases)} cases, {len(pending)} preprocessed, "
            f"{len(cases) - len(pending)} from the cache {shown(cache_dir)}")
    return paths


def shown(path):
    """``path`` relative to the working directory where it lies inside it (for log lines)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


# --------------------------------------------------------------------------- dataset and augmentation

def augmentation():
    """SPEC 3 (paper 3.2.2), each transform with p = 0.5; spatial ones move the label too."""
    import torchio as tio
    return tio.Compose([
        tio.RandomNoise(mean=0.0, std=0.01, p=0.5),
        tio.RandomAnisotropy(downsampling=(1.2, 2.0), p=0.5),
        tio.RandomBlur(std=(0, 0.5), p=0.5),
        tio.RandomGamma(log_gamma=(-0.1, 0.1), p=0.5),
        tio.RandomElasticDeformation(p=0.5),
    ])


class HIEDataset(torch.utils.data.Dataset):
    """Cached cases as (image (2,X,Y,Z) float32, label (1,X,Y,Z) float32, affine (4,4) float64).

    ``augment="torchio"`` runs the SPEC 3 transforms on each draw, in the grid's physical
    space (its RAS affine), so that millimetre parameters mean millimetres; for
    ``TorchAugment``, which runs on the batch's device, the affine comes with each sample.
    The label's values are checked here, on the host, so that the loss need not scan the
    target on the device at every step.
    """

    def __init__(self, files, augment=None):
        if augment not in (None, "torchio"):
            raise ValueError(f"augment: expected None or 'torchio', got {augment!r}")
        self.files = [Path(f) for f in files]
        self.transform = augmentation() if augment else None

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        c = load_cached(self.files[i])
        if not np.isin(c["label"], (0, 1)).all():
            raise DataError(f"{shown(self.files[i])}: expected label values 0 and 1, "
                            f"got {np.unique(c['label'])[:5].tolist()}")
        affine = c["grid"].affine_ras()
        image, label = torch.from_numpy(c["image"]), torch.from_numpy(c["label"]).float()
        if self.transform is not None:
            import torchio as tio
            subject = tio.Subject(image=tio.ScalarImage(tensor=image, affine=affine),
                                  label=tio.LabelMap(tensor=label, affine=affine))
            subject = self.transform(subject)
            image, label = subject["image"].data.float(), subject["label"].data.float()
        return image, label, torch.from_numpy(affine)


# --------------------------------------------------------------------------- SPEC 3 as batched torch ops

def _uniform(n, low, high, generator, *shape):
    """TorchIO's ``sample_uniform``: low + (high - low) * U[0, 1), n draws."""
    return low + (high - low) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)


def bspline3(t):
    """Centred cubic B-spline: 2/3 - t^2 + |t|^3/2 on |t| < 1, (2 - |t|)^3/6 on 1 <= |t| < 2."""
    t = t.abs()
    return torch.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, torch.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def bspline_weights(n, points):
    """(n, points) weights of a cubic B-spline control grid laid over n voxels as SimpleITK's
    ``BSplineTransformInitializer`` lays it (measured, ITK 5.4): the mesh's points - 3
    intervals span the image's outer voxel faces grown by 1/8 voxel at each end (index
    -0.625 to n - 0.375), with one more point past each end."""
    h = (n + 0.25) / (points - 3)                        # control-point spacing, voxels
    u = (torch.arange(n, dtype=torch.float64) + 0.625) / h + 1
    return bspline3(u[:, None] - torch.arange(points, dtype=torch.float64))


def elastic_field(control, shape):
    """(B, X, Y, Z, 3) displacement of every voxel from (B, P, P, P, 3) control-point
    displacements (same units), contracted one axis at a time."""
    wx, wy, wz = (bspline_weights(n, p).to(control) for n, p in zip(shape, control.shape[1:4]))
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
    low, high, w, inside = (t.to(image.device) for t in anisotropy_1d(image.shape[1 + axis], spacing, factor))
    shape = [1, 1, 1]
    shape[axis] = -1
    w, inside = w.to(image).view(shape), inside.view(shape)
    mixed = (1 - w) * image.index_select(1 + axis, low) + w * image.index_select(1 + axis, high)
    return torch.where(inside, mixed, 0.0)


def blur(image, sigma):
    """TorchIO's Blur (scipy's ``gaussian_filter``): image (B,C,X,Y,Z), sigma (B,3) in voxels."""
    for d in range(3):
        radius = int((4 * sigma[:, d] + 0.5).floor().max())
        kernels = gaussian_kernels(sigma[:, d], radius).to(image)[:, None].expand(-1, image.shape[1], -1)
        image = _filter1d(image, kernels, 2 + d)
    return image


def gamma(image, value):
    """TorchIO's Gamma: sign(x) |x|^gamma, one gamma per (B, C)."""
    value = value.to(image)[:, :, None, None, None]
    return image.abs().log_().mul_(value).exp_().mul_(image.sign())     # |x|^g in place, 0 stays 0


def elastic(image, label, control, affine):
    """TorchIO's ElasticDeformation: control (B,P,P,P,3) displacements in LPS mm at the
    control points, affine (B,4,4) RAS; the image linear, the label nearest, each channel's
    minimum where a voxel is displaced out of the volume."""
    shape = image.shape[2:]
    # LPS mm -> voxels -> grid_sample's units (2 / (n - 1) per voxel), in its (z, y, x) order:
    # linear, so it is applied to the 7^3 control points, not to the field
    to_voxels = torch.linalg.inv(torch.from_numpy(_LPS) @ affine[:, :3, :3].double())
    per_voxel = torch.tensor([2 / (n - 1) for n in shape], dtype=torch.float64)
    to_grid = (per_voxel[:, None] * to_voxels).flip(-2)
    control = torch.einsum("bed,bijkd->bijke", to_grid, control.double()).to(image.device, torch.float32)
    centres = torch.meshgrid(*(torch.linspace(-1, 1, n, device=image.device) for n in shape), indexing="ij")
    grid = torch.stack(centres[::-1], -1) + elastic_field(control, shape)
    faces = torch.tensor([1 + 1 / (n - 1) for n in reversed(shape)], device=image.device)  # half a voxel out
    inside = (grid.abs() <= faces).all(-1)
    return (warp(image, grid, inside, "bilinear", image.amin(dim=(2, 3, 4))),
            warp(label, grid, inside, "nearest", label.amin(dim=(2, 3, 4))))


def _index(drawn):
    """The samples that drew a transform, (B,) bool: None for none, a slice where they run
    without a gap (a view, no gather), else their list."""
    samples = drawn.nonzero().flatten().tolist()
    if not samples:
        return None
    if samples == list(range(samples[0], samples[-1] + 1)):
        return slice(samples[0], samples[-1] + 1)
    return samples


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
    ``torch.manual_seed`` and a checkpointed RNG state reproduce them), so choosing what
    to apply never waits on the device.
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
        on = {k: _index(params[k]) for k in ("noise", "blur", "gamma", "elastic")}
        spacing = affine[:, :3, :3].norm(dim=1)
        image, label = image.clone(), label.clone()
        if (i := on["noise"]) is not None:
            image[i] = add_noise(image[i], params["noise_std"][i], self._device_generator(image.device))
        for b in params["anisotropy"].nonzero().flatten().tolist():      # one axis per sample
            axis = int(params["axis"][b])
            image[b] = anisotropy(image[b], axis, float(params["factor"][b]), float(spacing[b, axis]))
        if (i := on["blur"]) is not None:
            image[i] = blur(image[i], params["blur_std"][i] / spacing[i])
        if (i := on["gamma"]) is not None:
            image[i] = gamma(image[i], params["gamma_value"][i])
        if (i := on["elastic"]) is not None:
            image[i], label[i] = elastic(image[i], label[i], params["control"][i], affine[i])
        return image, label

    def _device_generator(self, device):
        if self.generator is None:
            return None
        if device not in self._device_generators:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
            self._device_generators[device] = torch.Generator(device).manual_seed(seed)
        return self._device_generators[device]


# --------------------------------------------------------------------------- the synthetic BONBID-HIE

def _smooth_noise(rng, shape, sigma):
    """Gaussian-smoothed white noise with unit std. Smooth fields carry no detail finer
    than sigma, so they are made on a grid coarser by up to sigma / 2 and interpolated
    back: the same kind of field at a fraction of the cost of filtering the full volume."""
    from scipy import ndimage
    sigma = np.broadcast_to(np.asarray(sigma, float), (len(shape),))
    step = np.maximum(1, np.floor(sigma / 2)).astype(int)
    coarse = tuple(int(np.ceil(n / k)) + 1 for n, k in zip(shape, step))
    field = resize_linear(ndimage.gaussian_filter(rng.standard_normal(coarse), sigma / step), tuple(shape))
    return field / (field.std() + 1e-12)


def _synthetic_case(rng, size, lesion_fraction):
    """(adc, zadc, label) arrays (x, y, z) and spacing: a neonatal-brain-like volume."""
    from scipy import ndimage
    size = np.asarray(size)
    spacing = np.array([*[np.clip(rng.uniform(170, 230) / size[0], 0.625, 2.0)] * 2,
                        np.clip(rng.uniform(95, 140) / size[2], 2.0, 6.0)])
    # mm from the centre of the field of view; the brain an ellipsoid with a bumpy surface
    mm = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(size, spacing)]
    x, y, z = np.meshgrid(*mm, indexing="ij", sparse=True)
    axes = np.array([62.0, 76.0, 48.0]) * rng.uniform(0.85, 1.05)
    r = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)
    r = r + 0.04 * _smooth_noise(rng, size, 6 / spacing)
    brain = r < 1.0
    ventricles = np.zeros(tuple(size), bool)
    for side in (-1, 1):
        ventricles |= ((x - side * 13) / 8) ** 2 + (y / 26) ** 2 + ((z - 5) / 11) ** 2 < 1
    tissue = np.where(r < 0.72, 1500.0, 1100.0)                      # white matter, grey matter
    tissue = np.where(ventricles | (r > 0.96), 2400.0, tissue)       # CSF: ventricles, outer rim
    tissue = tissue * (1 + 0.05 * _smooth_noise(rng, size, 10 / spacing))
    normal = np.where(brain, tissue, 0.0)
    # multifocal lesions: restricted diffusion (low ADC) in a few blobs inside the brain
    label = np.zeros(tuple(size), bool)
    inside = np.argwhere(brain & (r < 0.9) & ~ventricles)
    if lesion_fraction > 0 and len(inside):
        n_foci = int(rng.integers(1, 6))
        volume = lesion_fraction * brain.sum() * np.prod(spacing) / n_foci     # mm^3 per focus
        bumps = 0.25 * _smooth_noise(rng, size, 3 / spacing)                  # irregular borders
        for _ in range(n_foci):
            c = inside[rng.integers(len(inside))] * spacing - (size - 1) / 2 * spacing
            radii = (3 * volume / (4 * np.pi)) ** (1 / 3) * rng.uniform(0.7, 1.4, 3)
            d = ((x - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((z - c[2]) / radii[2]) ** 2
            label |= d + bumps < 1
        label &= brain & ~ventricles
    adc = normal * np.where(label, rng.uniform(0.4, 0.6), 1.0)
    adc = np.where(brain, adc + rng.normal(0, 60, adc.shape), 0.0).clip(0, None)
    # ZADC: z-score against the "normal" reference (sd 12 % of it), smoothed 2 mm, clipped at +-10
    z_map = np.where(brain, (adc - normal) / (0.12 * normal + 1e-6) + 0.35 + 2.0 * _smooth_noise(rng, size, 8 / spacing), 0)
    z_map = np.where(brain, ndimage.gaussian_filter(z_map, 2 / 2.355 / spacing), 0.0).clip(-10, 10)
    return adc.astype(np.float32), z_map.astype(np.float32), label.astype(np.uint8), spacing


def _random_direction(rng, max_degrees=15):
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def synthesize(out_dir, n_train=48, n_val=4, seed=0, size_range=((128, 128, 16), (256, 256, 64)), ext=".mha"):
    """Write a synthetic BONBID-HIE (SPEC 8) under ``out_dir``: BONBID2023_Train/ and
    BONBID2023_Val/ in the real layout and file names, deterministic from ``seed``.

    Sizes are drawn from ``size_range`` (x = y), spacing in the real
    ranges, oblique directions and non-zero origins; lesion burden log-uniform from 0.2 %
    to 30 % of the brain, multifocal; the first training case has no lesion.
    Returns the dataset root.
    """
    out_dir = Path(out_dir)
    (lo, hi) = np.asarray(size_range[0]), np.asarray(size_range[1])
    for split, n in zip(SPLITS, (n_train, n_val)):
        for i in range(n):
            rng = np.random.default_rng([seed, SPLITS.index(split), i])
            # sizes around the real median (160, 160, 43)
            side = int(round(rng.triangular(lo[0], np.clip(160, lo[0], hi[0]), hi[0] + 1e-9)))
            size = (side, side, int(round(rng.triangular(lo[2], np.clip(43, lo[2], hi[2]), hi[2] + 1e-9))))
            no_lesion = split == SPLITS[0] and i == 0
            fraction = 0.0 if no_lesion else float(np.exp(rng.uniform(np.log(0.002), np.log(0.3))))
            adc, zadc, label, spacing = _synthetic_case(rng, size, fraction)
            geometry = Geometry.of(size, spacing, rng.uniform(-120, -60, 3), _random_direction(rng))
            base = f"MGHNICU_{(SPLITS.index(split) * 500 + i + 1):03d}-VISIT_01"
            for kind, array in zip(("adc", "zadc", "label"), (adc, zadc, label)):
                write_image(array, geometry, out_dir / split / file_names(base, ext)[kind])
    return out_dir
