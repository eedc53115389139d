"""Your own loss beside the paper's six (SPEC 10): ``--loss path/to/my_losses.py:FocalTversky``
or ``--loss package.module:attr``, in ``train.py`` and ``hie_ref.py study``.

The attribute is an ``nn.Module`` class constructed with no arguments, or a function
``f(logits, target) -> scalar tensor`` (logits (B,1,X,Y,Z), target {0,1} of that shape).
Its name in every table and run directory is the attribute's name. Before any training a
tiny batch checks that it returns a finite scalar with a gradient; a file or attribute
that does not exist, or a loss that fails the check, is a UsageError naming it. A run
records the file and its SHA-256 (``fingerprint``), so that resuming or reusing a run
after the file changed retrains instead.
"""
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import torch

from losses import LOSS_NAMES, make_loss
from plumbing import UsageError

__all__ = ["loss_name", "make_criterion", "fingerprint", "is_user_loss"]


def is_user_loss(spec):
    return spec not in LOSS_NAMES and ":" in spec


def _parts(spec):
    """(source, attribute) of ``path.py:Attr`` or ``module:attr``, or UsageError."""
    if spec in LOSS_NAMES:
        return None, spec
    source, _, attr = spec.rpartition(":")
    if not source or not attr.isidentifier():
        raise UsageError(f"--loss {spec!r}: expected one of {', '.join(LOSS_NAMES)}, or your own as "
                         f"path/to/file.py:Name or module:name")
    return source, attr


def loss_name(spec):
    """The name a loss goes by in tables and run directories: a built-in's, or the attribute's."""
    source, attr = _parts(spec)
    if source is not None and attr in LOSS_NAMES:
        raise UsageError(f"--loss {spec}: {attr!r} is the name of a built-in loss; give yours another name")
    return attr


def _module(spec, source):
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"--loss {spec}: no such file {source}")
        name = f"hie_ref_user_loss_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module                              # so that loader workers can unpickle it
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:                                  # noqa: BLE001 - the user's code
            raise UsageError(f"--loss {spec}: {source} failed to load ({type(e).__name__}: {e})") from None
        return module
    try:
        return importlib.import_module(source)
    except ImportError as e:
        raise UsageError(f"--loss {spec}: no module {source!r} ({e})") from None


def _load(spec):
    source, attr = _parts(spec)
    obj = getattr(_module(spec, source), attr, None)
    if obj is None:
        raise UsageError(f"--loss {spec}: {source} has no attribute {attr!r}")
    if isinstance(obj, type):
        if not issubclass(obj, torch.nn.Module):
            raise UsageError(f"--loss {spec}: expected an nn.Module class or a function, got class {attr} "
                             f"(not an nn.Module)")
        try:
            return obj()
        except Exception as e:                                  # noqa: BLE001 - the user's code
            raise UsageError(f"--loss {spec}: {attr}() failed ({type(e).__name__}: {e}); it must be "
                             f"constructed with no arguments") from None
    if not callable(obj):
        raise UsageError(f"--loss {spec}: expected an nn.Module class or a function, got {type(obj).__name__}")
    return obj


def _check(spec, loss):
    """One tiny batch: a finite scalar tensor with a gradient, or UsageError saying what came back."""
    logits = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, 0, 2:5, 2:5, 2:5] = 1
    try:
        value = loss(logits, target)
    except Exception as e:                                      # noqa: BLE001 - the user's code
        raise UsageError(f"--loss {spec}: failed on a (2,1,8,8,8) batch ({type(e).__name__}: {e})") from None
    problem = None
    if not isinstance(value, torch.Tensor):
        problem = f"a {type(value).__name__}"
    elif value.numel() != 1:
        problem = f"a tensor of shape {tuple(value.shape)}"
    elif not torch.isfinite(value).all():
        problem = f"{value.item()}"
    elif not value.requires_grad:
        problem = "a scalar without a gradient"
    if problem:
        raise UsageError(f"--loss {spec}: expected a finite scalar tensor with a gradient, got {problem}")
    value.backward()


def make_criterion(spec, check_target=False):
    """The loss ``spec`` stands for: a built-in (``losses.make_loss``) or yours, checked."""
    if spec in LOSS_NAMES:
        return make_loss(spec, check_target=check_target)
    loss_name(spec)
    loss = _load(spec)
    _check(spec, loss)
    return loss


def fingerprint(spec):
    """{"loss_file", "loss_sha256"} of a loss from a file (or a module's file); {} for a built-in."""
    if spec in LOSS_NAMES:
        return {}
    source, _ = _parts(spec)
    path = Path(source) if source.endswith(".py") else Path(getattr(_module(spec, source), "__file__", "") or "")
    if not path.is_file():
        return {"loss_file": str(path), "loss_sha256": None}
    return {"loss_file": str(path.resolve()), "loss_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
