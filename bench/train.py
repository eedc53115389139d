"""Seconds per training step of the paper's setup, fp32 against mixed precision.

    python bench/train.py [--size 192 192 32] [--loss tversky_hdt] [--steps 5] [--device cuda]

One step = forward, loss + L1, backward, clipping, AdamW, on a batch of 4 random 2-channel
volumes with sparse lesions: what an epoch of 85 cases costs is 22 such steps (plus data
loading and validation). Mixed precision (fp16 with a GradScaler) is timed on CUDA only:
bf16 autocast on a CPU without bf16 units is emulated and far slower than fp32.
"""
import argparse
import time

import numpy as np
import torch

from common import header, multifocal_lesion
from losses import make_loss
from unet3d import UNet3D


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=None, help="default 192 192 32 on CUDA, 32 32 16 on the CPU")
    ap.add_argument("--loss", default="tversky_hdt")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    size = tuple(args.size or ((192, 192, 32) if device.type == "cuda" else (32, 32, 16)))
    header(f"train step: batch 4 at {size}, {args.loss}, {device}"
           + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    target = torch.from_numpy(np.stack([multifocal_lesion(size, s) for s in range(4)])[:, None].astype(np.float32))
    image = torch.randn(4, 2, *size) - 2 * target
    image, target = image.to(device), target.to(device)
    criterion = make_loss(args.loss)
    for amp in (False, True) if device.type == "cuda" else (False,):
        torch.manual_seed(0)
        model = UNet3D().to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
        scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
        def step():
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(image)
            loss = criterion(logits.float(), target) + 1e-4 * sum(p.abs().sum() for p in model.parameters())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize()

        step()                                                    # warm-up (cuDNN autotune, allocator)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        per_step = (time.perf_counter() - start) / args.steps
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
        print(f"{'mixed precision' if amp else 'fp32':16s} {per_step:7.3f} s/step{peak}; "
              f"an epoch of 85 cases ~ {22 * per_step:6.1f} s of steps")


if __name__ == "__main__":
    main()
