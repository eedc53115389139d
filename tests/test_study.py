"""The cross-validated study (SPEC 10) on a tiny synthetic set: files, folds, statistics
against scipy, resuming, torchrun sharding, errors."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

import hie_ref
import plumbing
import stats
import study
import train

ROOT = Path(__file__).resolve().parent.parent


def cv_args(tiny_root, out, cache, *extra, losses=("dice", "tversky")):
    return ["study", "--folds", "2", "--epochs", "1", "--losses", *losses, "--data", str(tiny_root), "--out", str(out),
            "--size", "16", "16", "8", "--cache", str(cache), "--device", "cpu", *extra]


def wilson(k, n):
    """scipy's Wilson score interval: the oracle of detection.csv's."""
    from scipy.stats import binomtest
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return ci.low, ci.high


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cv_study(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "study"
    assert hie_ref.main(cv_args(tiny_root, out, out.parent / "cache", "--seeds", "2")) == 0
    return out


def test_files_folds_and_every_case_once_per_seed(cv_study, tiny_root):
    for name in ("folds.csv", "cases.csv", "summary.csv", "comparisons.csv", "claims.csv", "design.csv", "study.md",
                 "study.json", "study.png", "detection.png"):
        assert (cv_study / name).exists(), name
    table = read(cv_study / "folds.csv")
    folds = {(r["seed"], r["case"]): int(r["fold"]) for r in table}
    assert {r["seed"] for r in table} == {"0", "1"}                     # folds drawn per seed (SPEC 10)
    rows = read(cv_study / "cases.csv")
    assert list(rows[0])[:9] == ["loss", "seed", "fold", "case", "dice", "msd", "nsd", "challenge_msd", "challenge_nsd"]
    cases = sorted({c for _, c in folds})
    assert len(cases) == 5
    for loss, seeds in (("dice", ["0", "1"]), ("tversky", ["0", "1"]), ("zadc_threshold", [""])):
        for seed in seeds:                                                       # the baseline: one row per case
            mine = [r for r in rows if r["loss"] == loss and r["seed"] == seed]
            assert sorted(r["case"] for r in mine) == cases                      # each case exactly once
            assert all(int(r["fold"]) == folds[seed, r["case"]] for r in mine if seed)   # by the model of its fold
    # two losses with the same seed share the folds: the run directories' fold datasets say so
    for seed in "01":
        for fold in range(2):
            held = sorted(p.name.split("-ADC")[0] for p in (cv_study / "folds" / f"seed{seed}" / f"fold{fold}" /
                                                            "BONBID2023_Val").glob("*/*ADC_ss*"))
            assert held == sorted(c for c in cases if folds[seed, c] == fold)
    # stratified by lesion volume: each block of 2 cases in volume order is split across the folds
    volumes = {r["case"]: float(r["lesion_mm3"]) for r in table}
    order = sorted(volumes, key=lambda c: (volumes[c], c))
    for seed in "01":
        assert all(folds[seed, order[i]] != folds[seed, order[i + 1]] for i in (0, 2))
    assert {s["loss"] for s in read(cv_study / "summary.csv")} == {"dice", "tversky", "zadc_threshold"}


def test_baseline_is_zadc_below_minus_2_scored_by_hand(cv_study, tiny_root):
    import data
    from metrics import evaluate_case
    rows = {r["case"]: r for r in read(cv_study / "cases.csv") if r["loss"] == "zadc_threshold"}
    case = data.discover(tiny_root / "BONBID2023_Train")[1]
    zadc, geometry = data.read_image(case.zadc)
    label = data.read_image(case.label)[0].astype(bool)
    mask = zadc < -2
    assert float(rows[case.base]["dice"]) == pytest.approx(2 * (mask & label).sum() / (mask.sum() + label.sum()))
    assert float(rows[case.base]["nsd"]) == pytest.approx(evaluate_case(mask, label, geometry.spacing)["nsd"])


def test_comparisons_over_seeds_and_cases_against_scipy(cv_study):
    rows = read(cv_study / "cases.csv")
    comparisons = read(cv_study / "comparisons.csv")
    assert list(comparisons[0])[:13] == ["family", "loss_a", "loss_b", "metric", "n", "left_out", "seeds", "mean_diff",
                                         "ci_low", "ci_high", "p_value", "p_holm", "verdict"]
    # an infinite MSD counts as its case's field-of-view diagonal, whatever else the study holds
    value = lambda r, m: float(r["msd_cap"]) if m == "msd" and math.isinf(float(r[m])) else float(r[m])
    checked = 0
    for c in comparisons:
        m = c["metric"]
        if "zadc_threshold" in (c["loss_a"], c["loss_b"]) or m in ("missed_lesion", "false_alarm"):
            continue
        assert c["family"] == "losses"
        table = {(r["loss"], r["seed"], r["case"]): value(r, m) for r in rows}
        cases = sorted({r["case"] for r in rows if not math.isnan(value(r, m))})
        d = np.array([[table[c["loss_a"], s, k] - table[c["loss_b"], s, k] for k in cases] for s in "01"])
        # (seed, case) pairs, not seed-averaged cases; lesion sensitivity leaves out the lesion-free case
        assert int(c["n"]) == len(cases) == (4 if m == "lesion_sensitivity" else 5) and c["seeds"] == "2"
        assert float(c["mean_diff"]) == pytest.approx(d.mean())
        assert c["verdict"] == "cannot tell: 2 seed(s): training noise not measured; use --seeds 3 or more"
        for row, p in zip(d, c["wilcoxon_p"].split(";")):          # per seed, over cases: scipy's
            assert p == plumbing.fmt(math.nan if np.all(row == 0) else wilcoxon(row).pvalue, 3)
        checked += 1
    assert checked == 7
    # the seeds' spread: the std of the two per-seed means over cases
    summary = {s["loss"]: s for s in read(cv_study / "summary.csv")}
    per_seed = [np.mean([float(r["dice"]) for r in rows if r["loss"] == "dice" and r["seed"] == s]) for s in "01"]
    assert float(summary["dice"]["dice_seed_std"]) == pytest.approx(np.std(per_seed, ddof=1))
    assert summary["zadc_threshold"]["dice_seed_std"] == "nan" and summary["dice"]["n"] == "5"
    assert "**2 seed(s): no verdict between losses.**" in (cv_study / "study.md").read_text()


def test_the_report_opens_with_what_was_run_and_says_it_is_undertrained(cv_study, tiny_root):
    text = (cv_study / "study.md").read_text()
    head = text.split("## The paper's claims")[0]
    # one epoch per run: every run ended at the epoch limit with its best epoch the last
    assert head.index("**Undertrained: 8 of 8 runs were still improving") < head.index("## What was run")
    assert "--epochs 2" in head                                                  # what to run instead
    run = json.loads((cv_study / "study.json").read_text())["run"]
    assert run["command"].startswith("python hie_ref.py study --folds 2") and run["command"] in head
    assert run["commit"] in head and (len(run["commit"].split()[0]) == 40 or run["commit"] == "not a git checkout")
    assert run["data"] == str(tiny_root.resolve()) and run["cases"] == 5 and f"{tiny_root.resolve()} (5 labelled" in head
    assert run["profile"] == "paper" and run["epochs"] == 1 and run["seeds"] == [0, 1] and run["folds"] == 2
    assert "size 16x16x8 (paper: 192x192x32)" in head                            # the departures from the paper
    assert {s["stopped"] for stops in run["stops"].values() for s in stops} == {"epoch limit"}
    assert "- dice: 4 run(s): 4 at the epoch limit, 4 of them still improving" in head


def test_study_cpu_demo_with_data(tmp_path, tiny_root):
    a = hie_ref.parser().parse_args(["study", "--folds", "2", "--device", "cpu", "--data", str(tiny_root),
                                     "--cpu-demo"])
    a.out = tmp_path
    args = study.run_args(a, "dice", 0, tiny_root, tmp_path / "run", "cpu")
    assert args.cpu_demo and args.profile_reason == "study --cpu-demo"
    assert train.plan(args)[1]["profile"] == "cpu-demo"


def test_a_study_of_the_synthetic_default_on_a_cpu_trains_the_demo_profile(tmp_path):
    a = hie_ref.parser().parse_args(["study", "--folds", "2", "--device", "cpu"])
    a.out = tmp_path
    on_a_fold = study.run_args(a, "dice", 0, tmp_path / "folds" / "fold0", tmp_path / "run", "cpu")
    config = train.plan(on_a_fold)[1]
    assert on_a_fold.cpu_demo and config["profile"] == "cpu-demo" and "cpu_demo" not in config
    assert on_a_fold.profile_reason == "a study of the synthetic set on a CPU"      # the log's, not "--cpu-demo"
    a = hie_ref.parser().parse_args(["study", "--folds", "2", "--device", "cpu", "--data", str(tmp_path)])
    assert not study.run_args(a, "dice", 0, tmp_path, tmp_path / "run", "cpu").cpu_demo     # real data: the paper's


def test_more_processes_than_gpus_share_them(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for local_rank, gpu in (("0", 0), ("1", 1), ("2", 0), ("3", 1)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert study.local_gpu() == gpu


def test_holm_by_hand():
    # p = (0.01, 0.04, 0.03): sorted 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.06, 0.04*1) = 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(stats.holm([math.nan, 0.2])[0]) and stats.holm([math.nan, 0.2])[1] == pytest.approx(0.2)


def test_rerun_skips_and_a_killed_study_resumes(tiny_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    real, calls = train.run, []

    def killed_on_the_third_run(args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(train, "run", killed_on_the_third_run)
    with pytest.raises(KeyboardInterrupt):
        hie_ref.main(cv_args(tiny_root, out, tmp_path / "cache"))
    assert not (out / "study.md").exists()                          # no report that looks complete
    first = (out / "runs" / "dice" / "seed0" / "fold0" / "best.pt").stat().st_mtime_ns
    monkeypatch.setattr(train, "run", real)
    capsys.readouterr()
    assert hie_ref.main(cv_args(tiny_root, out, tmp_path / "cache")) == 0
    said = capsys.readouterr().out
    assert "dice seed 0 fold 0: done earlier" in said and "dice seed 0 fold 1: done earlier" in said
    assert "tversky seed 0 fold 0: training" in said
    assert (out / "runs" / "dice" / "seed0" / "fold0" / "best.pt").stat().st_mtime_ns == first
    # the wall time sums both invocations (the killed one up to its last finished run); a line per run
    assert "run 4 of 4 (tversky, seed 0, fold 1) done; elapsed" in said and "s left" in said
    record = json.loads((out / "study.json").read_text())["run"]
    assert record["invocations"] == 2 and record["seconds"] >= json.loads((out / "elapsed.json").read_text())["seconds"] - 1
    assert "over 2 invocation(s)" in (out / "study.md").read_text()
    # adding a seed trains only what is new
    capsys.readouterr()
    assert hie_ref.main(cv_args(tiny_root, out, tmp_path / "cache", "--seeds", "2", losses=("dice",))) == 0
    said = capsys.readouterr().out
    assert "dice seed 0 fold 1: done earlier" in said and "dice seed 1 fold 0: training" in said
    assert len([r for r in read(out / "cases.csv") if r["loss"] == "dice"]) == 10


@pytest.mark.parametrize("extra,fragment", [
    (["--folds", "1"], "--folds: expected at least 2"),
    (["--folds", "9"], "--folds 9: expected at most as many folds as labelled cases, got 5 cases"),
    (["--losses", "dice", "nope"], "--losses: expected one of dice, "),             # not "--loss:"
])
def test_bad_study_arguments(tiny_root, tmp_path, capsys, extra, fragment):
    argv = cv_args(tiny_root, tmp_path / "s", tmp_path / "cache") + extra      # the last --folds or --losses counts
    code = hie_ref.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and fragment in err, err


def test_a_failing_run_leaves_no_report(tiny_root, tmp_path, monkeypatch, capsys):
    def fails(args):
        raise plumbing.UsageError("the loss became nan")
    monkeypatch.setattr(train, "run", fails)
    code = hie_ref.main(cv_args(tiny_root, tmp_path / "s", tmp_path / "cache"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "rank 0: the loss became nan (no report written" in err
    assert not (tmp_path / "s" / "study.md").exists() and not (tmp_path / "s" / "cases.csv").exists()


def test_torchrun_two_processes_give_the_same_cases(tiny_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    for out, launcher in ((one, [sys.executable]),
                          (two, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        r = subprocess.run([*launcher, str(ROOT / "hie_ref.py"), *cv_args(tiny_root, out, tmp_path / f"c{out.name}")],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    assert (one / "cases.csv").read_text() == (two / "cases.csv").read_text()
    assert (one / "comparisons.csv").read_text() == (two / "comparisons.csv").read_text()
    shutil.rmtree(one), shutil.rmtree(two)


# ---------------------------------------------------------------- your own loss, any model's masks, torchrun at scale

OWN_LOSS = '''
import os
import time

import torch


class SoftDice(torch.nn.Module):
    """Dice on the sigmoid, over the whole batch; on the rank named by SLOW_RANK each training call sleeps."""

    def forward(self, logits, target):
        if logits.requires_grad and os.environ.get("RANK") == os.environ.get("SLOW_RANK", "-"):
            time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
        p = torch.sigmoid(logits)
        return 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)


def not_a_scalar(logits, target):
    return (torch.sigmoid(logits) - target) ** 2


def no_gradient(logits, target):
    return torch.tensor(0.5)


class dice(torch.nn.Module):
    pass
'''


@pytest.fixture(scope="module")
def own_loss(tmp_path_factory):
    path = tmp_path_factory.mktemp("mine") / "my_losses.py"
    path.write_text(OWN_LOSS)
    return path


def test_a_study_with_your_loss_and_a_folder_of_masks(tiny_root, tmp_path, own_loss):
    import data
    masks = tmp_path / "zero_shot"                       # "another model": the label itself, or nothing
    masks.mkdir()
    cases = [c for split in ("BONBID2023_Train", "BONBID2023_Val") for c in data.discover(tiny_root / split)]
    for i, case in enumerate(cases):
        label, geometry = data.read_image(case.label)
        data.write_mask(label if i % 2 else np.zeros_like(label), geometry, masks / f"{case.base}_lesion.mha")
    out = tmp_path / "study"
    assert hie_ref.main(cv_args(tiny_root, out, tmp_path / "cache", "--compare", f"zero_shot={masks}",
                                losses=("dice", f"{own_loss}:SoftDice"))) == 0
    rows = read(out / "cases.csv")
    for name, count in (("SoftDice", 5), ("zero_shot", 5), ("dice", 5)):
        assert len([r for r in rows if r["loss"] == name]) == count, name
    perfect = [r for r in rows if r["loss"] == "zero_shot" and int(r["target_voxels"]) and int(r["pred_voxels"])]
    assert perfect and all(float(r["dice"]) == 1.0 for r in perfect)
    assert {"SoftDice", "zero_shot"} <= {s["loss"] for s in read(out / "summary.csv")}
    pairs = {(c["loss_a"], c["loss_b"]) for c in read(out / "comparisons.csv")}
    assert any("SoftDice" in p and "zero_shot" in p for p in pairs)
    config = json.loads((out / "runs" / "SoftDice" / "seed0" / "fold0" / "config.json").read_text())
    assert config["loss_file"] == str(own_loss.resolve()) and len(config["loss_sha256"]) == 64
    # the file changes: its runs are trained again, the built-in's reused
    own_loss.write_text(OWN_LOSS + "\n# changed\n")
    try:
        assert hie_ref.main(cv_args(tiny_root, out, tmp_path / "cache", losses=("dice", f"{own_loss}:SoftDice"))) == 0
    finally:
        own_loss.write_text(OWN_LOSS)
    assert json.loads((out / "runs" / "SoftDice" / "seed0" / "fold0" / "config.json").read_text())["loss_sha256"] \
        != config["loss_sha256"]


@pytest.mark.parametrize("spec,fragment", [
    ("{dir}/nowhere.py:X", "no such file"),
    ("{file}:Missing", "has no attribute 'Missing'"),
    ("{file}:not_a_scalar", "expected a finite scalar tensor with a gradient, got a tensor of shape (2, 1, 8, 8, 8)"),
    ("{file}:no_gradient", "expected a finite scalar tensor with a gradient, got a scalar without a gradient"),
    ("{file}:dice", "'dice' is the name of a built-in loss"),
    ("no_such_module_here:f", "no module 'no_such_module_here'"),
])
def test_your_loss_refused_in_one_line(tiny_root, tmp_path, capsys, own_loss, spec, fragment):
    spec = spec.format(dir=tmp_path, file=own_loss)
    code = train.main(["--loss", spec, "--data", str(tiny_root), "--out", str(tmp_path / "r"), "--size", "16", "16", "8",
                       "--cache", str(tmp_path / "c"), "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and fragment in err, err
    assert not (tmp_path / "r").exists()                 # refused before anything was written


def test_compare_folder_problems_named_at_once(tiny_root, tmp_path, capsys):
    import data
    masks = tmp_path / "masks"
    masks.mkdir()
    cases = data.discover(tiny_root / "BONBID2023_Train")
    label, geometry = data.read_image(cases[0].label)
    data.write_mask(label[:-1], data.Geometry.of(label[:-1].shape, geometry.spacing, geometry.origin,
                                                 geometry.direction), masks / f"{cases[0].base}_lesion.mha")
    data.write_mask(label, geometry, masks / "MGHNICU_999-VISIT_01_lesion.mha")
    code = hie_ref.main(cv_args(tiny_root, tmp_path / "s", tmp_path / "cache", "--compare", f"other={masks}",
                                losses=("dice",)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"{cases[0].base}: mask size" in err and "MGHNICU_999-VISIT_01: a mask" in err
    assert f"{cases[1].base}: no mask" in err and "problem(s)" in err


def test_lesion_by_lesion_and_by_burden_group(cv_study, tiny_root):
    import data
    from lesions import burden, burden_group
    rows = read(cv_study / "cases.csv")
    cases = {c.base: c for split in data.train_val_dirs(tiny_root) for c in data.discover(split)}
    groups = {b: burden_group(burden(data.read_image(c.label)[0], data.read_image(c.adc)[0])) for b, c in cases.items()}
    assert all(r["burden_group"] == groups[r["case"]] for r in rows)             # from each case's ADC and label
    none = [r for r in rows if r["burden_group"] == "none"]
    assert none and all(r["lesion_sensitivity"] == "nan" and r["lesions"] == "0" for r in none)
    summary = {s["loss"]: s for s in read(cv_study / "summary.csv")}
    assert summary["dice"]["lesion_sensitivity_n"] == "4" and summary["dice"]["dice_n"] == "5"   # NaN left out, counted
    by_group = read(cv_study / "groups.csv")
    assert {(g["group"], g["n"]) for g in by_group if g["loss"] == "dice"} == \
        {(g, str(list(groups.values()).count(g))) for g in set(groups.values())}
    assert {c["group"] for c in read(cv_study / "group_comparisons.csv")} == set(groups.values())
    # detection by size, counted again from the per-lesion columns of cases.csv
    detection = {(d["loss"], d["unit"], d["bin"]): d for d in read(cv_study / "detection.csv")}
    from lesions import grid_bin, size_bin
    # a grid voxel over a case, by hand: the case's spacing * size / the study's 16x16x8 grid
    case = next(iter(cases.values()))
    g = data.read_image(case.label)[1]
    voxel = np.prod(np.array(g.spacing) * np.array(g.size) / np.array([16, 16, 8]))
    assert [float(r["grid_voxel_mm3"]) for r in rows if r["case"] == case.base] == pytest.approx([voxel] * 5)
    for loss, seeds in (("dice", 2), ("zadc_threshold", 1)):
        found = {}
        for r in (r for r in rows if r["loss"] == loss and r["lesion_volumes"]):
            for v, d in zip(r["lesion_volumes"].split(";"), r["lesion_detected"].split(";")):
                found.setdefault(("mm3", size_bin(float(v))), []).append(int(d))
                found.setdefault(("grid_voxels", grid_bin(float(v) / float(r["grid_voxel_mm3"]))), []).append(int(d))
        assert {u for u, _ in found} == {"mm3", "grid_voxels"}
        for (unit, b), hits in found.items():
            d = detection[loss, unit, b]
            assert int(d["lesions"]) * seeds == int(d["lesion_seed_pairs"]) == len(hits)    # counted alike
            assert int(d["detected_pairs"]) == sum(hits) and int(d["seeds"]) == seeds
            assert float(d["fraction"]) == pytest.approx(np.mean(hits))
            assert (float(d["ci_low"]), float(d["ci_high"])) == pytest.approx(wilson(sum(hits), len(hits)))
    claims = {c["claim"]: c for c in read(cv_study / "claims.csv")}
    small = claims["small lesions are harder (Dice on <1% cases lower than on 1-5% and >5%)"]
    assert small["verdict"] in ("holds", "does not hold", "cannot tell")
    text = (cv_study / "study.md").read_text()
    assert "## By lesion burden" in text and "## Detection by lesion size" in text and "Small lesions are harder?" in text
    assert "<1 grid voxels (below the grid's resolution)" in text and "A grid voxel here is" in text
    assert (cv_study / "detection.png").stat().st_size > 0


def test_a_run_stopped_on_a_non_finite_loss_is_not_reused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps({"stopped": "epoch 3: the loss became nan; stopped, ..."}))
    assert "stopped on a non-finite loss (epoch 3: the loss became nan)" in study.reuse_problem(run, {})


def torchrun(args, cwd, env=None, script=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script or ROOT / "hie_ref.py"), *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_torchrun_a_slow_rank_outlasts_the_wait_timeout(tiny_root, tmp_path, own_loss):
    # rank 1 trains for longer than --wait-timeout: no rank waits on another's training in a collective
    r = torchrun([*cv_args(tiny_root, tmp_path / "s", tmp_path / "cache", "--wait-timeout", "4",
                           losses=("dice", f"{own_loss}:SoftDice"))], tmp_path,
                 env={"SLOW_RANK": "1", "SLOW_SECONDS": "3"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rank 0: waiting for" in r.stdout
    assert {row["loss"] for row in read(tmp_path / "s" / "cases.csv")} == {"dice", "SoftDice", "zadc_threshold"}


def test_torchrun_first_study_on_a_fresh_clone_without_data(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    for f in ROOT.glob("*.py"):
        shutil.copy(f, clone)
    r = torchrun(["study", "--folds", "2", "--epochs", "1", "--losses", "dice", "--size", "16", "16", "8", "--device",
                  "cpu", "--synthetic-train", "3", "--synthetic-val", "1"], clone, script=clone / "hie_ref.py")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (clone / "data" / "synthetic-3-1" / "BONBID2023_Val").is_dir()
    assert not [p for p in (clone / "data").iterdir() if p.name.startswith(".")]        # no half-written copy
    assert len(read(clone / "runs" / "study-cv" / "cases.csv")) == 8                  # 4 cases x (dice, baseline)
