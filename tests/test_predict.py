"""From trained models to masks (predict.py): a split, an ensemble, test-time flips, the
challenge's container layout, training curves."""
import csv
import shutil

import numpy as np
import pytest
import torch

import data
import hie_ref
import predict
import train

SIZE = ["--size", "16", "16", "8"]


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    """Two tiny runs of different seeds, one epoch each."""
    out = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        assert train.main(["--loss", "dice", "--data", str(tiny_root), "--out", str(out / f"seed{seed}"), "--cache",
                           str(out / "cache"), "--epochs", "1", "--batch-size", "2", "--seed", str(seed), *SIZE,
                           "--device", "cpu"]) == 0
    return out


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_split_predicted_then_scored(runs, tiny_root, tmp_path):
    out = tmp_path / "masks"
    assert hie_ref.main(["predict", "--checkpoint", str(runs / "seed0" / "best.pt"), "--data", str(tiny_root),
                         "--split", "val", "--out", str(out), "--device", "cpu", "--probabilities"]) == 0
    cases = data.discover(tiny_root / "BONBID2023_Val")
    for case in cases:
        mask, geometry = data.read_image(out / f"{case.base}_lesion.mha")
        prob, _ = data.read_image(out / f"{case.base}_probability.mha")
        assert geometry == data.read_image(case.adc)[1] and set(np.unique(mask)) <= {0, 1}
        assert prob.dtype == np.float32 and np.array_equal(mask.astype(bool), prob > 0.5)
    assert hie_ref.main(["score", "--pred", str(out), "--target", str(tiny_root / "BONBID2023_Val")]) == 0
    assert sorted(r["case"] for r in read(out / "scores_voxel.csv")) == sorted(c.base for c in cases)


def test_a_test_folder_without_labels(runs, tiny_root, tmp_path):
    test = shutil.copytree(tiny_root / "BONBID2023_Val", tmp_path / "test")
    shutil.rmtree(test / "3LABEL")
    assert hie_ref.main(["predict", "--checkpoint", str(runs / "seed0" / "best.pt"), "--data", str(test),
                         "--out", str(tmp_path / "m"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "m").glob("*_lesion.mha"))) == 2


def test_an_ensemble_is_the_mean_of_its_members_probabilities(runs, tiny_root, tmp_path):
    maps = {}
    for name, ckpts in (("a", [runs / "seed0" / "best.pt"]), ("b", [runs / "seed1" / "best.pt"]), ("ab", [runs])):
        assert hie_ref.main(["predict", "--checkpoint", *map(str, ckpts), "--data", str(tiny_root), "--out",
                             str(tmp_path / name), "--device", "cpu", "--probabilities"]) == 0
        maps[name] = {p.name: data.read_image(p)[0] for p in (tmp_path / name).glob("*_probability.mha")}
    assert len(maps["ab"]) == 2
    for case, prob in maps["ab"].items():
        np.testing.assert_allclose(prob, (maps["a"][case] + maps["b"][case]) / 2, atol=1e-6)
        mask = data.read_image(tmp_path / "ab" / case.replace("_probability", "_lesion"))[0]
        assert np.array_equal(mask.astype(bool), prob > 0.5)


def test_members_of_other_grids_are_refused(runs, tmp_path, capsys):
    ckpt = torch.load(runs / "seed0" / "best.pt", weights_only=True)
    ckpt["grid"] = [24, 24, 8]
    torch.save(ckpt, tmp_path / "other.pt")
    code = hie_ref.main(["predict", "--checkpoint", str(runs / "seed0" / "best.pt"), str(tmp_path / "other.pt"),
                         "--data", str(runs), "--out", str(tmp_path / "m"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "one grid and preprocessing" in err
    assert "grid 16x16x8" in err and "grid 24x24x8" in err and "other.pt" in err


def test_runs_of_several_losses_are_an_ensemble_only_when_asked(runs, tiny_root, tmp_path, capsys):
    # a folder such as runs/ holds every loss's runs: predict names them and asks for --mix
    other = tmp_path / "runs"
    shutil.copytree(runs / "seed0", other / "dice")
    ckpt = torch.load(runs / "seed1" / "best.pt", weights_only=True)
    ckpt["config"]["loss"] = "tversky"
    (other / "tversky").mkdir()
    torch.save(ckpt, other / "tversky" / "best.pt")
    argv = ["predict", "--checkpoint", str(other), "--data", str(tiny_root), "--out", str(tmp_path / "m"),
            "--device", "cpu"]
    code = hie_ref.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "expected the runs of one loss, got 2 losses: dice (1: " in err
    assert "tversky (1: " in err and "--mix" in err and not (tmp_path / "m").exists()
    assert hie_ref.main(argv + ["--mix"]) == 0 and "ensemble of 2" in capsys.readouterr().out


class Ramp(torch.nn.Module):
    """A 'model' whose logits ignore the input: a ramp along x, so the flips' mean is known."""

    def forward(self, x):
        ramp = torch.linspace(-3, 3, x.shape[2]).view(1, 1, -1, 1, 1)
        return ramp.expand(x.shape[0], 1, *x.shape[2:]).clone()


def test_tta_is_the_mean_over_the_eight_flips():
    image = np.random.default_rng(0).standard_normal((2, 8, 6, 4)).astype(np.float32)
    members = [("ramp", Ramp(), (8, 6, 4))]
    plain = predict.probability(members, image, "cpu")
    ramp = 1 / (1 + np.exp(-np.linspace(-3, 3, 8)))
    np.testing.assert_allclose(plain[:, 0, 0], ramp, rtol=1e-6)
    # four of the eight flips mirror x: the mean is (sigmoid(r) + sigmoid(r reversed)) / 2 = 1/2 everywhere
    np.testing.assert_allclose(predict.probability(members, image, "cpu", tta=True), 0.5, rtol=1e-6)
    assert len(predict.FLIPS) == 8 and len(set(predict.FLIPS)) == 8


def gc_layout(case, root, adc_names=("3f2a.mha",)):
    for folder, source, names in ((predict.GC_ADC, case.adc, adc_names), (predict.GC_ZADC, case.zadc, ("9c1d.mha",))):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(source, root / folder / name)


def test_grand_challenge_layout(runs, tiny_root, tmp_path, capsys):
    case = data.discover(tiny_root / "BONBID2023_Val")[0]
    gc_layout(case, tmp_path / "input")
    argv = ["predict", "--checkpoint", str(runs / "seed0" / "best.pt"), "--grand-challenge", "--input",
            str(tmp_path / "input"), "--output", str(tmp_path / "output"), "--device", "cpu"]
    assert hie_ref.main(argv) == 0
    overlay, geometry = data.read_image(tmp_path / "output" / predict.GC_OUTPUT)
    assert geometry == data.read_image(case.adc)[1] and set(np.unique(overlay)) <= {0, 1}
    expected = data.read_image(tmp_path / "single.mha")[0] if hie_ref.main(
        ["predict", "--checkpoint", str(runs / "seed0" / "best.pt"), "--adc", str(case.adc), "--zadc", str(case.zadc),
         "--out", str(tmp_path / "single.mha"), "--device", "cpu"]) == 0 else None
    assert np.array_equal(overlay, expected)
    # a missing or a doubled input names its folder
    shutil.rmtree(tmp_path / "input")
    gc_layout(case, tmp_path / "input", adc_names=("a.mha", "b.mha"))
    capsys.readouterr()
    assert hie_ref.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "skull-stripped-adc-brain-mri: expected exactly one image file, found 2 (a.mha, b.mha)" in err
    shutil.rmtree(tmp_path / "input" / predict.GC_ZADC)
    shutil.rmtree(tmp_path / "input" / predict.GC_ADC)
    assert hie_ref.main(argv) == 2
    assert "skull-stripped-adc-brain-mri: expected exactly one image file, found no such folder" in \
        capsys.readouterr().err


def test_curves_of_each_run_and_overlaid(runs, tmp_path):
    png = (runs / "seed0" / "curves.png").read_bytes()                 # drawn by train.py at the end of the run
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    assert hie_ref.main(["curves", str(runs / "seed0"), str(runs / "seed1"), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hie_ref.main(["curves", str(tmp_path)]) == 2
    assert hie_ref.main(["curves", str(runs / "seed0"), "--out", str(tmp_path / "c.jpg")]) == 0
    assert (tmp_path / "c.jpg").read_bytes()[:3] == b"\xff\xd8\xff"               # a JPEG under a .jpg name
    assert hie_ref.main(["curves", str(runs / "seed0"), "--out", str(tmp_path / "c.xyz")]) == 2


def test_curves_overwrite_nothing_without_force(runs, tmp_path, monkeypatch, capsys):
    own = (runs / "seed0" / "curves.png").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert hie_ref.main(["curves", str(runs / "seed0"), str(runs / "seed1")]) == 0       # several: ./curves.png
    assert (tmp_path / "curves.png").exists() and (runs / "seed0" / "curves.png").read_bytes() == own
    capsys.readouterr()
    for argv in (["curves", str(runs / "seed0"), str(runs / "seed1")],
                 ["curves", str(runs / "seed1"), "--out", "curves.png"]):
        code, err = hie_ref.main(argv), capsys.readouterr().err.strip()
        assert code == 2 and err.endswith("curves.png exists: --force to overwrite it, or --out elsewhere"), err
    assert hie_ref.main(["curves", str(runs / "seed1"), "--out", "curves.png", "--force"]) == 0
    assert hie_ref.main(["curves", str(runs / "seed0")]) == 0                            # a run's own, redrawn


def test_score_names_the_wrong_target_before_an_existing_scores_file(runs, tiny_root, tmp_path, capsys):
    out = tmp_path / "masks"
    assert hie_ref.main(["predict", "--checkpoint", str(runs / "seed0"), "--data", str(tiny_root), "--out", str(out),
                         "--device", "cpu"]) == 0
    assert hie_ref.main(["score", "--pred", str(out), "--target", str(tiny_root / "BONBID2023_Val")]) == 0
    capsys.readouterr()
    for target, fragment in ((tiny_root, f"a dataset root, expected one of its splits, e.g. "
                                         f"{tiny_root / 'BONBID2023_Val'}"),
                             (tiny_root / "BONBID2023_Train", "a label (MGHNICU_001-VISIT_01_lesion.mha) without a "
                                                              "prediction")):
        code, err = hie_ref.main(["score", "--pred", str(out), "--target", str(target)]), capsys.readouterr().err
        assert code == 2 and fragment in err and "exists" not in err, err      # not "scores_voxel.csv exists"
    code, err = hie_ref.main(["score", "--pred", str(out), "--target", str(tiny_root / "BONBID2023_Val")]), \
        capsys.readouterr().err
    assert code == 2 and "scores_voxel.csv exists: --force" in err


def test_predict_refuses_an_adc_given_as_the_zadc(runs, tiny_root, tmp_path, capsys):
    case = data.discover(tiny_root / "BONBID2023_Val")[0]
    shutil.copyfile(case.adc, tmp_path / "A.mha")
    code = hie_ref.main(["predict", "--checkpoint", str(runs / "seed0"), "--adc", str(case.adc), "--zadc",
                         str(tmp_path / "A.mha"), "--out", str(tmp_path / "m.mha"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "A.mha: expected a ZADC map (z-scores clipped to ±10)" in err
    assert "is it the ADC map?" in err and not (tmp_path / "m.mha").exists()


def test_no_case_is_scored_on_a_model_that_trained_on_it(tiny_root, tmp_path, capsys):
    import json
    # two runs, each trained on the cases the other is stopped on: a two-fold study in small
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_root / "BONBID2023_Train", swapped / "BONBID2023_Val")
    shutil.copytree(tiny_root / "BONBID2023_Val", swapped / "BONBID2023_Train")
    runs = {}
    for name, root in (("a", tiny_root), ("b", swapped)):
        runs[name] = tmp_path / "runs" / name
        assert train.main(["--loss", "dice", "--data", str(root), "--out", str(runs[name]), "--cache",
                           str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "2", *SIZE, "--device", "cpu"]) == 0
    recorded = torch.load(runs["a"] / "best.pt", weights_only=False)["state"]["cases"]
    trained_a = sorted(c.base for c in data.discover(tiny_root / "BONBID2023_Train"))
    assert recorded == {"train": trained_a, "val": sorted(c.base for c in data.discover(tiny_root / "BONBID2023_Val"))}
    # the old recipe: an ensemble of every fold model over every case; each case was trained on by a member
    argv = ["predict", "--checkpoint", str(tmp_path / "runs"), "--data", str(tiny_root), "--split", "all",
            "--device", "cpu"]
    assert hie_ref.main(argv + ["--out", str(tmp_path / "leak")]) == 2
    err = capsys.readouterr().err
    assert "5 case(s) to predict were trained on by an ensemble member" in err and trained_a[0] in err
    assert "--held-out" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "leak").exists()
    # the right recipe: each case by the members whose fold held it out
    assert hie_ref.main(argv + ["--out", str(tmp_path / "held"), "--held-out"]) == 0
    record = json.loads((tmp_path / "held" / "predictions.json").read_text())
    assert all(record[c]["members"] == [str(runs["b"] / "best.pt")] for c in trained_a)
    assert all(not r["trained_on"] for r in record.values())
    labels = ["--target", str(tmp_path / "labels")]
    shutil.copytree(tiny_root / "BONBID2023_Train" / data.FOLDERS["label"], tmp_path / "labels")
    for c in data.discover(tiny_root / "BONBID2023_Val"):
        shutil.copy(c.label, tmp_path / "labels")
    assert hie_ref.main(["score", "--pred", str(tmp_path / "held"), *labels]) == 0
    # meant (--allow-trained): predicted, recorded, and score refuses it unless told the same
    assert hie_ref.main(argv + ["--out", str(tmp_path / "meant"), "--allow-trained"]) == 0
    capsys.readouterr()
    assert hie_ref.main(["score", "--pred", str(tmp_path / "meant"), *labels]) == 2
    assert "were predicted by members that trained on them" in capsys.readouterr().err
    assert hie_ref.main(["score", "--pred", str(tmp_path / "meant"), *labels, "--allow-trained"]) == 0
