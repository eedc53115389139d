"""Seconds per training epoch of the paper's run: TorchIO against torch augmentation,
fp32 against mixed precision, and how much of it is the data path.

    python bench/train.py [--grid 192 192 32] [--cases 16] [--loss tversky_hdt] [--workers 0]

One epoch = train.train_epoch over N synthetic cases (batch 4) through the real loader,
with each augmentation: TorchIO in the loader (the reference), augment.TorchAugment on the
device, none. "data" is the time the step waited for its batch plus the torch
augmentation (synchronised on CUDA); "step" is the rest (forward, loss, backward, AdamW).
Mixed precision (bf16, or fp16 with a GradScaler) is timed on CUDA only: bf16 autocast
on a CPU without bf16 units is emulated and far slower than fp32. The default grid is
the paper's on CUDA and 96x96x32 on a CPU (the paper's network).
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import header  # first: puts the repository on sys.path
import data
import synthetic
import train
from augment import TorchAugment, TorchIOAugment
from evaluate import amp_dtype, build_model
from losses import make_loss


class Timed:
    """An iterable (the loader) or a callable (the augmentation) that adds its own wall time to ``clock``."""

    def __init__(self, inner, clock, sync):
        self.inner, self.clock, self.sync = inner, clock, sync

    def __iter__(self):
        it = iter(self.inner)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.clock[0] += time.perf_counter() - start
            yield batch

    def __call__(self, *args):
        start = time.perf_counter()
        out = self.inner(*args)
        self.sync()
        self.clock[0] += time.perf_counter() - start
        return out


def epoch(files, device, augment, amp, loss, workers, widths, bottleneck):
    """(epoch seconds, data seconds) of the second of two epochs (the first warms up cuDNN and the workers)."""
    torch.manual_seed(0)
    model = build_model(widths, bottleneck).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3,
                                  fused=True if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    loader = torch.utils.data.DataLoader(data.HIEDataset(files, TorchIOAugment() if augment == "torchio" else None),
                                         batch_size=4, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    criterion = make_loss(loss, check_target=False)
    for _ in range(2):
        clock = [0.0]
        sync()
        start = time.perf_counter()
        train.train_epoch(model, Timed(loader, clock, sync), criterion, optimizer, device, scaler, amp=amp,
                          augment=Timed(TorchAugment(), clock, sync) if augment == "torch" else None)
        sync()
        seconds = time.perf_counter() - start
    return seconds, clock[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, nargs=3, help="default 192 192 32 on CUDA, 96 96 32 on a CPU")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--loss", default="tversky_hdt")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--widths", type=int, nargs=3, default=train.PAPER["widths"])
    ap.add_argument("--bottleneck", type=int, default=train.PAPER["bottleneck"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    grid = tuple(args.grid or ((192, 192, 32) if device.type == "cuda" else (96, 96, 32)))
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    header(f"train: one epoch of {args.cases} cases (batch 4) at {grid}, widths {tuple(args.widths)} + "
           f"{args.bottleneck}, {args.loss}, {device}{name}, {args.workers} loader workers")
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.synthesize(Path(tmp) / "bonbid", args.cases, 0, seed=1,
                               size_range=((160, 160, 43), (160, 160, 43)))
        files = data.prepare(root / data.SPLITS[0], Path(tmp) / "cache", grid)
        precisions = [False, True] if device.type == "cuda" else [False]
        print(f"{'augmentation':12s} {'precision':10s} {'s/epoch':>8s} {'data s':>8s} {'step s':>8s} {'data share':>10s}")
        for augment in ("torchio", "torch", "none"):
            for amp in precisions:
                seconds, waiting = epoch(files, device, augment, amp, args.loss, args.workers, tuple(args.widths),
                                         args.bottleneck)
                precision = str(amp_dtype(device)).removeprefix("torch.") if amp else "float32"
                print(f"{augment:12s} {precision:10s} {seconds:8.2f} {waiting:8.2f} {seconds - waiting:8.2f} "
                      f"{waiting / seconds:10.0%}", flush=True)


if __name__ == "__main__":
    main()
