"""What every command shares: one-line errors, logging, paths as shown, atomic writes,
the text / CSV / strict-JSON writers and number formatting. No SPEC section: plumbing.

Self-contained (the standard library only), imported by every file above the first floor.

    raise UsageError("--loss: expected one of ...; got 'dise'")   # the command prints one line, exits 2
    atomic_write(path, lambda tmp: torch.save(obj, tmp))         # the old file or the new one, never half
    write_csv(path, rows, columns); write_json(path, obj)         # atomic, strict JSON ("inf" for inf)
"""
import argparse
import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent          # the project root: default data/, cache/ and runs/ live here


class UsageError(Exception):
    """A problem with what the user asked for: the command prints it in one line and exits 2."""


def library_error(e):
    """A library's complaint (SimpleITK's, ITK's) as one short phrase: its ERROR line, without the
    C++ source location, the object's address or the file's folder (the caller names the file)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    said = next((m[1] for m in (re.search(r"(?:sitk::|ITK )ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(.*)", line)
                                for line in lines) if m), lines[-1] if lines else type(e).__name__)
    said = re.sub(r'"?(/[^"\s]+)"?', lambda m: Path(m[1]).name, said).removesuffix(" for reading.")
    reason = next((line for line in lines if line.startswith("Reason:")), None)
    return f"{said} ({reason})" if reason else said


MAX_LISTED = 10       # problems spelled out in one error line; the rest are counted


def report(where, problems):
    """One line naming every problem (the first MAX_LISTED of them, and how many more)."""
    listed = " | ".join(problems[:MAX_LISTED])
    more = f" | ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{where}: {len(problems)} problem(s): {listed}{more}"


class DefaultsHelp(argparse.HelpFormatter):
    """Each flag's help ends with its default, unless the help already says what it is
    (a default that depends on the machine or another flag) or there is none to give."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.required or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        value = shown(action.default) if isinstance(action.default, Path) else action.default
        return f"{text} (default: {' '.join(map(str, value)) if isinstance(value, (list, tuple)) else value})"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one line and status 2 (no usage dump), and
    every flag's help shows its default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelp)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def log(msg):
    print(msg, flush=True)


def shown(path):
    """``path`` relative to the working directory where it lies inside it (for log lines)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


# --------------------------------------------------------------------------- a folder that cannot be written

WRITE_ERRORS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
                errno.EDQUOT: "disk quota exceeded"}
TEMPORARY = re.compile(r"^\.(.+)\.\d+\.[0-9a-f]{8}\.tmp")        # staged()'s and atomic_dir()'s names


def unwritable(e):
    """The one line for an OSError of writing (permission, read-only file system, no space),
    naming the path (a temporary file as the file it stood for); None for any other error."""
    if not isinstance(e, OSError) or e.errno not in WRITE_ERRORS:
        return None
    path = Path(e.filename) if e.filename else None
    if path is not None and TEMPORARY.match(path.name):
        path = path.with_name(TEMPORARY.match(path.name)[1])
    return f"{path if path is not None else 'the output'}: cannot write there: {WRITE_ERRORS[e.errno]}"


# --------------------------------------------------------------------------- one writer per folder

LOCK = ".lock"


def _alive(holder):
    """Is the process that wrote a lock still running? Another machine's: assumed so."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError):
        return True
    return True


@contextlib.contextmanager
def hold_lock(folder, what="run"):
    """One writer per folder (a run, a study): FOLDER/.lock holds this process's pid, host,
    command and torchrun group while the block runs. A second process into the same folder
    ends with a UsageError naming the holder; a lock whose process is gone is taken over (the
    log says so); the same process (or its torchrun group) holding it already passes. A folder
    the lock made and nothing else filled is removed again."""
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path, mine = folder / LOCK, {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "group": os.environ.get("TORCHELASTIC_RUN_ID", "")}
    taken = False
    for _ in range(50):
        try:
            with open(path, "x") as fh:
                json.dump(mine, fh)
            taken = True
            break
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):          # being written this instant: look again
                time.sleep(0.05)
                continue
            if (holder.get("pid"), holder.get("host")) == (mine["pid"], mine["host"]) or \
                    (mine["group"] and holder.get("group") == mine["group"]):
                break                                               # ours already: nested, or a torchrun rank
            if _alive(holder):
                raise UsageError(f"{folder}: another {what} is writing here (pid {holder.get('pid')} on "
                                 f"{holder.get('host')}, since {holder.get('started')}: {holder.get('command')}); "
                                 f"wait for it to end, or use another --out")
            log(f"{shown(folder)}: taking over the lock of pid {holder.get('pid')} ({holder.get('command')}), which "
                f"is no longer running")
            path.unlink(missing_ok=True)
    try:
        yield
    finally:
        if taken:
            path.unlink(missing_ok=True)
            if made and not any(folder.iterdir()):
                folder.rmdir()


# --------------------------------------------------------------------------- atomic writes

def _suffix(path):
    """The file name's format suffix (.nii.gz counts as one): image writers choose by it."""
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def staged(path, write):
    """Call ``write(tmp)`` on a new temporary file beside ``path`` (same suffix, so format
    sniffing writers still work) and return the temporary file's path, for the caller to
    rename over ``path``. The file is created with 0666 less the umask, as ``open`` would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{_suffix(path)}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(str(tmp))
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in WRITE_ERRORS:      # say which file, not the temporary one
            raise OSError(e.errno, WRITE_ERRORS[e.errno], str(path)) from None
        raise
    return tmp


def atomic_write(path, write):
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``:
    a killed process leaves the old file or the new one, never half of one."""
    os.replace(staged(path, write), path)
    return Path(path)


def atomic_dir(path, fill, merge=False):
    """Make directory ``path`` by ``fill(tmp)`` on a temporary directory beside it, then
    rename: a killed process leaves no half directory. ``merge``: where ``path`` exists
    already, the files ``fill`` made move into it one rename each, once all are made (a
    failure leaves it as it was). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.mkdir(tmp, 0o777)                                # the umask applies, as for any new directory
    try:
        fill(tmp)
        if merge and path.is_dir():
            for f in sorted(tmp.iterdir()):
                os.replace(f, path / f.name)
            tmp.rmdir()
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# --------------------------------------------------------------------------- writers

def write_text(path, text):
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_csv(path, rows, columns):
    """One row per dict, the given columns (other keys ignored), atomically."""
    buffer = io.StringIO()
    w = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return write_text(path, buffer.getvalue())


def strict(obj):
    """``obj`` with every non-finite float as the string "inf", "-inf" or "nan": strict
    JSON (no Infinity/NaN tokens), and float(s) reads each back."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path, obj):
    return write_text(path, json.dumps(strict(obj), indent=2, default=str, allow_nan=False) + "\n")


def fmt(v, digits=None):
    """A value as the logs and tables show it: Inf / NaN, a float to ``digits`` places (or
    %g), a grid or tuple as 32x32x16, anything else as str."""
    if isinstance(v, (tuple, list)):
        return "x".join(fmt(x, digits) for x in v)
    if isinstance(v, float):
        if math.isinf(v):
            return "Inf" if v > 0 else "-Inf"
        if math.isnan(v):
            return "NaN"
        return f"{v:g}" if digits is None else f"{v:.{digits}f}"
    return str(v)
