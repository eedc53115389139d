"""The quickstart as a new user runs it: wall time and best validation Dice per seed.

    python bench/quickstart.py [--seeds 0 1 2] [--loss tversky_hdt] [--epochs 100]

Each seed runs `python train.py --loss LOSS --epochs 100 --seed S` in a fresh copy of the
project (no data/, no cache/, no runs/), so its wall time includes making the synthetic
set and preprocessing it, as on a fresh clone. Without CUDA that is the CPU demo profile.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import header

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tuple(p.name for p in ROOT.glob("*.py"))         # the root modules: the whole product


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--loss", default="tversky_hdt")
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    header(f"quickstart: python train.py --loss {args.loss} --epochs {args.epochs} --seed S, in a fresh copy")
    print(f"{'seed':>4}  {'wall s':>7}  {'epochs':>6}  {'best epoch':>10}  {'best val Dice (grid)':>20}", flush=True)
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="hie-ref-quickstart-") as tmp:
            for name in PROJECT:
                shutil.copy(ROOT / name, tmp)
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "train.py", "--loss", args.loss, "--epochs", str(args.epochs),
                                     "--seed", str(seed)], cwd=tmp, capture_output=True, text=True,
                                    env={**os.environ, "TQDM_DISABLE": "1"})
            wall = time.perf_counter() - start
            if result.returncode != 0:
                print(f"{seed:>4}  failed with status {result.returncode}: {result.stderr.strip()[-300:]}")
                continue
            summary = json.loads((Path(tmp) / "runs" / args.loss / "summary.json").read_text())
            print(f"{seed:>4}  {wall:7.1f}  {summary['epochs']:>6}  {summary['best_epoch']:>10}  "
                  f"{summary['best_val_grid_dice']:>20.4f}", flush=True)
            if seed == args.seeds[0]:
                log = [l for l in result.stdout.splitlines() if not l.startswith("epoch")]
                print("# first seed's log, but the epoch lines:\n#   " + "\n#   ".join(log), flush=True)


if __name__ == "__main__":
    main()
