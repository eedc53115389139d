"""What a shared lab machine does to a run: folders a lab account cannot write, a broken case in
the middle of a split, two jobs started into one folder, a lock left by a killed job."""
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
import hie_ref
import plumbing
import train

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--size", "16", "16", "8", "--device", "cpu"]


def as_a_lab_account(argv, cwd):
    """Run ``python argv`` without root's permission bypass (CAP_DAC_OVERRIDE dropped under root)."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: cannot drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([*prefix, sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "dice"
    assert train.main(["--loss", "dice", "--data", str(tiny_root), "--out", str(out), "--cache",
                       str(out.parent / "cache"), "--epochs", "1", "--batch-size", "2", *SMALL]) == 0
    return out


def test_an_unwritable_destination_is_one_line_for_every_command(tiny_root, run, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    masks = tmp_path / "masks"
    assert hie_ref.main(["predict", "--checkpoint", str(run), "--data", str(tiny_root), "--split", "val", "--out",
                         str(masks), "--device", "cpu"]) == 0
    ro.chmod(0o555)
    cache = ["--cache", str(tmp_path / "cache")]
    commands = {
        "train": [ROOT / "train.py", "--loss", "dice", "--data", tiny_root, "--out", ro / "run2", "--epochs", "1",
                  *SMALL, *cache],
        "synth": [ROOT / "hie_ref.py", "synth", "--out", ro / "synthetic", "--train", "1", "--val", "1"],
        "predict": [ROOT / "hie_ref.py", "predict", "--checkpoint", run, "--data", tiny_root, "--split", "val",
                    "--out", ro / "masks", "--device", "cpu"],
        "score": [ROOT / "hie_ref.py", "score", "--pred", masks, "--target", tiny_root / "BONBID2023_Val",
                  "--out", ro / "s.csv"],
        "study": [ROOT / "hie_ref.py", "study", "--folds", "2", "--epochs", "1", "--losses", "dice", "--data",
                  tiny_root, "--out", ro / "study", *SMALL, *cache],
    }
    try:
        for name, argv in commands.items():
            r = as_a_lab_account(argv, tmp_path)
            err = r.stderr.strip()
            assert r.returncode == 2, (name, err[-600:])
            assert "\n" not in err and "Traceback" not in err, (name, err)
            assert f"{ro}" in err and "cannot write there: permission denied" in err, (name, err)
            assert ".tmp" not in err, (name, err)                           # the user's path, not a temporary one
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("code,said", [(errno.EROFS, "read-only file system"), (errno.ENOSPC, "no space left on device")])
def test_a_read_only_or_full_file_system_names_the_file(tmp_path, monkeypatch, code, said):
    def full(tmp):
        raise OSError(code, os.strerror(code))                # a write() error carries no file name
    with pytest.raises(OSError) as e:
        plumbing.atomic_write(tmp_path / "scores.csv", full)
    assert plumbing.unwritable(e.value) == f"{tmp_path / 'scores.csv'}: cannot write there: {said}"
    assert list(tmp_path.iterdir()) == []
    assert plumbing.unwritable(OSError(errno.ENOENT, "no such file", "x")) is None      # not a writing fault


def nan_case(root, i):
    """Give the ``i``-th training case's ADC NaN voxels; returns a function that puts it back."""
    case = data.discover(root / "BONBID2023_Train")[i]
    saved = case.adc.read_bytes()
    adc, geometry = data.read_image(case.adc)
    adc = adc.astype(np.float32)
    adc[0, 0, :3] = np.nan
    data.write_image(adc, geometry, case.adc)
    return case, lambda: case.adc.write_bytes(saved)


def test_predict_is_all_or_nothing(tiny_root, run, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    case, fix = nan_case(root, 2)                              # the third of three
    out = tmp_path / "masks"
    argv = ["predict", "--checkpoint", str(run), "--data", str(root), "--split", "train", "--out", str(out),
            "--device", "cpu", "--allow-trained"]                 # the run trained on these: meant, here
    assert hie_ref.main(argv) == 2
    err = capsys.readouterr().err
    assert case.base in err and "NaN/Inf voxels" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".masks.*"))       # no mask, no folder, no staging
    fix()
    assert hie_ref.main(argv) == 0                                          # no --force needed
    assert len(list(out.glob("*_lesion.mha"))) == 3
    # into an existing folder (--force): the masks move in only once all are made
    case, _ = nan_case(root, 0)
    (out / "keep.txt").write_text("mine")
    assert hie_ref.main(argv + ["--force"]) == 2
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.glob("*_lesion.mha"))) == 3
    assert not list(tmp_path.glob(".masks.*"))


def test_the_single_case_names_its_file_once(tiny_root, run, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    case, _ = nan_case(root, 0)
    assert hie_ref.main(["predict", "--checkpoint", str(run), "--adc", str(case.adc), "--zadc", str(case.zadc),
                         "--out", str(tmp_path / "m.mha"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count(case.adc.name) == 1 and "NaN/Inf voxels" in err and not (tmp_path / "m.mha").exists()


@contextlib.contextmanager
def held_by_another(folder, command):
    """``folder``'s lock held by a live process (another job): yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (folder / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                  "command": command, "started": "now"}))
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def train_argv(tiny_root, out, loss, cache):
    return ["--loss", loss, "--data", str(tiny_root), "--out", str(out), "--cache", str(cache), "--epochs", "2",
            "--batch-size", "2", *SMALL]


def test_a_run_directory_has_one_writer(tiny_root, tmp_path, capsys):
    out = tmp_path / "R"
    out.mkdir()
    with held_by_another(out, "train.py --loss dice --out R") as pid:
        assert train.main(train_argv(tiny_root, out, "tversky_hdt", tmp_path / "cache")) == 2
        err = capsys.readouterr().err
        assert f"pid {pid}" in err and "train.py --loss dice --out R" in err and len(err.splitlines()) == 1
        assert [p.name for p in out.iterdir()] == [".lock"]                 # nothing of the second run
    # the holder is gone (killed): its lock is taken over, and the log says so
    assert train.main(train_argv(tiny_root, out, "tversky_hdt", tmp_path / "cache")) == 0
    assert "taking over the lock of pid" in capsys.readouterr().out
    assert not (out / ".lock").exists() and json.loads((out / "config.json").read_text())["loss"] == "tversky_hdt"


def test_two_runs_started_together_into_one_folder(tiny_root, tmp_path):
    out, cache = tmp_path / "R", tmp_path / "cache"
    assert train.main(train_argv(tiny_root, tmp_path / "warm", "dice", cache)) == 0      # the cache, made once
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    both = [subprocess.Popen([sys.executable, ROOT / "train.py", *train_argv(tiny_root, out, loss, cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
            for loss in ("dice", "tversky_hdt")]
    results = [(p.wait(), p.stderr.read()) for p in both]
    assert sorted(code for code, _ in results) == [0, 2], results           # never both "-> R/best.pt"
    refused = next(err for code, err in results if code == 2)
    assert "another training run is writing here" in refused or "the run directory exists" in refused
    winner = ("dice", "tversky_hdt")[[code for code, _ in results].index(0)]
    assert json.loads((out / "config.json").read_text())["loss"] == winner


def test_a_study_folder_has_one_writer(tiny_root, tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    with held_by_another(out, "hie_ref.py study --folds 2") as pid:
        argv = ["study", "--folds", "2", "--epochs", "1", "--losses", "dice", "--data", str(tiny_root), "--out",
                str(out), *SMALL]
        assert hie_ref.main(argv) == 2
        err = capsys.readouterr().err
        assert f"another study is writing here (pid {pid}" in err and len(err.splitlines()) == 1
        assert [p.name for p in out.iterdir()] == [".lock"]
