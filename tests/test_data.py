"""data.py: layout, preprocessing, cache, the way back to native geometry, errors, augmentation."""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import data
import synthetic
from augment import TorchIOAugment, torchio_transforms
from conftest import GRID, TINY

TRAIN = "BONBID2023_Train"
VAL = "BONBID2023_Val"


def copy_split(root, tmp_path):
    return shutil.copytree(root / TRAIN, tmp_path / TRAIN)


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# ---------------------------------------------------------------- synthetic data and discovery

def test_synthetic_layout_names_and_geometry(tiny_root):
    names = sorted(p.relative_to(tiny_root).as_posix() for p in tiny_root.rglob("*.mha"))
    assert "BONBID2023_Train/1ADC_ss/MGHNICU_001-VISIT_01-ADC_ss.mha" in names
    assert "BONBID2023_Train/2Z_ADC/Zmap_MGHNICU_001-VISIT_01-ADC_smooth2mm_clipped10.mha" in names
    assert "BONBID2023_Val/3LABEL/MGHNICU_502-VISIT_01_lesion.mha" in names
    assert len(names) == 15
    cases = data.discover(tiny_root / TRAIN)
    assert [c.base for c in cases] == ["MGHNICU_001-VISIT_01", "MGHNICU_002-VISIT_01", "MGHNICU_003-VISIT_01"]
    adc, zadc, label, g = data.load_case(cases[1])
    assert adc.shape == zadc.shape == label.shape == g.size
    assert not np.allclose(g.matrix(), np.eye(3)) and np.abs(g.origin).min() > 1       # oblique, off-origin
    assert np.allclose(g.matrix() @ g.matrix().T, np.eye(3), atol=1e-6)
    assert adc.min() == 0 and zadc.min() >= -10 and zadc.max() <= 10 and set(np.unique(label)) <= {0, 1}
    assert data.load_case(cases[0])[2].sum() == 0 and label.sum() > 0        # the first case has no lesion
    # lesions: restricted diffusion
    assert adc[label > 0].mean() < 0.75 * adc[(label == 0) & (adc > 0)].mean() and zadc[label > 0].mean() < -1


def test_synthesis_is_deterministic(tmp_path):
    a = synthetic.synthesize(tmp_path / "a", 1, 1, seed=11, size_range=TINY)
    b = synthetic.synthesize(tmp_path / "b", 1, 1, seed=11, size_range=TINY)
    c = synthetic.synthesize(tmp_path / "c", 1, 1, seed=12, size_range=TINY)
    files = sorted(p.relative_to(a) for p in a.rglob("*.mha"))
    for f in files:
        assert np.array_equal(data.read_image(a / f)[0], data.read_image(b / f)[0])
    assert not np.array_equal(data.read_image(a / files[0])[0], data.read_image(c / files[0])[0])


def test_split_dirs(tiny_root):
    assert set(data.split_dirs(tiny_root)) == set(data.SPLITS)
    assert list(data.split_dirs(tiny_root / TRAIN)) == [TRAIN]
    with pytest.raises(data.DataError, match="expected BONBID2023_Train and BONBID2023_Val"):
        data.split_dirs(tiny_root / TRAIN / "1ADC_ss")
    with pytest.raises(data.DataError, match="no such directory"):
        data.split_dirs(tiny_root / "nope")


# ---------------------------------------------------------------- preprocessing and the way back

@pytest.fixture(scope="module")
def cached(tiny_root, tmp_path_factory):
    return data.prepare(tiny_root / TRAIN, tmp_path_factory.mktemp("cache"), GRID)


def test_preprocessing_shapes_stats_geometry(tiny_root, cached):
    for case, path in zip(data.discover(tiny_root / TRAIN), cached):
        c = data.load_cached(path)
        assert c["image"].shape == (2, *GRID) and c["image"].dtype == np.float32
        assert c["label"].shape == (1, *GRID) and set(np.unique(c["label"])) <= {0, 1}
        np.testing.assert_allclose(c["image"].mean(axis=(1, 2, 3)), 0, atol=1e-4)
        np.testing.assert_allclose(c["image"].std(axis=(1, 2, 3)), 1, atol=1e-3)
        native = data.read_image(case.adc)[1]
        assert c["native"] == native
        assert c["grid"].origin == native.origin and c["grid"].direction == native.direction
        np.testing.assert_allclose(np.array(c["grid"].spacing) * GRID, np.array(native.spacing) * native.size)


def test_round_trip_nearest_is_exact_and_linear_is_close(tiny_root, cached):
    lesions = 0
    for case, path in zip(data.discover(tiny_root / TRAIN), cached):
        label = data.read_image(case.label)[0].astype(bool)
        c = data.load_cached(path)
        back = data.resize_nearest(c["label"][0], c["native"].size) > 0.5
        assert back.shape == label.shape and np.array_equal(back, label)
        linear = data.to_native(c["label"][0].astype(np.float32), c["grid"], c["native"]) > 0.5
        if label.sum() > 100:
            lesions += 1
            assert dice(linear, label) >= 0.95
    assert lesions >= 1


@pytest.mark.parametrize("ext", [".mha", ".nii.gz", ".nii"])
def test_written_mask_keeps_geometry(tiny_root, tmp_path, ext):
    case = data.discover(tiny_root / TRAIN)[1]
    label, geometry = data.read_image(case.label)
    out = tmp_path / f"pred{ext}"
    data.write_mask(label, case.adc, out)
    img = sitk.ReadImage(str(out))                    # ITK reads it back as the viewers do
    assert img.GetSize() == geometry.size
    np.testing.assert_allclose(img.GetSpacing(), geometry.spacing, rtol=1e-5)
    np.testing.assert_allclose(img.GetOrigin(), geometry.origin, atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), geometry.direction, atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), label)
    assert not list(tmp_path.glob(".*tmp*"))


def test_mha_and_nifti_give_the_same_tensors(tmp_path):
    mha = synthetic.synthesize(tmp_path / "mha", 2, 0, seed=2, size_range=TINY)
    nii = synthetic.synthesize(tmp_path / "nii", 2, 0, seed=2, size_range=TINY, ext=".nii.gz")
    a = data.prepare(mha / TRAIN, tmp_path / "ca", GRID)
    b = data.prepare(nii / TRAIN, tmp_path / "cb", GRID)
    for pa, pb in zip(a, b):
        ca, cb = data.load_cached(pa), data.load_cached(pb)
        np.testing.assert_allclose(ca["image"], cb["image"], atol=1e-5)
        assert np.array_equal(ca["label"], cb["label"])
        assert not ca["native"].differences(cb["native"], tol=1e-5)


# ---------------------------------------------------------------- SPEC 2's edge rule

def write_ramp(tmp_path, size, axis):
    """A case whose ADC is the ramp 10 + 3 * (index along ``axis``) and whose ZADC is that ramp
    scaled into the ZADC's +-10 (the same after z-scoring), oblique geometry."""
    ramp = 10 + 3 * np.arange(size[axis], dtype=np.float32)
    shape = [1, 1, 1]
    shape[axis] = size[axis]
    volume = np.broadcast_to(ramp.reshape(shape), size).copy()
    direction = synthetic._random_direction(np.random.default_rng(1))
    g = data.Geometry.of(size, (0.9, 0.9, 2.2), (-80.0, -95.5, 40.0), direction)
    base = "MGHNICU_900-VISIT_01"
    for kind, array in (("adc", volume), ("zadc", volume * (9 / volume.max())), ("label", np.zeros(size, np.uint8))):
        data.write_image(array, g, tmp_path / data.file_names(base)[kind])
    return data.Case(base, *(tmp_path / data.file_names(base)[k] for k in ("adc", "zadc", "label"))), g


@pytest.mark.parametrize("size,grid,axis", [((8, 8, 16), (8, 8, 32), 2), ((8, 8, 20), (8, 8, 32), 2),
                                            ((160, 4, 4), (192, 4, 4), 0)])
def test_grid_slices_are_the_clamped_interpolation_of_a_ramp(tmp_path, size, grid, axis):
    case, _ = write_ramp(tmp_path, size, axis)
    image = data.preprocess(case, grid)["image"]
    # worked by hand: grid index j sits at source index j * n_old / n_new; beyond the last
    # source centre (n_old - 1) the ramp's edge value holds
    position = np.minimum(np.arange(grid[axis]) * size[axis] / grid[axis], size[axis] - 1)
    expected = data.zscore(np.broadcast_to((10 + 3 * position).reshape([-1 if a == axis else 1 for a in range(3)]),
                                           grid).astype(np.float32))
    for channel in image:
        np.testing.assert_allclose(channel, expected, atol=1e-5)
        assert np.ptp(np.take(channel, -1, axis=axis)) == 0        # the last slice is a slice of the ramp, not 0


def test_resampling_equals_itk_inside_the_source(tmp_path):
    # where ITK's physical-space resampling is defined (within the outer voxel centres),
    # the index-space resize gives the same values on an oblique, anisotropic case
    rng = np.random.default_rng(3)
    size, grid = (20, 18, 13), (24, 24, 16)
    array = rng.normal(size=size).astype(np.float32)
    g = data.Geometry.of(size, (1.1, 1.1, 3.0), (-60.0, 20.0, 5.0), synthetic._random_direction(rng))
    t = g.resized(grid)
    itk = sitk.Resample(data._to_sitk(array, g), t.size, sitk.Transform(), sitk.sitkLinear, t.origin, t.spacing,
                        t.direction, 0.0, sitk.sitkFloat32)
    itk = sitk.GetArrayFromImage(itk).transpose(2, 1, 0)
    inside = tuple(slice(0, int(np.floor((n - 1) * m / n)) + 1) for n, m in zip(size, grid))
    np.testing.assert_allclose(data.resize_linear(array, grid)[inside], itk[inside], atol=1e-4)


def test_no_zero_slice_for_any_real_source_size():
    for n in range(16, 65):                             # the real data's slice counts, to the 32-slice grid
        assert data.resize_linear(np.ones((2, 2, n), np.float32), (2, 2, 32)).min() == 1
        assert data.resize_nearest(np.ones((2, 2, n), np.uint8), (2, 2, 32)).min() == 1
    for n in range(128, 257, 8):                        # in plane, to 192
        assert data.resize_linear(np.ones((n, 2, 2), np.float32), (192, 2, 2)).min() == 1


# ---------------------------------------------------------------- the cache

def test_cache_reused_and_rebuilt(tiny_root, tmp_path):
    split = copy_split(tiny_root, tmp_path)
    logs = []
    paths = data.prepare(split, tmp_path / "cache", GRID, log=logs.append)
    assert "3 preprocessed" in logs[-1]
    stamps = [p.stat().st_mtime_ns for p in paths]
    data.prepare(split, tmp_path / "cache", GRID, log=logs.append)
    assert "0 preprocessed, 3 from the cache" in logs[-1]
    assert stamps == [p.stat().st_mtime_ns for p in paths]
    # an input changes: that case alone is rebuilt
    zadc = data.discover(split)[1].zadc
    array, geometry = data.read_image(zadc)
    data.write_image(array * 0.5, geometry, zadc)
    data.prepare(split, tmp_path / "cache", GRID, log=logs.append)
    assert "1 preprocessed, 2 from the cache" in logs[-1]
    # a parameter changes: everything is rebuilt
    other = data.prepare(split, tmp_path / "cache", (32, 32, 8), log=logs.append)
    assert "3 preprocessed" in logs[-1] and data.load_cached(other[0])["image"].shape == (2, 32, 32, 8)


def test_cache_rebuilt_after_preprocessing_version_change(tiny_root, tmp_path, monkeypatch):
    split = copy_split(tiny_root, tmp_path)
    data.prepare(split, tmp_path / "cache", GRID)
    monkeypatch.setattr(data, "PREPROCESS_VERSION", data.PREPROCESS_VERSION + 1)
    logs = []
    data.prepare(split, tmp_path / "cache", GRID, log=logs.append)
    assert "3 preprocessed" in logs[-1]


# ---------------------------------------------------------------- bad input: everything named at once

def test_every_broken_case_named_in_one_error(tiny_root, tmp_path):
    root = synthetic.synthesize(tmp_path / "bad", 6, 0, seed=9, size_range=TINY)
    split = root / TRAIN
    cases = data.discover(split)
    # 1: ZADC of another spacing
    a, g = data.read_image(cases[0].zadc)
    data.write_image(a, data.Geometry.of(g.size, np.array(g.spacing) * 1.5, g.origin, g.direction), cases[0].zadc)
    # 2: NaN voxels in the ADC
    a, g = data.read_image(cases[1].adc)
    a[0, 0, 0] = np.nan
    data.write_image(a, g, cases[1].adc)
    # 3: label values other than 0/1
    a, g = data.read_image(cases[2].label)
    a[1, 1, 1] = 2
    data.write_image(a, g, cases[2].label)
    # 4: an unreadable file
    cases[3].adc.write_bytes(b"not an image")
    # 5: a label of another size
    a, g = data.read_image(cases[4].label)
    data.write_image(a[:-1], data.Geometry.of(a[:-1].shape, g.spacing, g.origin, g.direction), cases[4].label)
    with pytest.raises(data.DataError) as err:
        data.prepare(split, tmp_path / "cache", GRID)
    msg = str(err.value)
    assert "\n" not in msg and "5 problem(s)" in msg
    assert "MGHNICU_001-VISIT_01: Zmap_MGHNICU_001-VISIT_01-ADC_smooth2mm_clipped10.mha and " \
           "MGHNICU_001-VISIT_01-ADC_ss.mha differ in spacing" in msg
    assert "MGHNICU_002-VISIT_01-ADC_ss.mha: 1 NaN/Inf voxels" in msg
    assert "MGHNICU_003-VISIT_01_lesion.mha: label values other than 0/1, e.g. [2]" in msg
    # SimpleITK's own words, without its C++ source location or the file's folder
    assert "MGHNICU_004-VISIT_01-ADC_ss.mha: unreadable (Unable to determine ImageIO reader for " \
           "MGHNICU_004-VISIT_01-ADC_ss.mha)" in msg and ".cxx" not in msg and "1ADC_ss/" not in msg
    assert "MGHNICU_005-VISIT_01_lesion.mha and MGHNICU_005-VISIT_01-ADC_ss.mha differ in size" in msg
    assert "MGHNICU_006" not in msg


def test_missing_partners_and_stray_files_named(tiny_root, tmp_path):
    split = copy_split(tiny_root, tmp_path)
    (split / "2Z_ADC" / "Zmap_MGHNICU_002-VISIT_01-ADC_smooth2mm_clipped10.mha").unlink()
    (split / "3LABEL" / "MGHNICU_003-VISIT_01_lesion.mha").unlink()
    (split / "1ADC_ss" / "notes.txt").write_text("x")
    with pytest.raises(data.DataError) as err:
        data.discover(split)
    msg = str(err.value)
    assert "MGHNICU_002-VISIT_01: missing 2Z_ADC/Zmap_MGHNICU_002-VISIT_01-ADC_smooth2mm_clipped10.mha" in msg
    assert "MGHNICU_003-VISIT_01: missing 3LABEL/MGHNICU_003-VISIT_01_lesion.mha" in msg
    assert "1ADC_ss/notes.txt: not a BONBID-HIE adc file name" in msg


def test_empty_split_and_missing_folder(tmp_path):
    for folder in data.FOLDERS.values():
        (tmp_path / "empty" / folder).mkdir(parents=True)
    with pytest.raises(data.DataError, match="no cases \\(an empty split\\)"):
        data.discover(tmp_path / "empty")
    shutil.rmtree(tmp_path / "empty" / "3LABEL")
    with pytest.raises(data.DataError, match="missing folder 3LABEL/"):
        data.discover(tmp_path / "empty")


# ---------------------------------------------------------------- the dataset and augmentation

def test_dataset_without_augmentation_returns_the_cache(cached):
    image, label, affine = data.HIEDataset(cached)[1]
    c = data.load_cached(cached[1])
    assert torch.equal(image, torch.from_numpy(c["image"])) and torch.equal(label, torch.from_numpy(c["label"]).float())
    assert np.array_equal(affine.numpy(), c["grid"].affine_ras())      # for TorchAugment's millimetres


def test_dataset_names_a_bad_augmentation(cached):
    with pytest.raises(ValueError, match=r"augment: expected None or a callable \(image, label, affine\) -> "
                                         r"\(image, label\), got True"):
        data.HIEDataset(cached, augment=True)


def test_dataset_checks_each_label_on_the_host(tmp_path, cached):
    c = data.load_cached(cached[0])
    meta = {"base": "x", "key": "x", "native": asdict(c["native"]), "grid": asdict(c["grid"])}
    path = tmp_path / "bad.npz"
    label = c["label"].copy()
    label[0, 0, 0, 0] = 2
    np.savez(path, image=c["image"], label=label, meta=np.array(json.dumps(meta)))
    with pytest.raises(data.DataError, match=r"bad.npz: expected label values 0 and 1, got \[0, 2\]"):
        data.HIEDataset([path])[0]


def centroid(m):
    return np.argwhere(m).mean(0)


def test_augmentation_keeps_image_and_label_aligned(tmp_path, cached):
    # an image whose channels are the label itself: after any draw, thresholding the
    # image must give back the label, wherever the spatial transforms moved it
    c = data.load_cached(cached[2])
    label = np.zeros((1, *GRID), np.uint8)
    label[0, 14:30, 20:34, 4:12] = 1
    label[0, 30:36, 10:16, 9:14] = 1
    path = tmp_path / "aligned.npz"
    meta = {"base": "x", "key": "x", "native": asdict(c["native"]), "grid": asdict(c["grid"])}
    np.savez(path, image=np.concatenate([label, label]).astype(np.float32), label=label,
             meta=np.array(json.dumps(meta)))
    ds = data.HIEDataset([path], augment=TorchIOAugment())
    torch.manual_seed(0)
    moved = 0
    for _ in range(10):
        image, aug_label, _ = ds[0]
        assert image.shape == (2, *GRID) and aug_label.shape == (1, *GRID)
        assert set(aug_label.unique().tolist()) <= {0.0, 1.0}
        lab = aug_label[0].numpy() > 0.5
        for ch in image.numpy():
            assert dice(ch > 0.5, lab) >= 0.8          # anisotropy blurs the image, not the label (scalars_only)
            assert np.abs(centroid(ch > 0.5) - centroid(lab)).max() < 1.0   # anisotropy: label nearest, image linear
        moved += np.abs(centroid(lab) - centroid(label[0])).max() > 0.2
    assert moved >= 2            # the spatial transforms did move the label


def test_spec3_augmentation_parameters():
    # SPEC 3, transform by transform: the paper's values, TorchIO's defaults for the elastic one
    import torchio as tio
    noise, anisotropy, blur, gamma, elastic = torchio_transforms().transforms
    assert all(t.probability == 0.5 for t in (noise, anisotropy, blur, gamma, elastic))
    assert isinstance(noise, tio.RandomNoise) and noise.mean_range == (0, 0) and noise.std_range == (0, 0.01)
    assert isinstance(anisotropy, tio.RandomAnisotropy) and anisotropy.downsampling_range == (1.2, 2.0)
    assert anisotropy.axes == (0, 1, 2)
    assert isinstance(blur, tio.RandomBlur) and blur.std_ranges == (0, 0.5) * 3
    assert isinstance(gamma, tio.RandomGamma) and gamma.log_gamma_range == (-0.1, 0.1)
    assert isinstance(elastic, tio.RandomElasticDeformation)
    assert elastic.num_control_points == (7, 7, 7) and elastic.max_displacement == (7.5, 7.5, 7.5)
    assert elastic.num_locked_borders == 2 and elastic.label_interpolation == "nearest"


def test_write_and_read_errors(tmp_path):
    g = data.Geometry.of((4, 4, 4), (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(ValueError, match="array shape \\(4, 4, 3\\) does not match geometry size \\(4, 4, 4\\)"):
        data.write_image(np.zeros((4, 4, 3)), g, tmp_path / "a.mha")
    with pytest.raises(ValueError, match="expected a .mha, .nii or .nii.gz file name, got suffix '.png'"):
        data.write_image(np.zeros((4, 4, 4)), g, tmp_path / "a.png")
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    with pytest.raises(ValueError, match="expected a 3-D image, got shape \\(4, 4\\)"):
        data.read_image(tmp_path / "flat.nii")


def test_an_adc_given_as_the_zadc_is_refused(tiny_root, tmp_path, capsys):
    # ADC about 0-3500, ZADC clipped to +-10: the two maps cannot be confused by their values
    case = data.discover(tiny_root / VAL)[0]
    for adc, zadc, fragment in (
            (case.adc, case.adc, "given as both the ADC and the ZADC: expected two files"),
            (case.adc, tmp_path / "copy.mha", f"copy.mha: expected a ZADC map (z-scores clipped to ±10), got values up "
                                              f"to"),
            (case.zadc, case.adc, "expected an ADC map (>= 0, background 0), got values from")):
        if not Path(zadc).exists():
            shutil.copyfile(case.adc, zadc)
        with pytest.raises(data.DataError, match="is it the|expected two files") as err:
            data.load_case(data.Case(case.base, adc, zadc))
        assert fragment in str(err.value)
    assert data.load_case(data.Case(case.base, case.adc, case.zadc))[1].max() <= 10     # the real pair passes
