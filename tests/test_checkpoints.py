"""Checkpoints (issue 25): each kind of wrong file named in one line, run directories, the way
from a bare UNet3D state_dict to a checkpoint, and what an evaluation records of how it was made."""
import json

import pytest
import torch

import checkpoints
import hie_ref
from unet3d import UNet3D


def one_line(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


@pytest.fixture()
def bare(tmp_path):
    """What a user's own loop around the copied unet3d.py saves."""
    torch.manual_seed(0)
    path = tmp_path / "my_unet.pt"
    torch.save(UNet3D(widths=(4, 8, 16), bottleneck=16).state_dict(), path)
    return path


def test_each_kind_of_wrong_file_in_one_line(tmp_path, bare, capsys):
    text = tmp_path / "config.json"
    text.write_text('{"loss": "dice"}')
    one_line(capsys, hie_ref.main(["evaluate", "--checkpoint", str(text)]), "config.json: not a PyTorch file",
             "expected a hie-ref checkpoint")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    one_line(capsys, hie_ref.main(["evaluate", "--checkpoint", str(tmp_path / "other.pt")]),
             "other.pt: a PyTorch file but not a hie-ref checkpoint (expected keys model, config, grid, epoch; got keys "
             "weights)")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")                      # pickles a class
    one_line(capsys, hie_ref.main(["evaluate", "--checkpoint", str(tmp_path / "module.pt")]),
             "module.pt: a PyTorch file that does not load with weights_only=True")
    one_line(capsys, hie_ref.main(["evaluate", "--checkpoint", str(bare)]), "my_unet.pt: a bare UNet3D state_dict",
             f"python hie_ref.py checkpoint --state-dict {bare} --out best.pt")
    (tmp_path / "empty").mkdir()
    one_line(capsys, hie_ref.main(["evaluate", "--checkpoint", str(tmp_path / "empty")]),
             "expected a run directory with best.pt or a checkpoint file, got a directory without best.pt")


def test_a_bare_state_dict_becomes_a_checkpoint_that_evaluates_and_predicts(bare, tiny_root, tmp_path, capsys):
    run = tmp_path / "mine"
    argv = ["checkpoint", "--state-dict", str(bare), "--out", str(run / "best.pt"), "--size", "16", "16", "8"]
    assert hie_ref.main(argv) == 0
    one_line(capsys, hie_ref.main(argv), "exists: --force")
    ckpt = checkpoints.load_checkpoint(run, "cpu")                                    # weights_only=True, a run directory
    assert ckpt["config"]["widths"] == [4, 8, 16] and ckpt["config"]["bottleneck"] == 16 and ckpt["grid"] == [16, 16, 8]
    model = checkpoints.model_from_checkpoint(ckpt, "cpu")
    reference = UNet3D(widths=(4, 8, 16), bottleneck=16)
    reference.load_state_dict(torch.load(bare, weights_only=True))
    x = torch.randn(1, 2, 16, 16, 8)
    torch.testing.assert_close(model(x), reference.eval()(x))                      # the same network
    one_line(capsys, hie_ref.main(["evaluate", "--checkpoint", str(run), "--device", "cpu"]), "--data is required")
    assert hie_ref.main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_root), "--device", "cpu",
                         "--cache", str(tmp_path / "cache"), "--surfaces", "challenge"]) == 0
    scored = json.loads((run / "eval_val_native_challenge-2023.json").read_text())["scored"]
    assert scored["checkpoint"] == str((run / "best.pt").resolve()) and scored["geometry"] == "native"
    assert (scored["surfaces"], scored["challenge_version"], scored["tolerance"]) == ("surfel", 2023, 2.0)
    assert scored["units"] == scored["tolerance_units"] == "mm"
    assert hie_ref.main(["predict", "--checkpoint", str(run), "--data", str(tiny_root), "--out", str(tmp_path / "m"),
                         "--device", "cpu"]) == 0
    assert len(list((tmp_path / "m").glob("*_lesion.mha"))) == 2


def test_a_state_dict_of_another_network_is_refused(tmp_path, capsys):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    one_line(capsys, hie_ref.main(["checkpoint", "--state-dict", str(tmp_path / "linear.pt"), "--out",
                                   str(tmp_path / "best.pt")]), "expected the weights of unet3d.UNet3D")
