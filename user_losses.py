"""A loss wherever one is named (SPEC 5b, 9, 10): a built-in with any of its parameters,
``--loss "tversky_hdt(a=0.7, b=0.3)"``, or your own beside the paper's six,
``--loss path/to/my_losses.py:FocalTversky`` or ``--loss package.module:attr``, in
``train.py`` and ``hie_ref.py study``.

A built-in's name in tables and configs is ``losses``' call with the parameters that
differ from the paper's (``loss_name``: ``tversky_hdt(a=0.7,b=0.3)``), and its run
directory that name in letters a shell takes as they are (``run_name``:
``tversky_hdt-a=0.7-b=0.3``); config.json records every parameter (``fingerprint``).

The attribute is an ``nn.Module`` class constructed with no arguments, or a function
``f(logits, target) -> scalar tensor`` (logits (B,1,X,Y,Z), target {0,1} of that shape).
Its name in every table and run directory is the attribute's name. Before any training a
tiny batch checks that it returns a finite scalar with a gradient; a file or attribute
that does not exist, or a loss that fails the check, is a UsageError naming it. A run
records the file and its SHA-256 (``fingerprint``), so that resuming or reusing a run
after the file changed retrains instead.

Your own loss and every parameter by name: docs/losses.md.
"""
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import torch

from losses import MAKERS, loss_parameters, make_loss
from plumbing import UsageError

__all__ = ["loss_name", "run_name", "make_criterion", "fingerprint", "is_user_loss", "parse_loss"]

_CALL = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*(?:\((?P<args>.*)\))?\s*$", re.S)


def parse_loss(spec):
    """(name, {parameter: value}) of ``NAME`` or ``NAME(key=value, ...)`` (SPEC 5b), the
    values numbers; ValueError naming the loss's parameters or the bad value."""
    m = _CALL.match(spec) if isinstance(spec, str) else None
    if m is None or m["name"] not in MAKERS:
        raise ValueError(f"loss: expected one of {', '.join(MAKERS)}, optionally with parameters as "
                         f"NAME(key=value, ...); got {spec!r}")
    name, known, given = m["name"], loss_parameters(m["name"]), {}
    for item in filter(None, (part.strip() for part in (m["args"] or "").split(","))):
        key, sep, value = (x.strip() for x in item.partition("="))
        if not sep or key not in known or key in given:
            raise ValueError(f"loss {name}: expected parameters as key=value, each once, of "
                             f"{', '.join(known) or 'none (it has no parameters)'}; got {item!r}")
        if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
            raise ValueError(f"loss {name}: {key}: expected a number, got {value!r}")
        given[key] = float(value)
    return name, given


def is_user_loss(spec):
    """A loss from the user's file or module (``path.py:Attr``, ``module:attr``), not a built-in."""
    return ":" in spec


def _builtin(spec):
    """(name, {parameter: value}) of a built-in loss, or UsageError saying what is wrong."""
    try:
        return parse_loss(spec)
    except ValueError as e:
        if str(e).startswith("loss: expected one of"):                 # not a built-in's name
            raise UsageError(f"--loss: expected one of {', '.join(MAKERS)}, optionally with parameters as "
                             f"NAME(key=value, ...), or your own as path/to/file.py:Name or module:name; "
                             f"got {spec!r}") from None
        raise UsageError(f"--loss {spec!r}: {e}") from None


def _parts(spec):
    """(source, attribute) of ``path.py:Attr`` or ``module:attr``, or UsageError."""
    source, _, attr = spec.rpartition(":")
    if not source or not attr.isidentifier():
        raise UsageError(f"--loss {spec!r}: expected your own loss as path/to/file.py:Name or module:name")
    return source, attr


def loss_name(spec):
    """The name a loss goes by in tables and configs: a built-in's with the parameters that
    differ from the paper's, e.g. ``tversky_hdt(a=0.7,b=0.3)``, or your attribute's."""
    if not is_user_loss(spec):
        name, given = _builtin(spec)
        changed = [(k, given[k]) for k, v in loss_parameters(name).items() if k in given and given[k] != v]
        return name + (f"({','.join(f'{k}={v:g}' for k, v in changed)})" if changed else "")
    attr = _parts(spec)[1]
    if attr in MAKERS:
        raise UsageError(f"--loss {spec}: {attr!r} is the name of a built-in loss; give yours another name")
    return attr


def run_name(spec):
    """A loss's name for run directories, in letters a shell takes as they are:
    ``tversky_hdt(a=0.7,b=0.3)`` -> ``tversky_hdt-a=0.7-b=0.3``."""
    return loss_name(spec).replace("(", "-").replace(",", "-").replace(")", "")


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
    if not is_user_loss(spec):
        name, given = _builtin(spec)
        return make_loss(name, check_target=check_target, **given)
    loss_name(spec)
    loss = _load(spec)
    _check(spec, loss)
    return loss


def fingerprint(spec):
    """{"loss_file", "loss_sha256"} of a loss from a file (or a module's file); a built-in's
    {"loss_parameters": every parameter, the defaults included}."""
    if not is_user_loss(spec):
        name, given = _builtin(spec)
        return {"loss_parameters": {**loss_parameters(name), **given}}
    source, _ = _parts(spec)
    path = Path(source) if source.endswith(".py") else Path(getattr(_module(spec, source), "__file__", "") or "")
    if not path.is_file():
        return {"loss_file": str(path), "loss_sha256": None}
    return {"loss_file": str(path.resolve()), "loss_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
