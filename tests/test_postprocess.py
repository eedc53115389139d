"""SPEC 5b, 9 and 10 at the command line: losses with parameters in train.py and the study,
blob losses in the study, post-processing (--threshold, --min-lesion) in predict, evaluate
and the study, the augmentation's space (SPEC 3)."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import data
import evaluate
import hie_ref
import plumbing
import train
from lesions import remove_small_lesions
from user_losses import run_name

SIZE = ["--size", "16", "16", "8"]


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def one_line(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


# --------------------------------------------------------------------------- post-processing

def test_min_lesion_drops_exactly_the_small_components():
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.random((18, 16, 9)) < 0.12
        spacing, min_volume = (0.8, 1.1, 2.5), float(rng.uniform(2, 12))
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        volumes = ndimage.sum(mask, labels, range(1, n + 1)) * np.prod(spacing)
        kept = np.isin(labels, 1 + np.flatnonzero(volumes >= min_volume))
        assert np.array_equal(remove_small_lesions(mask, spacing, min_volume), kept)
    assert np.array_equal(remove_small_lesions(mask, spacing, 0.0), mask)


def test_a_lower_threshold_gives_a_superset():
    prob = np.random.default_rng(2).random((12, 12, 6))
    for min_lesion in (0.0, 3.0):
        high = evaluate.post_process(prob, (1, 1, 1), 0.6, min_lesion)
        low = evaluate.post_process(prob, (1, 1, 1), 0.4, min_lesion)
        assert (low | high).sum() == low.sum() and low.sum() > high.sum()


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory):
    """One tiny run with a loss given with its parameters."""
    out = tmp_path_factory.mktemp("pp") / "run"
    assert train.main(["--loss", "tversky_hdt(a=0.7, b = 0.3)", "--data", str(tiny_root), "--out", str(out), "--cache",
                       str(out.parent / "cache"), "--epochs", "1", "--batch-size", "2", *SIZE, "--device", "cpu",
                       "--prior", "0.3"]) == 0
    return out


def test_a_loss_with_parameters_is_recorded_and_resumed_by_them(run, tiny_root, capsys):
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == "tversky_hdt(a=0.7,b=0.3)"                       # one spelling
    assert config["loss_parameters"] == {"a": 0.7, "b": 0.3, "alpha": 0.3, "beta": 0.7, "hdt_alpha": 2.0}
    assert run_name("tversky_hdt(a=0.7, b=0.3)") == "tversky_hdt-a=0.7-b=0.3"  # a name a shell takes as it is
    argv = ["--data", str(tiny_root), "--out", str(run), "--cache", str(run.parent / "cache"), "--epochs", "2",
            "--batch-size", "2", *SIZE, "--device", "cpu", "--prior", "0.3", "--resume"]
    one_line(capsys, train.main(["--loss", "tversky_hdt(a=0.6,b=0.4)", *argv]), "loss 'tversky_hdt(a=0.7,b=0.3)' -> "
             "'tversky_hdt(a=0.6,b=0.4)'")
    one_line(capsys, train.main(["--loss", "tversky_hdt(a=0.7,gamma=2)", *argv]), "of a, b, alpha, beta, hdt_alpha")
    one_line(capsys, train.main(["--loss", "tversky(alpha=x)", *argv]), "alpha: expected a number, got 'x'")


def test_predict_and_evaluate_post_process(run, tiny_root, tmp_path, capsys):
    ckpt = str(run / "best.pt")
    raw, pp = tmp_path / "raw", tmp_path / "pp"
    base = ["predict", "--checkpoint", ckpt, "--data", str(tiny_root), "--device", "cpu"]
    assert hie_ref.main([*base, "--out", str(raw), "--probabilities"]) == 0
    assert hie_ref.main([*base, "--out", str(pp), "--threshold", "0.4", "--min-lesion", "30", "--format",
                         "nii.gz"]) == 0
    for case in data.discover(tiny_root / "BONBID2023_Val"):
        prob, geometry = data.read_image(raw / f"{case.base}_probability.mha")
        mask = data.read_image(pp / f"{case.base}_lesion.nii.gz")[0].astype(bool)
        assert np.array_equal(mask, remove_small_lesions(prob > 0.4, geometry.spacing, 30.0))
    one_line(capsys, hie_ref.main([*base, "--out", str(raw)]), "holds 2 mask(s) already", "--force")
    assert hie_ref.main([*base, "--out", str(raw), "--force", "--min-lesion", "30"]) == 0
    assert hie_ref.main(["evaluate", "--checkpoint", ckpt, "--device", "cpu", "--min-lesion", "30"]) == 0
    rows = read(run / "eval_val_native_pp-min_lesion=30.csv")
    assert len(rows) == 2 and {r["style"] for r in rows} == {"voxel"}


def test_predict_names_missing_flags(run, tiny_root, tmp_path, capsys):
    case = data.discover(tiny_root / "BONBID2023_Val")[0]
    base = ["predict", "--checkpoint", str(run / "best.pt"), "--device", "cpu"]
    one_line(capsys, hie_ref.main([*base, "--adc", str(case.adc), "--out", str(tmp_path / "m.mha")]),
             "--zadc is required with --adc")
    one_line(capsys, hie_ref.main([*base, "--adc", str(case.adc), "--zadc", str(case.zadc)]),
             "--out is required with --adc")
    one_line(capsys, hie_ref.main([*base, "--data", str(tiny_root)]), "--out is required with --data")


# --------------------------------------------------------------------------- the study: blob, parameters, post-processing

def test_study_with_a_blob_loss_parameters_and_a_post_processed_row(tiny_root, tmp_path):
    out = tmp_path / "study"
    argv = ["study", "--folds", "2", "--epochs", "1", "--losses", "blob_dice", "tversky(alpha=0.5, beta=0.5)",
            "--data", str(tiny_root), "--out", str(out), *SIZE, "--cache", str(tmp_path / "cache"), "--device", "cpu",
            "--min-lesion", "20"]
    assert hie_ref.main(argv) == 0
    names = {"blob_dice", "blob_dice+pp(min_lesion=20)", "tversky(alpha=0.5,beta=0.5)",
             "tversky(alpha=0.5,beta=0.5)+pp(min_lesion=20)", "zadc_threshold"}
    rows = read(out / "cases.csv")
    assert {r["loss"] for r in rows} == names
    assert (out / "runs" / "tversky-alpha=0.5-beta=0.5" / "seed0" / "fold0" / "best.pt").exists()
    # the post-processed row scores the same predictions: never more predicted voxels, never more false lesions
    raw = {r["case"]: r for r in rows if r["loss"] == "blob_dice"}
    for r in (r for r in rows if r["loss"] == "blob_dice+pp(min_lesion=20)"):
        assert int(r["pred_voxels"]) <= int(raw[r["case"]]["pred_voxels"])
        assert int(r["false_lesions"]) <= int(raw[r["case"]]["false_lesions"])
    pairs = {(c["loss_a"], c["loss_b"]) for c in read(out / "comparisons.csv")}
    assert ("blob_dice", "blob_dice+pp(min_lesion=20)") in pairs or ("blob_dice+pp(min_lesion=20)", "blob_dice") in pairs
    text = (out / "study.md").read_text()
    assert "## Post-processing" in text and "- blob_dice vs blob_dice+pp(min_lesion=20) on Dice: **cannot tell: 1 seed(s)" \
        in text.split("## Post-processing")[1]
    families = {(c["loss_a"], c["loss_b"]): c["family"] for c in read(out / "comparisons.csv")}
    assert families["blob_dice", "blob_dice+pp(min_lesion=20)"] == "post-processing"
    assert families["blob_dice", "tversky(alpha=0.5,beta=0.5)"] == "losses"


# --------------------------------------------------------------------------- SPEC 3: the augmentation's space

def test_augment_space_default_is_mm_and_voxel_is_torchio_on_1mm_voxels():
    from augment import make_augment
    assert train.parser().parse_args(["--loss", "dice"]).augment_space == "mm"
    pytest.importorskip("torchio")
    image = torch.randn(1, 2, 16, 16, 8)
    label = (torch.rand(1, 1, 16, 16, 8) > 0.8).float()
    oblique = torch.from_numpy(data.Geometry.of((16, 16, 8), (0.7, 0.7, 3.0), (5.0, -3.0, 2.0),
                                                np.eye(3)).affine_ras())[None]
    torch.manual_seed(0)                                # a draw with spatial transforms: mm and voxels differ
    voxel = make_augment("torchio", "voxel")(image, label, oblique)
    torch.manual_seed(0)
    reference = make_augment("torchio", "mm")(image, label, torch.eye(4, dtype=torch.float64)[None])
    torch.manual_seed(0)
    in_mm = make_augment("torchio", "mm")(image, label, oblique)
    torch.testing.assert_close(voxel[0], reference[0])
    torch.testing.assert_close(voxel[1], reference[1])
    assert not torch.allclose(voxel[0], in_mm[0], atol=1e-3)


def test_units_voxel_on_the_grid_is_how_monai_measures_without_a_spacing(run, tiny_root, capsys):
    # the paper's metrics "implemented through MONAI": spacing=None, distances in voxels of the grid arrays
    warnings = pytest.importorskip("warnings")
    monai_metrics = pytest.importorskip("monai.metrics")
    import evaluate
    # one epoch predicts nothing: the head's bias moved so that ~5 % of the voxels are lesion, for surfaces to measure
    saved = torch.load(run / "best.pt", weights_only=True)
    logits = torch.cat([evaluate.predict_logits(evaluate.model_from_checkpoint(saved, "cpu"), data.load_cached(f)["image"],
                                                torch.device("cpu")).flatten()
                        for f in data.prepare(tiny_root / "BONBID2023_Val", run.parent / "cache", (16, 16, 8))])
    saved["model"]["head.bias"] -= torch.quantile(logits, 0.95)
    (run.parent / "biased").mkdir(exist_ok=True)
    torch.save(saved, run.parent / "biased" / "best.pt")
    ckpt = str(run.parent / "biased" / "best.pt")
    base = ["evaluate", "--checkpoint", ckpt, "--device", "cpu", "--grid", "--cache", str(run.parent / "cache")]
    assert hie_ref.main(base) == 0 and hie_ref.main([*base, "--units", "voxel", "--tolerance", "1"]) == 0
    run = run.parent / "biased"
    mm, voxel = read(run / "eval_val_grid.csv"), read(run / "eval_val_grid_units-voxel.csv")
    assert [r["dice"] for r in voxel] == [r["dice"] for r in mm]                 # Dice has no unit
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
    checked = 0
    for (case, prob, label, spacing, _), row, row_mm in zip(
            evaluate.case_probabilities(ckpt, tiny_root, "val", grid_only=True, cache=run.parent / "cache"), voxel, mm):
        p, g = one_hot(prob > 0.5), one_hot(label > 0.5)
        assert row["case"] == case and max(spacing) > 1.5                       # the grid is anisotropic here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            msd = 0.5 * (monai_metrics.compute_average_surface_distance(p, g).item()
                         + monai_metrics.compute_average_surface_distance(g, p).item())
            nsd = monai_metrics.compute_surface_dice(p, g, [1.0]).item()
        assert float(row["msd"]) == pytest.approx(msd, rel=1e-6) and float(row["nsd"]) == pytest.approx(nsd, rel=1e-6)
        assert float(row["msd"]) != pytest.approx(float(row_mm["msd"]))         # mm and voxels differ
        checked += 1
    assert checked == 2
    assert json.loads((run / "eval_val_grid_units-voxel.json").read_text())["scored"]["units"] == "voxel"
    one_line(capsys, hie_ref.main(base), "eval_val_grid.csv exists: --force")   # nothing rewritten silently
    with pytest.raises(plumbing.UsageError, match="--units: expected one of mm, voxel, got 'cm'"):
        evaluate.score_case(np.ones((2, 2, 2), bool), np.ones((2, 2, 2), bool), (1, 1, 1), units="cm")
    assert hie_ref.main([*base, "--force"]) == 0


def test_the_lesion_line_gives_sensitivity_pooled_and_per_case():
    from metrics import summarize
    import evaluate
    # case a: 3 lesions, all found; case b: 1 lesion, missed; case c: no lesion (NaN, left out of the mean)
    rows = [{"pred_voxels": 9, "target_voxels": 9, "lesions": n, "detected": d, "missed": n - d, "false_lesions": 0,
             "lesion_sensitivity": d / n if n else math.nan, "lesion_f1": 1.0, "cc_dice": 1.0}
            for n, d in ((3, 3), (1, 0), (0, 0))]
    line = hie_ref.lesion_line(summarize(rows, evaluate.LESION_METRICS))
    assert line.startswith("lesions 4, 3 detected: sensitivity 0.7500 pooled, 0.5000 the mean over cases "
                           "(1 case(s) without a lesion left out)"), line
