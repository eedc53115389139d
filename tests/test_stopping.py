"""Early stopping (SPEC 7, stopping.py): the paper's rule, the CPU demo's guards against
validation noise, worked by hand, and a stopped run that resumes exactly."""
import json

import pytest

import train
from stopping import epochs_without_improvement, stop_reason
from test_train import train_args


def test_the_papers_rule_by_hand():
    # best 0.3 at epoch 2; 0.3 again is no improvement; 4 epochs without one: stop
    history = [0.1, 0.3, 0.2, 0.25, 0.3]
    assert epochs_without_improvement(history) == 3 and stop_reason(history, patience=4) is None
    assert stop_reason(history + [0.29], patience=4) == "early stopping: no better validation Dice for 4 epochs"
    assert epochs_without_improvement([]) == 0 and stop_reason([], patience=0) is None


def test_it_stops_on_a_plateau_and_not_on_one_noisy_epoch():
    rule = dict(patience=2, min_epochs=6, min_delta=0.01)
    rising = [0.3, 0.5, 0.45, 0.6, 0.55, 0.7, 0.8]            # two dips, each followed by a gain
    assert all(stop_reason(rising[:n], **rule) is None for n in range(1, 8))
    # the same dips before epoch 6 would have stopped the paper's rule with patience 1
    assert stop_reason(rising[:3], patience=1) is not None
    plateau = rising + [0.805, 0.79]                          # gains under 0.01 do not count
    assert epochs_without_improvement(plateau, 0.01) == 2
    assert stop_reason(plateau, **rule) == ("early stopping: no better validation Dice of more than 0.01 for 2 epochs, "
                                            "after at least 6 epochs")
    assert stop_reason(plateau[:-1] + [0.9], **rule) is None   # a real gain keeps it going


@pytest.mark.filterwarnings("ignore:Detected call of")     # train_epoch is stubbed: no optimizer step
def test_a_run_stopped_by_the_rule_resumes_to_the_same_stop(tiny_root, tmp_path, monkeypatch):
    curve = [0.2, 0.5, 0.4, 0.6, 0.55, 0.65, 0.655, 0.64, 0.9]
    rule = ["--patience", "2", "--min-epochs", "5", "--min-delta", "0.01"]

    def run(out, first_epoch=1, killed_in=None, *extra):
        """Train with validation Dice curve[epoch - 1]; KeyboardInterrupt in epoch ``killed_in``."""
        epoch = iter(range(first_epoch, 100))

        def step(*a, **k):
            if next(epoch) == killed_in:
                raise KeyboardInterrupt
            return 0.5, 0
        monkeypatch.setattr(train, "train_epoch", step)
        monkeypatch.setattr(train, "validate", lambda *a: {"val_loss": 0.5, "val_grid_dice": curve[state() - 1],
                                                           "val_grid_msd": 1.0, "val_grid_nsd": 0.5})
        seen = iter(range(first_epoch, 100))
        state = lambda: next(seen)
        return train.main(train_args(tiny_root, out, *rule, *extra, epochs=20))

    straight = tmp_path / "straight"
    assert run(straight) == 0
    summary = json.loads((straight / "summary.json").read_text())
    # 0.65 at epoch 6 is the last gain of more than 0.01; epochs 7 and 8 bring none: stop after 8
    assert (summary["epochs"], summary["best_epoch"]) == (8, 7) and "of more than 0.01" in summary["stopped"]
    killed = tmp_path / "killed"
    assert run(killed, 1, 4) == 130                            # killed in epoch 4: epochs 1-3 saved
    assert run(killed, 4, None, "--resume") == 0
    resumed = json.loads((killed / "summary.json").read_text())
    assert (resumed["epochs"], resumed["best_epoch"], resumed["stopped"]) == (8, 7, summary["stopped"])
