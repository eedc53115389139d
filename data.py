"""BONBID-HIE in, tensors out, predictions back in each case's own geometry (SPEC 1, 2, 6).

    discover(split_dir)            -> [Case]       pair the three files of each case by base name (SPEC 1)
    load_case(case)                -> arrays       read and check them: every problem named at once
    preprocess(case, grid)         -> dict         SPEC 2: resample to the grid, z-score, stack
    prepare(split_dir, cache_dir)  -> [Path]       SPEC 2 for a whole split, cached one file per case
    HIEDataset(files, augment)                     (2,X,Y,Z) input, (1,X,Y,Z) label, grid affine
    to_native(prob, grid, native)  -> array        a grid probability map back to the case's geometry (SPEC 6)
    write_mask(mask, geometry, path)               .mha / .nii.gz readable by ITK-SNAP and 3D Slicer

Arrays are indexed (x, y, z), TorchIO's convention. Geometry is ITK's (LPS): a point of
voxel index i is origin + direction @ (spacing * i); ``.mha`` files are read and written
with SimpleITK, NIfTI with nibabel (its RAS affine converted to and from LPS).

Real data, its layout and what a broken case gives: docs/data.md.
"""
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

from plumbing import HERE, atomic_write, library_error, report, shown, staged

SPLITS = ("BONBID2023_Train", "BONBID2023_Val")
FOLDERS = {"adc": "1ADC_ss", "zadc": "2Z_ADC", "label": "3LABEL"}
PATTERNS = {   # file name -> case id ("base"), e.g. MGHNICU_010-VISIT_01
    "adc": re.compile(r"^(?P<base>.+)-ADC_ss(?P<ext>\.mha|\.nii|\.nii\.gz)$"),
    "zadc": re.compile(r"^Zmap_(?P<base>.+)-ADC_smooth2mm_clipped10(?P<ext>\.mha|\.nii|\.nii\.gz)$"),
    "label": re.compile(r"^(?P<base>.+)_lesion(?P<ext>\.mha|\.nii|\.nii\.gz)$"),
}
GRID = (192, 192, 32)
ZADC_LIMIT = 10.5             # SPEC 1: a ZADC map is clipped to +-10; beyond this it is not one
CACHE = HERE / "cache"          # the default preprocessing cache
PREPROCESS_VERSION = 2          # bump when the preprocessing changes: every cache is rebuilt
LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS: nibabel and TorchIO speak RAS, ITK LPS


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
        affine[:3, :3] = LPS @ self.matrix() @ np.diag(self.spacing)
        affine[:3, 3] = LPS @ np.asarray(self.origin)
        return affine

    @classmethod
    def from_affine_ras(cls, affine, size):
        linear = LPS @ np.asarray(affine)[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        return cls.of(size, spacing, LPS @ np.asarray(affine)[:3, 3], linear / spacing)

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
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ValueError(library_error(e)) from None
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
    if suffix == ".mha":
        atomic_write(path, lambda tmp: sitk.WriteImage(_to_sitk(array, geometry), tmp, True))
    else:
        img = nib.Nifti1Image(np.asarray(array), geometry.affine_ras())
        img.set_qform(geometry.affine_ras(), code=1)     # scanner coordinates: what viewers read
        img.set_sform(geometry.affine_ras(), code=1)
        atomic_write(path, lambda tmp: nib.save(img, tmp))


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


def to_native(prob, grid, native):
    """A probability map on the preprocessing grid back in the case's own size, spacing,
    origin and direction (linear, edges clamped), so a mask can be taken where the label
    lives (SPEC 6). The two grids are SPEC 2's pair: one origin, direction and extent."""
    if grid.differences(native.resized(grid.size)):
        raise ValueError(f"to_native: expected grids of one origin, direction and extent, got {grid} and {native}")
    return resize_linear(prob, native.size)


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
        raise DataError(f"{root}: " + ("a file, not a BONBID-HIE directory" if root.exists() else "no such directory"))
    if (root / FOLDERS["adc"]).is_dir():
        return {root.name: root}
    found = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not found:
        raise DataError(f"{root}: expected {' and '.join(SPLITS)}/ (or a split's {'/, '.join(FOLDERS.values())}/), "
                        f"found {sorted(p.name for p in root.iterdir())[:6]}")
    return found


def split_dir(root, split):
    """The directory of one split (``train``, ``val`` or a split's folder name) under ``root``."""
    name = {"train": SPLITS[0], "val": SPLITS[1]}.get(split, split)
    found = split_dirs(root)
    if name not in found:
        raise DataError(f"{root}: expected a {name}/ split, found {', '.join(found)}")
    return found[name]


def train_val_dirs(root):
    """(train split, val split) of a dataset root; DataError names the missing ones."""
    found = split_dirs(root)
    missing = [s for s in SPLITS if s not in found]
    if missing:
        raise DataError(f"{root}: expected {' and '.join(SPLITS)}/, missing {', '.join(missing)}/")
    return found[SPLITS[0]], found[SPLITS[1]]


def find_cases(split_dir, labels=True):
    """(cases, problems) of one split directory: the complete cases, paired by base name,
    and a line for every unpaired file, stray file or missing folder. ``labels`` False: a
    test set, whose 3LABEL/ may be missing (cases without a label file have label None)."""
    split_dir = Path(split_dir)
    problems, files = [], {}
    needed = [k for k in FOLDERS if labels or k != "label"]
    for kind, folder in FOLDERS.items():
        if kind not in needed and not (split_dir / folder).is_dir():
            continue
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
        missing = [kind for kind in needed if kind not in found]
        if missing:
            ext = PATTERNS[next(iter(found))].match(next(iter(found.values())).name)["ext"]
            problems.append(f"{base}: missing {', '.join(file_names(base, ext)[k] for k in missing)}")
        else:
            cases.append(Case(base, found["adc"], found["zadc"], found.get("label")))
    if not problems and not cases:
        problems.append("no cases (an empty split)")
    return cases, problems


def discover(split_dir, labels=True):
    """The cases of one split directory, paired by base name; every unpaired file and
    missing folder is reported in one DataError (``labels`` False: labels optional)."""
    cases, problems = find_cases(split_dir, labels)
    if problems:
        raise DataError(report(split_dir, problems))
    return cases


# --------------------------------------------------------------------------- reading and preprocessing

def load_case(case):
    """(adc, zadc, label or None, geometry) of a case, checked; DataError lists every problem."""
    problems, arrays, geometries = [], {}, {}
    if case.adc and case.zadc and Path(case.adc).resolve() == Path(case.zadc).resolve():
        raise DataError(f"{case.base}: {Path(case.adc).name} given as both the ADC and the ZADC: expected two files")
    for kind in ("adc", "zadc", "label"):
        path = getattr(case, kind)
        if path is None:
            continue
        try:
            arrays[kind], geometries[kind] = read_image(path)
        except Exception as e:                      # noqa: BLE001 - any reader failure is "unreadable"
            problems.append(f"{path.name}: unreadable ({str(e).strip().splitlines()[0]})")
            continue
        a = arrays[kind]
        largest = float(np.abs(a).max()) if a.size and np.issubdtype(a.dtype, np.number) else 0.0
        if not np.issubdtype(a.dtype, np.number):
            problems.append(f"{path.name}: expected numeric voxels, got {a.dtype}")
        elif kind != "label" and not np.isfinite(a).all():
            problems.append(f"{path.name}: {int((~np.isfinite(a)).sum())} NaN/Inf voxels")
        elif kind == "zadc" and largest > ZADC_LIMIT:      # SPEC 1: z-scores clipped to +-10; ADC runs to ~3500
            problems.append(f"{path.name}: expected a ZADC map (z-scores clipped to ±10), got values up to "
                            f"{largest:.4g}: is it the ADC map?")
        elif kind == "adc" and a.min() < -1 and largest <= ZADC_LIMIT:           # an ADC is >= 0
            problems.append(f"{path.name}: expected an ADC map (>= 0, background 0), got values from "
                            f"{float(a.min()):.3g} to {float(a.max()):.3g}: is it the ZADC map?")
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


def prepare(split_dir, cache_dir=CACHE, grid=GRID, log=None):
    """Preprocess every case of a split into ``cache_dir`` (one .npz per case), reusing
    files whose inputs and parameters are unchanged.

    Returns the cache paths in case order. Every broken case of the split, whether
    found by discovery (missing partner, stray file) or on reading (unreadable, geometry,
    NaN/Inf, label values), is named in one DataError, and then nothing is written:
    the new cache files are renamed into place only when the whole split is good.
    """
    return prepare_all([split_dir], cache_dir, grid, log)[0]


def _cache_dir(split_dir, cache_dir, grid):
    where = hashlib.sha256(str(Path(split_dir).resolve()).encode()).hexdigest()[:8]      # one per dataset
    return Path(cache_dir) / f"{Path(split_dir).name}_{'x'.join(map(str, grid))}_{where}"


def _stage(split_dir, cache_dir, grid, check_only):
    """(cache paths, [(staged temporary file, path)], problems) of one split: the cases that
    need it preprocessed to temporary files beside their cache paths, or, with
    ``check_only`` (another split is refused already), only read and checked."""
    cases, problems = find_cases(split_dir)
    paths, pending = [], []
    for case in cases:
        path, key = cache_dir / f"{case.base}.npz", _cache_key(case, grid)
        paths.append(path)
        if path.exists() and _cached_key(path) == key:
            continue
        try:
            if problems or check_only:                 # refused already: only check the rest
                load_case(case)
                continue
            p = preprocess(case, grid)
        except DataError as e:
            problems.append(str(e))
            continue
        meta = {"base": case.base, "key": key, "native": asdict(p["native"]), "grid": asdict(p["grid"])}
        arrays = {"image": p["image"], "label": p["label"], "meta": np.array(json.dumps(meta))}
        pending.append((staged(path, lambda tmp: np.savez(tmp, **arrays)), path))
    return paths, pending, problems


def prepare_all(split_dirs, cache_dir=CACHE, grid=GRID, log=None):
    """``prepare`` for several splits at once, all or nothing: every split is checked before
    any cache file is renamed into place, and a refused dataset leaves no cache file and no
    cache folder behind. Returns each split's cache paths; the problems of all in one DataError."""
    folders = [_cache_dir(d, cache_dir, grid) for d in split_dirs]
    new = [f for f in dict.fromkeys([*folders, Path(cache_dir)]) if not f.exists()]
    staged_splits, messages = [], []
    for split_dir, folder in zip(split_dirs, folders):
        paths, pending, problems = _stage(split_dir, folder, grid, check_only=bool(messages))
        staged_splits.append((paths, pending))
        if problems:
            messages.append(report(split_dir, problems))
    if messages:
        for _, pending in staged_splits:
            for tmp, _ in pending:
                os.unlink(tmp)
        for folder in new:                                   # deepest first: the split folders, then the cache
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise DataError(" || ".join(messages))
    for split_dir, folder, (paths, pending) in zip(split_dirs, folders, staged_splits):
        for tmp, path in pending:
            os.replace(tmp, path)
        if log:
            log(f"{Path(split_dir).name}: {len(paths)} cases, {len(pending)} preprocessed, "
                f"{len(paths) - len(pending)} from the cache {shown(folder)}")
    return [paths for paths, _ in staged_splits]


def prepare_splits(root, cache_dir=CACHE, grid=GRID, log=None):
    """Cache paths of the train and val splits, both checked before either is written; the
    problems of both in one DataError."""
    return prepare_all(train_val_dirs(root), cache_dir, grid, log)


# --------------------------------------------------------------------------- the dataset


class HIEDataset(torch.utils.data.Dataset):
    """Cached cases as (image (2,X,Y,Z) float32, label (1,X,Y,Z) float32, affine (4,4) float64).

    ``augment``: None, or a SPEC 3 ``augment(image, label, affine)`` on a batch (augment.py's
    TorchIOAugment here, in the loader; TorchAugment runs on the device, hence the affine with
    each sample). Labels are checked here, on the host, not by the loss at every step."""

    def __init__(self, files, augment=None):
        if augment is not None and not callable(augment):
            raise ValueError(f"augment: expected None or a callable (image, label, affine) -> (image, label), "
                             f"got {augment!r}")
        self.files = [Path(f) for f in files]
        self.augment = augment

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        c = load_cached(self.files[i])
        if not np.isin(c["label"], (0, 1)).all():
            raise DataError(f"{shown(self.files[i])}: expected label values 0 and 1, "
                            f"got {np.unique(c['label'])[:5].tolist()}")
        affine = c["grid"].affine_ras()
        image, label = torch.from_numpy(c["image"]), torch.from_numpy(c["label"]).float()
        affine = torch.from_numpy(affine)
        if self.augment is not None:
            image, label = self.augment(image[None], label[None], affine[None])
            image, label = image[0], label[0]
        return image, label, affine
