"""The copy recipes: each floor-1 file's docstring says exactly what to copy for one loss or
metric. Every recipe is built here from exactly the pieces it lists (and the file's imports),
in a temporary folder, and run in a fresh interpreter that cannot import the project: the
copy must give the project's values, or fail with the NameError a missing piece gives."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPE = re.compile(r"^    (\w+) = (.+)$")


def recipes(module):
    """{recipe: [piece names]} of a module's "To copy ..." block, the recipes it names resolved."""
    doc = ast.get_docstring(ast.parse((ROOT / module).read_text()))
    block = doc[doc.index("To copy"):].splitlines()[1:]
    lines = []
    for line in block:
        if RECIPE.match(line):
            lines.append(line)
        elif line.startswith("        ") and lines:               # a continuation
            lines[-1] += " " + line.strip()
        elif line.strip() and lines:                              # the block's end (before it: its heading)
            break
    found = {}
    for line in lines:
        name, body = RECIPE.match(line).groups()
        pieces = []
        for term in body.split("+"):
            term = term.strip()
            pieces += found[term] if term in found else [p.strip() for p in term.split(",")]
        found[name] = list(dict.fromkeys(pieces))
    return found


def pieces_source(module, names):
    """The module's imports (an optional one guarded by try) and the top-level definitions
    ``names``, in the file's order."""
    source = (ROOT / module).read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    out, wanted = [], set(names)
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or \
                isinstance(node, ast.Try) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in node.body):
            out.append("\n".join(lines[node.lineno - 1:node.end_lineno]))
            continue
        defined = {node.name} if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)}
        if defined & wanted:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            out.append("\n".join(lines[start - 1:node.end_lineno]))
            wanted -= defined
    assert not wanted, f"{module}: the recipe names {sorted(wanted)}, which the file does not define"
    return "\n\n\n".join(out) + "\n"


def run_isolated(tmp_path, script):
    """Run ``script`` with only ``tmp_path`` added to the path, from there, isolated (-I: no
    current directory, no PYTHONPATH): the project's files cannot be imported."""
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n{script}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# what each recipe is run on, in the copy and in the project: the same arrays, saved once
PRELUDE = """
import numpy as np, torch
f = np.load("inputs.npz")
x, y, p, g, s = torch.from_numpy(f["x"]), torch.from_numpy(f["y"]), f["p"], f["g"], (1.2, 0.9, 2.5)
"""
CASES = {
    "losses.py": {"dice": "DiceLoss()(x, y).item()", "tversky": "TverskyLoss()(x, y).item()",
                  "dice_focal": "DiceFocalLoss()(x, y).item()", "hdt": "HausdorffDTLoss()(x, y).item()",
                  "tversky_hdt": "LogCompoundLoss(TverskyLoss())(x, y).item()",
                  "dice_focal_hdt": "LogCompoundLoss(DiceFocalLoss())(x, y).item()",
                  "blob_dice": "BlobLoss(DiceLoss())(x, y).item()"},
    "metrics.py": {"dice": "[dice(p, g)]", "msd": "[mean_surface_distance(p, g, s), mean_surface_distance(p, g, s, 'surfel')]",
                   "nsd": "[normalized_surface_dice(p, g, s, 1.5), normalized_surface_dice(p, g, s, 1.5, 'surfel')]",
                   "evaluate_case": "[evaluate_case(p, g, s)['msd'], evaluate_case(p[3], g[3], s[:2], surfaces='surfel')['nsd']]",
                   "challenge_case": "[challenge_case(p, g, s, version=v)['msd'] for v in (2023, 2024)]",
                   "summarize": "[summarize([{'dice': 0.5, 'msd': 1.0, 'nsd': 0.2, 'pred_voxels': 1, "
                                "'target_voxels': 1}])['dice']['mean']]"},
    "lesions.py": {"reference": "lesion_metrics(p, g, s, backend='reference')", "lesion_metrics": "lesion_metrics(p, g, s)",
                   "components": "[v.tolist() if hasattr(v, 'tolist') else v for v in components(p)]",
                   "remove_small_lesions": "int(remove_small_lesions(p, s, 5.0).sum())",
                   "burden": "burden_group(burden(g, np.ones(g.shape)))", "size_bin": "[size_bin(50.0), grid_bin(3.0)]"},
}


@pytest.mark.parametrize("module", sorted(CASES))
def test_every_recipe_runs_alone_and_gives_the_projects_value(module, tmp_path, monkeypatch):
    import importlib
    import numpy as np
    cases, found = CASES[module], recipes(module)
    assert set(cases) <= set(found), f"{module} has no recipe for {sorted(set(cases) - set(found))}"
    for name in cases:
        (tmp_path / f"copy_{name}.py").write_text(pieces_source(module, found[name]))
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "inputs.npz", x=rng.normal(size=(2, 1, 10, 9, 6)).astype(np.float32),
             y=(rng.random((2, 1, 10, 9, 6)) > 0.8).astype(np.float32),
             p=rng.random((14, 12, 8)) > 0.85, g=rng.random((14, 12, 8)) > 0.8)
    project = module[:-3]
    script = "\n".join([
        "import json, importlib", f"try:\n    import {project}\n    raise SystemExit('the project is importable')",
        "except ImportError:\n    pass", PRELUDE, "out = {}",
        *[f"out[{n!r}] = eval({expr!r}, {{**vars(importlib.import_module('copy_{n}')), **globals()}})"
          for n, expr in cases.items()],
        "print(json.dumps(out))"])
    copied = run_isolated(tmp_path, script)
    monkeypatch.chdir(tmp_path)
    env = {}
    exec(PRELUDE, env)
    for name, expr in cases.items():
        ours = eval(expr, {**vars(importlib.import_module(project)), **env})
        assert copied[name] == close(ours), f"{module}: {name}"


def close(value):
    """``value`` for ==, its numbers to 1e-6 relative (a copy computes the same, in another process)."""
    if isinstance(value, dict):
        return {k: close(v) for k, v in value.items()}
    if isinstance(value, list):
        return [close(v) for v in value]
    return pytest.approx(value, rel=1e-6, nan_ok=True) if isinstance(value, float) else value


def test_a_recipe_missing_a_piece_fails_with_a_name_error(tmp_path):
    found = recipes("losses.py")
    (tmp_path / "copy_short.py").write_text(pieces_source("losses.py", [p for p in found["tversky_hdt"] if p != "_part"]))
    result = subprocess.run([sys.executable, "-I", "-c", "import sys, torch; sys.path.insert(0, '.'); import copy_short; "
                             "copy_short.LogCompoundLoss(copy_short.TverskyLoss())(torch.zeros(1, 1, 4, 4), "
                             "torch.zeros(1, 1, 4, 4))"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "NameError: name '_part' is not defined" in result.stderr
