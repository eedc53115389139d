"""The device and its precision: which device, mixed precision's dtype, autocast, determinism,
torch.compile with a fallback (SPEC 7's run on a GPU; no SPEC section of its own).

    device = pick_device("auto")          # CUDA when there is one
    with autocast(device, amp): ...       # bf16 where the GPU has it in hardware, else fp16
    with deterministic(on, device): ...   # --deterministic
    forward = Compiled(model)             # --compile, eager again if compiling fails

The GPU's figures and what made the step fast: docs/gpu.md.
"""
import contextlib
import os

import torch

from plumbing import UsageError, log

__all__ = ["pick_device", "amp_dtype", "autocast", "deterministic", "Compiled"]


def pick_device(name="auto"):
    """A torch.device from "auto" (CUDA when there is one), "cpu", "cuda", "cuda:1", ..."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


def amp_dtype(device):
    """Mixed precision's dtype: bf16 where the GPU has it in hardware (compute capability
    8.0 and later: no loss scaling needed), fp16 with a GradScaler on older GPUs (V100,
    T4), where ``torch.cuda.is_bf16_supported()`` may still say yes: it emulates bf16."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float16


def autocast(device, amp):
    return torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp)



@contextlib.contextmanager
def deterministic(on, device):
    """--deterministic: deterministic algorithms (warn where an op has none) and cuDNN
    kernels, benchmark off; otherwise cuDNN benchmarks its kernels for the fixed input
    size. The process's previous settings come back afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS's condition for determinism
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = device.type == "cuda" and not on
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


class Compiled:
    """``torch.compile(model)`` for the training step; if compiling fails, one log line and
    the eager model from then on."""

    def __init__(self, model):
        self.model, self.fn = model, torch.compile(model)

    def __call__(self, x):
        if self.fn is not self.model:
            try:
                return self.fn(x)
            except Exception as e:                                      # noqa: BLE001 - any compiler failure
                log(f"--compile: compiling failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]}); "
                    f"training eager")
                self.fn = self.model
        return self.model(x)
