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
    """The module's imports and the top-level definitions ``names``, in the file's order."""
    source = (ROOT / module).read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    out, wanted = [], set(names)
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(ast.get_source_segment(source, node))
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


LOSSES = {"dice": "DiceLoss()", "tversky": "TverskyLoss()", "dice_focal": "DiceFocalLoss()",
          "hdt": "HausdorffDTLoss()", "tversky_hdt": "LogCompoundLoss(TverskyLoss())",
          "dice_focal_hdt": "LogCompoundLoss(DiceFocalLoss())", "blob_dice": "BlobLoss(DiceLoss())"}


def test_every_loss_recipe_runs_alone_and_gives_the_projects_value(tmp_path):
    import losses
    found = recipes("losses.py")
    assert set(LOSSES) <= set(found), f"losses.py has no recipe for {sorted(set(LOSSES) - set(found))}"
    for name in LOSSES:
        (tmp_path / f"copy_{name}.py").write_text(pieces_source("losses.py", found[name]))
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 10, 9, 6), (torch.rand(2, 1, 10, 9, 6) > 0.8).float()
    torch.save({"logits": logits, "target": target}, tmp_path / "batch.pt")
    script = "\n".join([
        "import json, importlib, torch",
        "try:\n    import losses\n    raise SystemExit('the project is importable: not an isolated copy')",
        "except ImportError:\n    pass",
        "b = torch.load('batch.pt')", "out = {}",
        *[f"m = importlib.import_module('copy_{n}')\nout[{n!r}] = eval({expr!r}, vars(m))(b['logits'], b['target']).item()"
          for n, expr in LOSSES.items()],
        "print(json.dumps(out))"])
    copied = run_isolated(tmp_path, script)
    for name in LOSSES:
        assert copied[name] == pytest.approx(losses.make_loss(name)(logits, target).item(), rel=1e-6), name


def test_a_recipe_missing_a_piece_fails_with_a_name_error(tmp_path):
    found = recipes("losses.py")
    (tmp_path / "copy_short.py").write_text(pieces_source("losses.py", [p for p in found["tversky_hdt"] if p != "_part"]))
    result = subprocess.run([sys.executable, "-I", "-c", "import sys, torch; sys.path.insert(0, '.'); import copy_short; "
                             "copy_short.LogCompoundLoss(copy_short.TverskyLoss())(torch.zeros(1, 1, 4, 4), "
                             "torch.zeros(1, 1, 4, 4))"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "NameError: name '_part' is not defined" in result.stderr


METRICS = {"dice": "[dice(p, g)]", "msd": "[mean_surface_distance(p, g, s), mean_surface_distance(p, g, s, 'surfel')]",
           "nsd": "[normalized_surface_dice(p, g, s, 1.5), normalized_surface_dice(p, g, s, 1.5, 'surfel')]",
           "evaluate_case": "[evaluate_case(p, g, s)['msd'], evaluate_case(p[3], g[3], s[:2], surfaces='surfel')['nsd']]",
           "challenge_case": "[challenge_case(p, g, s, version=v)['msd'] for v in (2023, 2024)]",
           "summarize": "[summarize([{'dice': 0.5, 'msd': 1.0, 'nsd': 0.2, 'pred_voxels': 1, 'target_voxels': 1}])"
                        "['dice']['mean']]"}


def test_every_metric_recipe_runs_alone_and_gives_the_projects_value(tmp_path):
    import numpy as np
    import metrics
    found = recipes("metrics.py")
    assert set(METRICS) <= set(found), f"metrics.py has no recipe for {sorted(set(METRICS) - set(found))}"
    for name in METRICS:
        (tmp_path / f"copy_{name}.py").write_text(pieces_source("metrics.py", found[name]))
    rng = np.random.default_rng(4)
    p, g = rng.random((14, 12, 8)) > 0.7, rng.random((14, 12, 8)) > 0.75
    np.savez(tmp_path / "masks.npz", p=p, g=g)
    script = "\n".join([
        "import json, importlib, numpy as np",
        "try:\n    import metrics\n    raise SystemExit('the project is importable: not an isolated copy')",
        "except ImportError:\n    pass",
        "f = np.load('masks.npz'); env = {'p': f['p'], 'g': f['g'], 's': (1.2, 0.9, 2.5)}", "out = {}",
        *[f"m = importlib.import_module('copy_{n}')\nout[{n!r}] = eval({expr!r}, {{**vars(m), **env}})"
          for n, expr in METRICS.items()],
        "print(json.dumps(out))"])
    copied = run_isolated(tmp_path, script)
    for name, expr in METRICS.items():
        ours = eval(expr, {**vars(metrics), "p": p, "g": g, "s": (1.2, 0.9, 2.5)})
        assert copied[name] == pytest.approx(ours, rel=1e-9), name


LESIONS = {"reference": "lesion_metrics(p, g, s, backend='reference')", "lesion_metrics": "lesion_metrics(p, g, s)",
           "remove_small_lesions": "int(remove_small_lesions(p, s, 5.0).sum())",
           "burden": "burden_group(burden(g, np.ones(g.shape)))", "size_bin": "[size_bin(50.0), grid_bin(3.0)]"}


def test_every_lesion_recipe_runs_alone_and_gives_the_projects_value(tmp_path):
    import numpy as np
    import lesions
    found = recipes("lesions.py")
    assert set(LESIONS) <= set(found), f"lesions.py has no recipe for {sorted(set(LESIONS) - set(found))}"
    for name in LESIONS:
        (tmp_path / f"copy_{name}.py").write_text(pieces_source("lesions.py", found[name]))
    rng = np.random.default_rng(6)
    p, g = rng.random((14, 12, 8)) > 0.93, rng.random((14, 12, 8)) > 0.9
    np.savez(tmp_path / "masks.npz", p=p, g=g)
    script = "\n".join([
        "import json, importlib, numpy as np",
        "try:\n    import lesions\n    raise SystemExit('the project is importable: not an isolated copy')",
        "except ImportError:\n    pass",
        "f = np.load('masks.npz'); env = {'p': f['p'], 'g': f['g'], 's': (1.2, 0.9, 2.5), 'np': np}", "out = {}",
        *[f"m = importlib.import_module('copy_{n}')\nout[{n!r}] = eval({expr!r}, {{**vars(m), **env}})"
          for n, expr in LESIONS.items()],
        "print(json.dumps(out))"])
    copied = run_isolated(tmp_path, script)
    for name, expr in LESIONS.items():
        ours = eval(expr, {**vars(lesions), "p": p, "g": g, "s": (1.2, 0.9, 2.5), "np": np})
        assert copied[name] == (pytest.approx(ours) if not isinstance(ours, dict) else
                                {k: pytest.approx(v, nan_ok=True) for k, v in ours.items()}), name
