"""The paper's training step and epoch on this machine.

    python bench/train.py [--part steps|epoch|all] [--grid 192 192 32] [--losses tversky tversky_hdt]
                          [--compile] [--cases 16] [--workers 0]

Steps: ms per training step (forward, loss, backward, clipping, AdamW: train.train_epoch
over N copies of one batch of 4 already on the device) for each loss, in fp32 and bf16
(CUDA), contiguous and channels_last_3d, eager and (--compile) torch.compile'd; the TFLOP/s
achieved, from the FLOPs of one forward and backward (torch.utils.flop_counter); and the
distance field of the hdt losses on its own (the (8,1,X,Y,Z) masks of one step's d_p and
d_g).

Epoch: first the overhead of an epoch, everything but its steps (validation, checkpoints,
metrics, curves), from train.run's own clock over a few epochs of the CPU demo (or on CUDA,
the paper's) profile on a synthetic set; then one epoch = train.train_epoch over N synthetic
cases (batch 4) through the real loader,
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

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import header, multifocal_lesion  # first: puts the repository on sys.path
import data
import synthetic
import train
from augment import TorchAugment, TorchIOAugment
from checkpoints import build_model
from devices import Compiled, amp_dtype, autocast
from losses import distance_field, edt, make_loss


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
    channels_last = device.type == "cuda"                      # as train.py runs it
    model = build_model(widths, bottleneck).to(device, memory_format=torch.channels_last_3d if channels_last
                                                 else torch.contiguous_format)
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
                          augment=Timed(TorchAugment(), clock, sync) if augment == "torch" else None,
                          channels_last=channels_last)
        sync()
        seconds = time.perf_counter() - start
    return seconds, clock[0]


def step_batch(grid, device):
    """One batch of 4: z-scored noise images and sparse multifocal lesions, on ``device``."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(4, 2, *grid, generator=g)
    label = torch.from_numpy(np.stack([multifocal_lesion(grid, s) for s in range(4)])[:, None].astype(np.float32))
    return image.to(device), label.to(device)


def step_ms(loss, grid, device, widths, bottleneck, amp, channels_last, compile_, steps):
    """(ms per training step, FLOPs of one forward + backward, warm-up seconds) of one configuration."""
    torch.manual_seed(0)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = build_model(widths, bottleneck).to(device, memory_format=layout)
    forward = Compiled(model) if compile_ else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3,
                                  fused=True if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    image, label = step_batch(grid, device)
    batches = [(image, label, None)] * steps
    criterion = make_loss(loss, check_target=False)
    run = lambda b: train.train_epoch(model, b, criterion, optimizer, device, scaler, amp=amp, forward=forward,
                                      channels_last=channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    run(batches[:3])                                          # warm-up: cuDNN's choice, compiling
    sync()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    run(batches)
    sync()
    ms = (time.perf_counter() - start) / steps * 1e3
    # the network's FLOPs, forward and backward (the loss's are noise beside them; and a compiled
    # distance field would be traced again under the counting mode)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, amp):
            logits = model(image.contiguous(memory_format=layout))
        logits.float().mean().backward()
    return ms, counter.get_total_flops(), warm


def steps_table(args, device, grid):
    torch.backends.cudnn.benchmark = device.type == "cuda"
    precisions = [False, True] if device.type == "cuda" else [False]
    print(f"{'loss':12s} {'precision':9s} {'layout':14s} {'mode':8s} {'ms/step':>8s} {'TFLOP/s':>8s} {'warm-up s':>9s}")
    for loss in args.losses:
        for amp in precisions:
            for channels_last in (False, True):
                for compile_ in ([False, True] if args.compile else [False]):
                    if compile_ and not (channels_last and (amp or device.type != "cuda")):
                        continue                           # compiled: the fastest eager configuration only
                    ms, flops, warm = step_ms(loss, grid, device, args.widths, args.bottleneck, amp, channels_last,
                                              compile_, args.steps)
                    precision = str(amp_dtype(device)).removeprefix("torch.") if amp else "float32"
                    print(f"{loss:12s} {precision:9s} {'channels_last' if channels_last else 'contiguous':14s} "
                          f"{'compiled' if compile_ else 'eager':8s} {ms:8.1f} {flops / ms / 1e9:8.2f} {warm:9.1f}", flush=True)
    _, label = step_batch(grid, device)
    masks = torch.cat([label, label.roll(2, 2)]) > 0.5         # d_g and d_p of one step: 8 masks
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        distance_field(masks)
    sync()
    start = time.perf_counter()
    for _ in range(10):
        distance_field(masks)
    sync()
    print(f"distance field of one hdt step ({tuple(masks.shape)}, {'torch' if device.type == 'cuda' else 'edt' if edt else 'reference'} "
          f"backend): {(time.perf_counter() - start) / 10 * 1e3:.1f} ms")


def overhead_table(args, device):
    """Per-epoch overhead (all but the steps) of train.run itself, over ``args.overhead_epochs``
    epochs, with the profile the quickstart (CPU) or the paper (CUDA) gets."""
    with tempfile.TemporaryDirectory() as tmp:
        n_train, n_val = (64, 16) if device.type != "cuda" else (48, 4)
        root = synthetic.synthesize(Path(tmp) / "bonbid", n_train, n_val, seed=0)
        argv = ["--loss", args.losses[-1], "--data", str(root), "--out", str(Path(tmp) / "run"), "--cache",
                str(Path(tmp) / "cache"), "--epochs", str(args.overhead_epochs), "--patience", "100",
                "--device", str(device)] + (["--cpu-demo"] if device.type != "cuda" else [])
        a = train.parser().parse_args(argv)
        clock = train.run(a)["time"]
        epoch = sum(clock[k] for k in ("steps", "validation", "checkpoints", "curves"))
        print(f"{args.overhead_epochs} epochs of {n_train} train / {n_val} val cases, {args.losses[-1]}, profile "
              f"{a.profile}, grid {tuple(a.size)}")
        for part in ("steps", "validation", "checkpoints", "curves"):
            print(f"  {part:12s} {clock[part]:7.2f} s  {clock[part] / epoch:6.1%}")
        print(f"overhead (all but the steps): {1 - clock['steps'] / epoch:.1%} of an epoch")


def epoch_table(args, device, grid):
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.synthesize(Path(tmp) / "bonbid", args.cases, 0, seed=1,
                                    size_range=((160, 160, 43), (160, 160, 43)))
        files = data.prepare(root / data.SPLITS[0], Path(tmp) / "cache", grid)
        precisions = [False, True] if device.type == "cuda" else [False]
        print(f"{'augmentation':12s} {'precision':10s} {'s/epoch':>8s} {'data s':>8s} {'step s':>8s} {'data share':>10s}")
        for augment in ("torchio", "torch", "none"):
            for amp in precisions:
                seconds, waiting = epoch(files, device, augment, amp, args.losses[-1], args.workers,
                                         tuple(args.widths), args.bottleneck)
                precision = str(amp_dtype(device)).removeprefix("torch.") if amp else "float32"
                print(f"{augment:12s} {precision:10s} {seconds:8.2f} {waiting:8.2f} {seconds - waiting:8.2f} "
                      f"{waiting / seconds:10.0%}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("steps", "epoch", "all"), default="all")
    ap.add_argument("--grid", type=int, nargs=3, help="default 192 192 32 on CUDA; on a CPU the CPU demo's 32 32 16 "
                                                      "(steps), 96 96 32 (epoch)")
    ap.add_argument("--cases", type=int, default=16, help="epoch: synthetic cases")
    ap.add_argument("--steps", type=int, default=20, help="steps: timed steps per configuration")
    ap.add_argument("--losses", nargs="+", default=["tversky", "tversky_hdt"])
    ap.add_argument("--compile", action="store_true", help="steps: also torch.compile'd")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--overhead-epochs", type=int, default=4, help="epoch: epochs of train.run for the overhead")
    ap.add_argument("--widths", type=int, nargs=3, help="default: the paper's; steps on a CPU: the CPU demo's")
    ap.add_argument("--bottleneck", type=int, help="default: the paper's; steps on a CPU: the CPU demo's")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    small = device.type != "cuda" and args.part == "steps"        # a CPU step of the paper's network takes seconds
    profile = train.CPU_DEMO if small else train.PAPER
    args.widths, args.bottleneck = args.widths or profile["widths"], args.bottleneck or profile["bottleneck"]
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    cuda = device.type == "cuda"
    if args.part in ("steps", "all"):
        grid = tuple(args.grid or ((192, 192, 32) if cuda else train.CPU_DEMO["size"]))
        header(f"train steps: batch 4 at {grid}, widths {tuple(args.widths)} + {args.bottleneck}, {device}{name}")
        steps_table(args, device, grid)
    if args.part in ("epoch", "all"):
        grid = tuple(args.grid or ((192, 192, 32) if cuda else (96, 96, 32)))
        header(f"train: per-epoch overhead of train.run, {device}{name}")
        overhead_table(args, device)
        header(f"train: one epoch of {args.cases} cases (batch 4) at {grid}, widths {tuple(args.widths)} + "
               f"{args.bottleneck}, {args.losses[-1]}, {device}{name}, {args.workers} loader workers")
        epoch_table(args, device, grid)

if __name__ == "__main__":
    main()
