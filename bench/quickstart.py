"""The quickstart as a new user runs it: wall time, where it goes, and the best validation
Dice per seed, on the grid and in each case's own geometry.

    python bench/quickstart.py [--seeds 0 1 2 ... 9] [--loss tversky_hdt] [--epochs 100]

Each seed runs `python train.py --loss LOSS --epochs 100 --seed S` in a fresh copy of the
project (no data/, no cache/, no runs/), so its wall time includes making the synthetic
set and preprocessing it, as on a fresh clone. Without CUDA that is the CPU demo profile.
The split comes from the run's summary.json: data (synthesis and preprocessing), steps,
validation, checkpoints, curves; "other" is the rest of the wall time (starting Python and
torch, the final evaluation in each case's own geometry). The last lines give the spread
over the seeds (min, median, max): another CPU gives other digits (its kernels differ), so
a figure to compare is a range, not one seed's four decimals.
"""
import argparse
import json
import os
import shutil
import statistics
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
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--loss", default="tversky_hdt")
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    header(f"quickstart: python train.py --loss {args.loss} --epochs {args.epochs} --seed S, in a fresh copy")
    parts = ("data", "steps", "validation", "checkpoints", "curves")
    print(f"{'seed':>4}  {'wall s':>7}  " + "  ".join(f"{p:>11s}" for p in parts) + f"  {'other':>6}  {'epochs':>6}  "
          f"{'best':>4}  {'Dice grid':>9}  {'native':>6}", flush=True)
    done = []
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
            clock = summary["time"]
            print(f"{seed:>4}  {wall:7.1f}  " + "  ".join(f"{clock[p]:11.1f}" for p in parts)
                  + f"  {wall - sum(clock.values()):6.1f}  {summary['epochs']:>6}  {summary['best_epoch']:>4}  "
                  f"{summary['best_val_grid_dice']:9.4f}  {summary['best_val_native_dice']:6.4f}", flush=True)
            done.append({"wall s": wall, "epochs": summary["epochs"], "Dice grid": summary["best_val_grid_dice"],
                         "native": summary["best_val_native_dice"]})
            if seed == args.seeds[0]:
                log = [l for l in result.stdout.splitlines() if not l.startswith("epoch")]
                print("# first seed's log, but the epoch lines:\n#   " + "\n#   ".join(log), flush=True)

    if done:
        print(f"# spread over {len(done)} seed(s): min / median / max")
        for k in done[0]:
            v = [d[k] for d in done]
            digits = 1 if k == "wall s" else 0 if k == "epochs" else 3
            print(f"#   {k:9s} " + " / ".join(f"{x:.{digits}f}" for x in (min(v), statistics.median(v), max(v))))


if __name__ == "__main__":
    main()
