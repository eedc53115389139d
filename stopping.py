"""Early stopping (SPEC 7): whether a run stops, from its validation Dice per epoch alone.

    stop_reason(history, patience, min_epochs=0, min_delta=0.0)  -> why it stops now, or None

The paper's rule: stop after ``patience`` (10) epochs without a better mean validation Dice,
keeping the best checkpoint (min_epochs 0, min_delta 0). A pure function of the history,
which every checkpoint holds, so a resumed run stops where the uninterrupted one would.

Validation on few cases is noisy: on the 16 synthetic validation cases of the CPU demo
profile the Dice swings by 0.1 from one epoch to the next while it still rises, so that
patience alone stops a run on the first dip (seed 3 at epoch 12, Dice 0.71). Two guards,
decided here for the CPU demo profile only (docs/specification.md, "Decided here"): a
minimum number of epochs before any stop, and an improvement counting only when it beats
the best so far by more than ``min_delta``, so that the noise of a plateau does not keep a
run going. The best checkpoint is still the epoch of the best Dice, by any margin.
"""

__all__ = ["epochs_without_improvement", "stop_reason"]


def epochs_without_improvement(history, min_delta=0.0):
    """Epochs since the last one that beat every earlier epoch's value by more than ``min_delta``
    (the first epoch always counts as an improvement; 0 for an empty history)."""
    best, since = None, 0
    for value in history:
        if best is None or value > best + min_delta:
            best, since = value, 0
        else:
            since += 1
    return since


def stop_reason(history, patience, min_epochs=0, min_delta=0.0):
    """Why a run stops after the epochs of ``history`` (validation Dice per epoch), or None:
    ``patience`` epochs without an improvement of more than ``min_delta``, once at least
    ``min_epochs`` epochs have run."""
    if len(history) < max(min_epochs, 1):
        return None
    bad = epochs_without_improvement(history, min_delta)
    if bad < patience:
        return None
    gain = f" of more than {min_delta:g}" if min_delta else ""
    after = f", after at least {min_epochs} epochs" if min_epochs else ""
    return f"early stopping: no better validation Dice{gain} for {patience} epochs{after}"
