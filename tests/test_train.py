"""train.py and hie_ref.py end to end on a tiny synthetic set, the protocol's parts on toys, CLI errors."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import checkpoints
import data
import devices
import evaluate
import hie_ref
import losses
import plumbing
import synthetic
import train

SIZE = ["--size", "16", "16", "8"]
ROOT = Path(__file__).resolve().parent.parent


def train_args(tiny_root, out, *extra, epochs=2):
    return ["--loss", "tversky_hdt", "--data", str(tiny_root), "--out", str(out), "--cache", str(out.parent / "cache"),
            "--epochs", str(epochs), "--batch-size", "2", *SIZE, *extra]


def metrics_rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_train_evaluate_predict_end_to_end(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(tiny_root, out)) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "best.pt", "last.pt", "summary.json",
                                               "curves.png"}                  # curves drawn at the end too
    rows = metrics_rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == list(train.COLUMNS[:-1])
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 9e-4])          # ExponentialLR(0.9) per epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["stopped"] == "epoch limit"
    assert json.loads((out / "config.json").read_text())["grid"] == [16, 16, 8]

    assert hie_ref.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--device", "cpu"]) == 0
    with open(out / "eval_val_native.csv") as f:
        cases = list(csv.DictReader(f))
    assert [c["case"] for c in cases] == ["MGHNICU_501-VISIT_01", "MGHNICU_502-VISIT_01"]
    assert all(0 <= float(c["dice"]) <= 1 for c in cases)
    # the target voxel counts are the native labels', not the grid's
    native = data.read_image(data.discover(tiny_root / "BONBID2023_Val")[0].label)[0]
    assert int(cases[0]["target_voxels"]) == native.sum()
    assert hie_ref.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--grid", "--device", "cpu"]) == 0
    assert (out / "eval_val_grid.csv").exists() and (out / "eval_val_grid.json").exists()
    assert hie_ref.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--surfaces", "challenge", "--device", "cpu"]) == 0
    with open(out / "eval_val_native_challenge-2023.csv") as f:
        challenge = list(csv.DictReader(f))
    assert [c["dice"] for c in challenge] == [c["dice"] for c in cases]        # Dice does not depend on the surfaces
    lesion = lambda rows: [[r[k] for k in evaluate.LESION_COLUMNS] for r in rows]
    assert lesion(challenge) == lesion(cases)                                  # nor do the lesion-wise values
    from lesions import burden, burden_group
    first = data.discover(tiny_root / "BONBID2023_Val")[0]
    assert cases[0]["burden_group"] == burden_group(burden(native, data.read_image(first.adc)[0]))
    summary = json.loads((out / "eval_val_native.json").read_text())
    assert {"lesion_sensitivity", "lesion_f1", "false_lesions", "cc_dice"} <= set(summary)

    case = data.discover(tiny_root / "BONBID2023_Val")[1]
    mask_path = tmp_path / "mask.nii.gz"
    assert hie_ref.main(["predict", "--checkpoint", str(out / "best.pt"), "--adc", str(case.adc),
                         "--zadc", str(case.zadc), "--out", str(mask_path), "--device", "cpu"]) == 0
    mask, ref = sitk.ReadImage(str(mask_path)), sitk.ReadImage(str(case.adc))
    assert mask.GetSize() == ref.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), ref.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


# On CUDA cuDNN picks nondeterministic kernels unless asked: there the run is --deterministic.
REPEATABLE = ["--deterministic"] if torch.cuda.is_available() else []


@pytest.mark.parametrize("augment,workers", [("torchio", "0"), ("torch", "0"), ("torchio", "2")])
def test_resume_after_a_kill_gives_the_same_metrics(tiny_root, tmp_path, monkeypatch, augment, workers):
    # the torch augmentation draws from torch's global RNG, whose state the checkpoint keeps;
    # loader workers are seeded each epoch from the shuffling generator, which it keeps too
    straight = tmp_path / "straight"
    flags = ["--augment", augment, "--workers", workers, *REPEATABLE]
    assert train.main(train_args(tiny_root, straight, *flags, epochs=3)) == 0
    assert json.loads((straight / "config.json").read_text())["augment"] == augment

    killed = tmp_path / "killed"
    real, calls = train.train_epoch, []

    def dies_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt                   # killed mid-epoch: nothing of epoch 2 is saved
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", dies_in_epoch_2)
    assert train.main(train_args(tiny_root, killed, *flags, epochs=3)) == 130
    assert [r["epoch"] for r in metrics_rows(killed / "metrics.csv")] == ["1"]
    monkeypatch.setattr(train, "train_epoch", real)
    assert train.main(train_args(tiny_root, killed, *flags, "--resume", epochs=3)) == 0
    assert metrics_rows(killed / "metrics.csv") == metrics_rows(straight / "metrics.csv")
    a, b = torch.load(straight / "last.pt", weights_only=True), torch.load(killed / "last.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


# ---------------------------------------------------------------- the protocol's parts on toys

class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[-1.0, 2.0], [0.5, -3.0]]))

    def forward(self, x):
        return (x * self.w.sum()).sum(1, keepdim=True)


def test_l1_penalty_by_hand():
    assert train.l1_penalty(Toy()).item() == pytest.approx(1 + 2 + 0.5 + 3)


def test_l1_term_and_clipping_in_a_training_step():
    x = torch.ones(2, 2, 2, 2, 2)
    y = torch.ones(2, 1, 2, 2, 2)
    zero_loss = lambda logits, target: (logits * 0).sum()
    # with a zero data loss, one SGD step of lr 1 moves each weight by l1 * sign(w)
    model = Toy()
    before = model.w.detach().clone()
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    train.train_epoch(model, [(x, y, None)], zero_loss, sgd, torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False),
                      l1=0.01, clip=100)
    torch.testing.assert_close(before - model.w.detach(), 0.01 * before.sign())
    # a huge gradient is clipped to total norm `clip`
    model = Toy()
    before = model.w.detach().clone()
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    huge = lambda logits, target: 1e6 * logits.sum()
    train.train_epoch(model, [(x, y, None)], huge, sgd, torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False),
                      l1=0, clip=0.5)
    assert (before - model.w.detach()).norm().item() == pytest.approx(0.5, rel=1e-5)


@pytest.mark.filterwarnings("ignore:Detected call of")   # train_epoch is stubbed: no optimizer step
def test_early_stopping_keeps_the_best(tiny_root, tmp_path, monkeypatch):
    dice = iter([0.1, 0.3, 0.2, 0.25, 0.29, 0.3, 0.5, 0.9])
    monkeypatch.setattr(train, "train_epoch", lambda *a, **k: (0.5, 0))
    monkeypatch.setattr(train, "validate", lambda *a: {"val_loss": 0.5, "val_grid_dice": next(dice),
                                                       "val_grid_msd": 1.0, "val_grid_nsd": 0.5})
    out = tmp_path / "early"
    assert train.main(train_args(tiny_root, out, "--patience", "4", epochs=20)) == 0
    summary = json.loads((out / "summary.json").read_text())
    # best 0.3 at epoch 2; epochs 3-6 bring nothing better (0.3 is not better than 0.3)
    assert (summary["best_epoch"], summary["epochs"]) == (2, 6) and "early stopping" in summary["stopped"]
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 6


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path, monkeypatch, capsys):
    real, calls = train.train_epoch, []

    def nan_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("the loss became nan")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", nan_in_epoch_2)
    out = tmp_path / "nan"
    assert train.main(train_args(tiny_root, out, epochs=3)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "epoch 2: the loss became nan" in err
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


# ---------------------------------------------------------------- command-line errors

def one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


def test_cli_errors(tiny_root, tmp_path, capsys):
    one_line_error(capsys, train.main(["--loss", "hausdorff"]),
                   "--loss: expected one of dice, dice_focal, tversky, hdt, dice_focal_hdt, tversky_hdt, blob_dice, "
                   "blob_tversky_hdt, optionally with parameters as NAME(key=value, ...), or your own as "
                   "path/to/file.py:Name or module:name; got 'hausdorff'")
    one_line_error(capsys, train.main(["--loss", "dice", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]),
                   "nowhere: no such directory")
    (tmp_path / "malformed").mkdir()
    (tmp_path / "malformed" / "readme.txt").write_text("x")
    one_line_error(capsys, train.main(["--loss", "dice", "--data", str(tmp_path / "malformed"), "--out", str(tmp_path / "r")]),
                   "expected BONBID2023_Train and BONBID2023_Val")
    one_line_error(capsys, train.main(["--loss", "dice", "--size", "20", "16", "8"]), "--size: expected sides divisible by 8")
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"definitely not a checkpoint")
    one_line_error(capsys, hie_ref.main(["evaluate", "--checkpoint", str(bogus)]), "bogus.pt: not a PyTorch file")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    one_line_error(capsys, hie_ref.main(["evaluate", "--checkpoint", str(tmp_path / "other.pt")]),
                   "not a hie-ref checkpoint (expected keys")


def test_existing_run_dir_and_mismatched_pair(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(tiny_root, out, epochs=1)) == 0
    capsys.readouterr()
    one_line_error(capsys, train.main(train_args(tiny_root, out, epochs=1)), "pass --resume to continue it or --force")
    assert train.main(train_args(tiny_root, out, "--force", epochs=1)) == 0
    # an ADC/ZADC pair of different geometry: status 2, nothing written
    cases = data.discover(tiny_root / "BONBID2023_Val")
    target = tmp_path / "mask.mha"
    one_line_error(capsys, hie_ref.main(["predict", "--checkpoint", str(out / "best.pt"), "--adc", str(cases[0].adc),
                                         "--zadc", str(cases[1].zadc), "--out", str(target), "--device", "cpu"]),
                   "differ in size")
    assert not target.exists() and not list(tmp_path.glob(".mask*"))


def test_real_exit_status_and_one_line_message(tmp_path):
    for name in ("a.mha", "z.mha"):
        (tmp_path / name).write_bytes(b"")
    r = subprocess.run([sys.executable, str(ROOT / "hie_ref.py"), "predict", "--checkpoint", str(tmp_path / "none.pt"),
                        "--adc", "a.mha", "--zadc", "z.mha", "--out", "m.mha"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"hie_ref.py predict: error: {tmp_path / 'none.pt'}: no such checkpoint file"
    r = subprocess.run([sys.executable, str(ROOT / "hie_ref.py"), "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_synth_command(tmp_path, capsys):
    assert hie_ref.main(["synth", "--out", str(tmp_path / "s"), "--train", "1", "--val", "1", "--seed", "3"]) == 0
    assert len(data.discover(tmp_path / "s" / "BONBID2023_Val")) == 1
    assert hie_ref.main(["synth", "--out", str(tmp_path / "s"), "--train", "1", "--val", "1", "--ext", ".nii.gz"]) == 2
    assert "holds a dataset already in another format" in capsys.readouterr().err     # no mixed set
    assert not list((tmp_path / "s").rglob("*.nii.gz"))
    # a second synth with fewer cases: refused, then with --force the folder holds exactly what it says
    one_line_error(capsys, hie_ref.main(["synth", "--out", str(tmp_path / "s"), "--train", "3", "--val", "1"]),
                   "holds a dataset already (1 in BONBID2023_Train, 1 in BONBID2023_Val): --force to replace it")
    assert hie_ref.main(["synth", "--out", str(tmp_path / "s"), "--train", "2", "--val", "1", "--force",
                         "--ext", ".nii.gz"]) == 0
    assert "(2 train, 1 val cases" in capsys.readouterr().out
    assert len(data.discover(tmp_path / "s" / "BONBID2023_Train")) == 2 and not list((tmp_path / "s").rglob("*.mha"))
    run = tmp_path / "runs" / "dice"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    one_line_error(capsys, hie_ref.main(["synth", "--out", str(run)]), "is a run directory (it holds config.json)")
    one_line_error(capsys, hie_ref.main(["synth", "--out", str(tmp_path / "runs")]), "holds other files (e.g. dice)")


def test_synthesis_in_processes_writes_the_same_files(tmp_path):
    import hashlib
    digests = []
    for workers in (1, 2):
        root = synthetic.synthesize(tmp_path / f"w{workers}", 2, 1, seed=7, size_range=((24, 24, 8), (32, 32, 10)),
                                    workers=workers)
        digests.append({p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.mha")})
    assert digests[0] == digests[1] and len(digests[0]) == 9


def test_validation_on_the_device_equals_the_case_by_case_host_loop(tiny_root, tmp_path):
    """train.validate batches the cases and keeps loss and Dice on the device; the reference:
    each case alone, its metrics by metrics.evaluate_case on the host (the former loop)."""
    from metrics import evaluate_case
    files = data.prepare(tiny_root / "BONBID2023_Val", tmp_path / "cache", (16, 16, 8))
    torch.manual_seed(0)
    model = checkpoints.build_model((4, 8, 16), 8, prior=0.3).eval()
    criterion = losses.make_loss("tversky_hdt")
    ours = train.validate(model, train.load_val(files, torch.device("cpu")), criterion, torch.device("cpu"), 2.0,
                          batch_size=2)
    rows, values = [], []
    with torch.no_grad():
        for f in files:
            c = data.load_cached(f)
            logits = model(torch.from_numpy(c["image"])[None])
            values.append(criterion(logits, torch.from_numpy(c["label"])[None]).item())
            rows.append(evaluate_case((logits[0, 0] > 0).numpy(), c["label"][0], c["grid"].spacing, 2.0))
    assert ours["val_loss"] == pytest.approx(np.mean(values), rel=1e-5)
    for key in ("dice", "msd", "nsd"):
        assert ours[f"val_grid_{key}"] == pytest.approx(np.mean([r[key] for r in rows]), rel=1e-6)


def test_study_and_figure(tiny_root, tmp_path, capsys):
    out = tmp_path / "study"
    common = ["--data", str(tiny_root), "--cache", str(tmp_path / "cache"), "--device", "cpu"]
    study = ["study", "--out", str(out), "--size", "16", "16", "8", *common]
    assert hie_ref.main([*study, "--epochs", "1", "--losses", "dice", "tversky_hdt"]) == 0
    with open(out / "table1.csv") as f:
        rows = {r["loss"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["dice", "tversky_hdt"] and rows["dice"]["paper_msd"] == "15.065"
    assert {"challenge_msd", "challenge_nsd"} <= set(rows["dice"])
    # Table 1's Dice is the mean over the validation cases of MONAI's Dice between the mask that
    # `predict` writes in the case's own geometry and the label file
    monai_metrics = pytest.importorskip("monai.metrics")
    for name in rows:
        dices = []
        for case in data.discover(tiny_root / "BONBID2023_Val"):
            mask = tmp_path / f"{name}_{case.base}.mha"
            assert hie_ref.main(["predict", "--checkpoint", str(out / name / "best.pt"), "--adc", str(case.adc),
                                 "--zadc", str(case.zadc), "--out", str(mask), "--device", "cpu"]) == 0
            p, g = data.read_image(mask)[0].astype(bool), data.read_image(case.label)[0].astype(bool)
            one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
            dices.append(1.0 if not (p.any() or g.any()) else
                         monai_metrics.compute_dice(one_hot(p), one_hot(g), include_background=False).item())
        assert float(rows[name]["dice"]) == pytest.approx(np.mean(dices), abs=1e-6)
    assert "| 0.5000 | 1.6250 | 0.5325 | 59 |" in (out / "table1.md").read_text()        # the paper's row beside
    # the same study again reuses the runs; other settings retrain and say why
    stamp = (out / "dice" / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert hie_ref.main([*study, "--epochs", "1", "--losses", "dice"]) == 0
    assert (out / "dice" / "best.pt").stat().st_mtime_ns == stamp
    assert "dice: trained earlier with these settings, reusing" in capsys.readouterr().out
    assert hie_ref.main([*study, "--epochs", "2", "--losses", "dice"]) == 0
    said = capsys.readouterr().out
    assert "dice: training (the run in" in said and "epochs 1 -> 2" in said
    assert json.loads((out / "dice" / "summary.json").read_text())["epochs"] == 2
    import figures
    drawn, save = [], figures._save
    figures._save = lambda fig, path, dpi: (drawn.append([ax.images[1].get_cmap()(0)[:3] for ax in fig.axes]),
                                            save(fig, path, dpi))
    try:
        assert hie_ref.main(["figure", "--study", str(out), *common]) == 0
    finally:
        figures._save = save
    png = (out / "figure2.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    columns = 1 + len(figures.study_runs(out, losses.LOSS_NAMES))
    for row in range(len(drawn[0]) // columns):                       # as its title says: truth cyan, predictions red
        fills = drawn[0][row * columns:(row + 1) * columns]
        assert fills[0] == (0.0, 1.0, 1.0) and all(f == (1.0, 0.0, 0.0) for f in fills[1:])


def test_broken_dataset_exits_2_naming_every_case_at_once(tiny_root, tmp_path, capsys):
    root = shutil.copytree(tiny_root, tmp_path / "broken")
    train_split, val_split = root / "BONBID2023_Train", root / "BONBID2023_Val"
    (train_split / "2Z_ADC" / "Zmap_MGHNICU_002-VISIT_01-ADC_smooth2mm_clipped10.mha").unlink()   # discovery
    (train_split / "1ADC_ss" / "MGHNICU_003-VISIT_01-ADC_ss.mha").write_bytes(b"garbage")          # content
    adc = data.discover(val_split)[0].adc                                                          # other split
    array, geometry = data.read_image(adc)
    array[2, 2, 2] = np.nan
    data.write_image(array, geometry, adc)
    code = train.main(train_args(root, tmp_path / "run", "--cache", str(tmp_path / "cache"), epochs=1))
    one_line_error(capsys, code, "MGHNICU_002-VISIT_01: missing 2Z_ADC/Zmap_MGHNICU_002-VISIT_01-ADC_smooth2mm_clipped10.mha",
                   "MGHNICU_003-VISIT_01-ADC_ss.mha: unreadable", "MGHNICU_501-VISIT_01-ADC_ss.mha: 1 NaN/Inf voxels",
                   "BONBID2023_Train: 2 problem(s)", "BONBID2023_Val: 1 problem(s)")
    assert not (tmp_path / "run").exists()                                   # nothing written
    assert not (tmp_path / "cache").exists()                                 # no cache, no empty folder
    # the val split good and the train split broken: val is not cached first
    data.write_image(np.nan_to_num(array), geometry, adc)
    code = train.main(train_args(root, tmp_path / "run", "--cache", str(tmp_path / "cache"), epochs=1))
    one_line_error(capsys, code, "BONBID2023_Train: 2 problem(s)")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_many_broken_cases_stay_readable(tmp_path):
    split = tmp_path / "BONBID2023_Train"
    for folder in data.FOLDERS.values():
        (split / folder).mkdir(parents=True)
    for i in range(25):                                    # 25 ADC files without their partners
        (split / data.file_names(f"MGHNICU_{i:03d}-VISIT_01")["adc"]).write_bytes(b"x")
    with pytest.raises(data.DataError) as err:
        data.prepare(split, tmp_path / "cache", (16, 16, 8))
    msg = str(err.value)
    assert "25 problem(s)" in msg and msg.count("missing") == 10 and msg.endswith("... and 15 more")


@pytest.mark.parametrize("argv,fragment", [
    (["--loss", "dice", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--loss", "dice", "--batch-size", "-1"], "--batch-size: expected a positive integer, got -1"),
    (["--loss", "dice", "--resume", "--force"], "--resume and --force: expected one of them, got both"),
    (["--loss", "dice", "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--loss", "dice", "--min-epochs", "-1"], "--min-epochs: expected an integer >= 0, got -1"),
    (["--loss", "dice", "--min-delta", "1.5"], "--min-delta: expected a Dice gain in [0, 1), got 1.5"),
])
def test_bad_train_arguments(argv, fragment, capsys):
    try:
        code = train.main(argv)
    except SystemExit as e:            # argparse's own errors exit from inside parse_args
        code = e.code
    one_line_error(capsys, code, fragment)


def test_resume_without_a_run(tiny_root, tmp_path, capsys):
    one_line_error(capsys, train.main(train_args(tiny_root, tmp_path / "none", "--resume")),
                   "--resume, but there is no run there")


def test_predict_missing_input(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(tiny_root, out, epochs=1)) == 0
    capsys.readouterr()
    one_line_error(capsys, hie_ref.main(["predict", "--checkpoint", str(out / "best.pt"), "--adc", str(tmp_path / "a.mha"),
                                         "--zadc", str(tmp_path / "z.mha"), "--out", str(tmp_path / "m.mha")]),
                   f"--adc {tmp_path / 'a.mha'}: no such file")
    case = data.discover(tiny_root / "BONBID2023_Val")[0]
    one_line_error(capsys, hie_ref.main(["predict", "--checkpoint", str(out / "best.pt"), "--adc", str(case.adc),
                                         "--zadc", str(case.zadc), "--out", str(tmp_path / "m.png")]),
                   "expected a .mha, .nii or .nii.gz file name")


# ---------------------------------------------------------------- issue 8: re-runs, resume checks, profile, JSON, AMP

def test_rerun_without_out_goes_to_a_new_directory(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoints, "HERE", tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["--loss", "dice", "--data", str(tiny_root), "--cache", str(tmp_path / "cache"), "--batch-size", "2", *SIZE,
            "--epochs", "1"]
    assert train.main(argv) == 0 and train.main(argv) == 0 and train.main(argv) == 0
    out = capsys.readouterr().out
    assert "runs/dice holds an earlier run: this one goes to runs/dice-2" in out
    assert "this one goes to runs/dice-3" in out and "-> runs/dice-3/best.pt" in out       # relative paths
    for name in ("dice", "dice-2", "dice-3"):
        assert (tmp_path / "runs" / name / "summary.json").exists()
    # --resume without --out continues the latest; an explicit --out that exists still needs a flag
    assert train.main(argv[:-1] + ["2", "--resume"]) == 0
    assert json.loads((tmp_path / "runs" / "dice-3" / "summary.json").read_text())["epochs"] == 2
    capsys.readouterr()
    one_line_error(capsys, train.main(argv + ["--out", str(tmp_path / "runs" / "dice")]), "pass --resume")


def test_resume_refuses_other_settings_naming_each(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(tiny_root, out, epochs=1)) == 0
    capsys.readouterr()
    code = train.main(train_args(tiny_root, out, "--resume", "--lr", "0.01", "--seed", "3", epochs=2))
    err = capsys.readouterr().err.strip()
    # short, and the difference first: not the departures dicts that follow from it
    assert code == 2 and err.startswith(f"train.py: error: {out}: --resume with other settings than the run's: lr "
                                        f"0.001 -> 0.01; seed 0 -> 3 (") and "departures" not in err and len(err) < 250
    one_line_error(capsys, train.main(["--loss", "dice", *train_args(tiny_root, out, "--resume", epochs=2)[2:]]),
                   "loss 'tversky_hdt' -> 'dice'")
    assert train.main(train_args(tiny_root, out, "--resume", epochs=2)) == 0         # only --epochs grew


def resolved(argv, device="cpu"):
    a = train.parser().parse_args(["--loss", "dice", *argv])
    departures = train.apply_profile(a, torch.device(device))
    return a, departures


def test_spec7_defaults_of_the_command_line():
    # the paper's protocol (SPEC 4, 7), as the command line gives it with --paper or on CUDA
    for a, departures in (resolved(["--paper"]), resolved([], device="cuda"), resolved(["--data", "d"])):
        assert departures == {} and a.augment == "torch" and a.augment_space == "mm"   # real data: the paper's
        assert (a.batch_size, a.epochs, a.patience) == (4, 100, 10)
        assert (a.lr, a.weight_decay, a.lr_gamma, a.l1, a.clip) == (1e-3, 1e-3, 0.9, 1e-4, 1.0)
        assert a.size == (192, 192, 32) and a.widths == (32, 64, 128) and a.bottleneck == 256 and a.prior == 0
        assert a.dropout == (0.1, 0.2, 0.3, 0.4)                        # SPEC 4: the levels', the bottleneck's
        assert a.tolerance == 2.0 and a.seed == 0


def test_cpu_demo_profile_lists_its_departures_and_flags_restore_the_paper():
    a, departures = resolved([])
    assert departures == {k: [v, train.PAPER[k]] for k, v in train.CPU_DEMO.items()}
    assert a.size == train.CPU_DEMO["size"] and (a.lr, a.patience) == (2e-3, 2) and a.dropout == (0.05, 0.1, 0.15, 0.2)
    assert (a.min_epochs, a.min_delta) == (22, 0.01)                     # the demo's guards against noise
    paper, _ = resolved(["--paper"])
    assert (paper.patience, paper.min_epochs, paper.min_delta) == (10, 0, 0.0)   # the paper's rule, unguarded
    assert a.weight_decay == 1e-3 and a.batch_size == 4                # not part of the demo
    # an explicit --size means no demo profile; each value's flag restores the paper's alone
    assert resolved(["--size", "192", "192", "32"])[1] == {}
    a, departures = resolved(["--widths", "32", "64", "128", "--lr-gamma", "0.9", "--dropout", "0.1", "0.2", "0.3",
                              "0.4"])
    assert not {"widths", "lr_gamma", "dropout"} & set(departures) and "size" in departures


def test_dropout_reaches_the_model_and_is_checked(capsys):
    model = checkpoints.build_model((4, 8, 16), 32, dropout=(0.05, 0.1, 0.15, 0.2))
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout3d)]
    # encoders and decoders mirror each level's rate, two blocks each; the bottleneck's is the last value
    assert sorted(set(rates)) == [0.05, 0.1, 0.15, 0.2] and rates.count(0.2) == 2
    assert [m.p for m in checkpoints.build_model((4, 8, 16), 32).modules()
            if isinstance(m, torch.nn.Dropout3d)].count(0.4) == 2                      # the paper's by default
    one_line_error(capsys, train.main(["--loss", "dice", "--dropout", "0.1", "0.2", "0.3", "1.0"]),
                   "--dropout: expected four rates in [0, 1), got (0.1, 0.2, 0.3, 1.0)")


def test_profile_is_kept_when_resolved_twice():
    # hie_ref.py study resolves a run's settings, then train.run resolves them again
    a, departures = resolved([])
    assert train.apply_profile(a, torch.device("cpu")) == departures and a.profile == "cpu-demo"


def test_demo_profile_logged_and_recorded(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(train.CPU_DEMO, "size", (16, 16, 8))          # small for the test; the rest as shipped
    out = tmp_path / "demo"
    assert train.main(["--loss", "dice", "--data", str(tiny_root), "--out", str(out), "--cache", str(tmp_path / "c"),
                       "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--cpu-demo"]) == 0    # a CPU fact
    said = capsys.readouterr().out.splitlines()
    line = [l for l in said if l.startswith("CPU demo profile (--cpu-demo)")]
    assert len(line) == 1 and "size 16x16x8 (paper 192x192x32)" in line[0] and "--paper restores" in line[0]
    assert "synthetic" not in line[0]                                 # real data: the synthetic set's size did not apply
    config = json.loads((out / "config.json").read_text())
    assert config["profile"] == "cpu-demo" and not {"cpu_demo", "paper", "profile_reason"} & set(config)
    assert config["departures"]["widths"] == [list(train.CPU_DEMO["widths"]), [32, 64, 128]]
    assert not any(k.startswith("synthetic") for k in config["departures"])
    native = [l for l in said if l.startswith("best validation Dice")]
    assert len(native) == 1 and "on the 16x16x8 grid" in native[0] and "in each case's own geometry" in native[0]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["best_val_native_dice"] <= 1 and set(summary["time"]) == {"data", "steps", "validation",
                                                                                  "checkpoints", "curves"}
    ckpt = checkpoints.load_checkpoint(out / "best.pt")
    assert checkpoints.model_from_checkpoint(ckpt, "cpu").head.in_channels == train.CPU_DEMO["widths"][0]


def test_real_data_on_a_cpu_says_what_an_epoch_costs(tiny_root, tmp_path, capsys):
    argv = ["--loss", "dice", "--data", str(tiny_root), "--out", str(tmp_path / "r"), "--cache", str(tmp_path / "c"),
            "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--widths", "4", "8", "16", "--bottleneck", "8"]
    assert train.main(argv + ["--size", "16", "16", "8"]) == 0                   # --data: the paper's profile
    said = [l for l in capsys.readouterr().out.splitlines() if l.startswith("the paper's profile on a CPU")]
    assert len(said) == 1 and "an epoch of 2 steps takes about" in said[0] and "--cpu-demo" in said[0]
    assert train.main(argv + ["--out", str(tmp_path / "x"), "--cpu-demo", "--paper"]) == 2
    assert "--cpu-demo and --paper: expected one of them" in capsys.readouterr().err


def test_json_is_strict_and_inf_is_a_string(tmp_path):
    plumbing.write_json(tmp_path / "s.json", {"msd": float("inf"), "rows": [float("nan"), 1.5], "n": 2})
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    back = json.loads((tmp_path / "s.json").read_text(), parse_constant=refuse)
    assert back == {"msd": "inf", "rows": ["nan", 1.5], "n": 2} and float(back["msd"]) == float("inf")


def test_train_epoch_augments_on_the_device_with_the_affine():
    seen = []

    def augment(image, label, affine):
        seen.append((image.shape, label.shape, affine.shape))
        return image, label

    model, sgd = Toy(), torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0)
    x, y = torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)
    train.train_epoch(model, [(x, y, torch.eye(4).expand(2, 4, 4))], lambda l, t: l.sum() * 0, sgd,
                      torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False), augment=augment)
    assert seen == [((2, 2, 2), (2, 2, 2), (2, 4, 4))]


def test_fp16_overflow_step_is_skipped_and_counted():
    # a gradient that overflows once scaled: the GradScaler skips the step and the epoch goes on
    model = Toy()
    before = model.w.detach().clone()
    x = torch.full((1, 2, 2, 2, 2), 1e35)
    y = torch.zeros(1, 1, 2, 2, 2)
    loss = lambda logits, target: logits.mean()          # -3e35: finite in float32, but not once scaled by 2^16
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    mean, skipped = train.train_epoch(model, [(x, y, None), (x, y, None)], loss, sgd, torch.device("cpu"), scaler, l1=0)
    assert skipped == 2 and np.isfinite(mean) and torch.equal(model.w.detach(), before)
    assert scaler.get_scale() < 2.0 ** 16                         # and the scale came down
    # a loss that is itself not finite stops the run
    with pytest.raises(FloatingPointError, match="the loss became nan"):
        train.train_epoch(model, [(x, y, None)], lambda l, t: l.sum() * float("nan"), sgd, torch.device("cpu"),
                          torch.amp.GradScaler("cpu", enabled=False))


def test_amp_dtype_follows_the_compute_capability(monkeypatch):
    # bf16 only where the GPU has it in hardware (sm_80 and later), not where torch emulates it
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for capability, dtype in (((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                              ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert devices.amp_dtype(cuda) == dtype
    assert devices.amp_dtype(torch.device("cpu")) == torch.float16        # CPU: --amp is ignored anyway


def test_compile_failure_falls_back_to_eager_with_one_line(tiny_root, tmp_path, monkeypatch, capsys):
    def broken(model, *args, **kwargs):
        def fails(x):
            raise RuntimeError("no compiler here\nsecond line")
        return fails
    monkeypatch.setattr(torch, "compile", broken)
    out = tmp_path / "compiled"
    assert train.main(train_args(tiny_root, out, "--compile", "--device", "cpu", epochs=2)) == 0
    said = [l for l in capsys.readouterr().out.splitlines() if l.startswith("--compile")]
    assert said == ["--compile: compiling failed (RuntimeError: no compiler here); training eager"]
    assert json.loads((out / "config.json").read_text())["compile"] is True
    assert len(metrics_rows(out / "metrics.csv")) == 2


def test_a_run_from_before_the_dropout_flag_resumes(tiny_root, tmp_path, capsys):
    # its config has no "dropout": it trained with the paper's rates, which a paper-profile resume asks for
    out = tmp_path / "run"
    assert train.main(train_args(tiny_root, out, epochs=1)) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["config"].pop("dropout") == [0.1, 0.2, 0.3, 0.4]
    torch.save(ckpt, out / "last.pt")
    assert train.main(train_args(tiny_root, out, "--resume", epochs=2)) == 0
    capsys.readouterr()
    torch.save(ckpt, out / "last.pt")                                   # other rates than the paper's: refused
    one_line_error(capsys, train.main(train_args(tiny_root, out, "--resume", "--dropout", "0", "0", "0", "0", epochs=2)),
                   "dropout [0.1, 0.2, 0.3, 0.4] -> [0.0, 0.0, 0.0, 0.0]")


def test_speed_settings_are_recorded_and_may_differ_on_resume(tiny_root, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(tiny_root, out, "--device", "cpu", epochs=1)) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["channels_last"], config["compile"], config["deterministic"]) == (True, False, False)
    assert train.main(train_args(tiny_root, out, "--device", "cpu", "--channels-last", "--deterministic", "--resume",
                                 epochs=2)) == 0
    assert json.loads((out / "config.json").read_text())["channels_last"] is True
    assert not torch.are_deterministic_algorithms_enabled()              # the process's setting comes back


def test_resume_adds_to_the_time_split(tiny_root, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(tiny_root, out, epochs=2)) == 0
    first = json.loads((out / "summary.json").read_text())
    assert train.main(train_args(tiny_root, out, "--resume", epochs=3)) == 0         # one more epoch
    again = json.loads((out / "summary.json").read_text())
    assert again["time"]["steps"] > first["time"]["steps"] and again["time"]["data"] > first["time"]["data"]
    assert train.main(train_args(tiny_root, out, "--resume", epochs=3)) == 0         # finished: nothing to train
    last = json.loads((out / "summary.json").read_text())
    assert last["time"]["steps"] == pytest.approx(again["time"]["steps"]) and last["seconds"] == again["seconds"]
    assert last["time"]["validation"] == pytest.approx(again["time"]["validation"])  # kept, not erased


def test_ctrl_c_before_the_first_epoch_says_there_is_nothing_to_resume(tiny_root, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train.data, "prepare_splits", interrupted)                  # e.g. during synthesis
    assert train.main(train_args(tiny_root, tmp_path / "run", epochs=1)) == 130
    err = capsys.readouterr().err
    assert "nothing to resume: run the same command again" in err and "--resume" not in err
    monkeypatch.undo()
    real, calls = train.train_epoch, []

    def dies_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "train_epoch", dies_in_epoch_2)
    assert train.main(train_args(tiny_root, tmp_path / "run", epochs=2)) == 130
    assert "interrupted; resume with --resume" in capsys.readouterr().err
