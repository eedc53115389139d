"""What was run (SPEC 10: a report opens with it): the code's version and a study's wall time
summed over the invocations that resumed it, with a progress line per finished run.

    git_commit()             -> "<sha>[ with uncommitted changes]" or "not a git checkout"
    Clock(out, total)        -> .finished(k, what) logs "run k of N (...), elapsed, about T left"
"""
import json
import subprocess
import time

from plumbing import HERE, log, write_json


class Clock:
    """The study's wall time, summed over the invocations that resumed it (OUT/elapsed.json,
    brought up to date after each run, so a killed invocation counts up to its last run), and
    the progress line: run k of N, elapsed, about T left."""

    def __init__(self, out, total):
        self.path, self.total = out / "elapsed.json", total
        old = json.loads(self.path.read_text()) if self.path.exists() else {"seconds": 0.0, "invocations": 0}
        self.before, self.invocations = float(old["seconds"]), int(old["invocations"]) + 1
        self.start = self.mark = time.perf_counter()
        self.save()

    def seconds(self):
        return self.before + time.perf_counter() - self.start

    def save(self):
        write_json(self.path, {"seconds": self.seconds(), "invocations": self.invocations})

    def finished(self, k, what):
        """After run k (1-based) of this rank's share: log the progress and save the time."""
        now = time.perf_counter()
        left = (now - self.start) / k * (self.total - k)
        log(f"run {k} of {self.total} ({what}) done; elapsed {now - self.start:.0f} s this invocation, "
            f"{self.seconds():.0f} s in all; about {left:.0f} s left")
        self.save()


def git_commit():
    """The code's version: the git commit of the checkout (+ "with uncommitted changes"), or
    "not a git checkout"."""
    try:
        run = lambda *c: subprocess.run(["git", *c], cwd=HERE, capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode:
            return "not a git checkout"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
