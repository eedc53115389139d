"""The house (STYLE.md): the root modules' imports only go down, read from their source
(ast, imports inside functions included)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = {p.stem: p for p in ROOT.glob("*.py")}
STANDALONE = ("losses", "metrics", "lesions", "unet3d", "plumbing", "stats")    # copy one file and it works
ALLOWED_STANDALONE = {"torch", "numpy", "scipy", "math", "warnings", "argparse", "csv", "io", "json", "os", "secrets",
                      "shutil", "pathlib", "__future__", "inspect", "re", "concurrent", "contextlib", "errno", "socket",
                      "sys", "time"}                # the standard library's, and the three
OPTIONAL = {"losses": {"edt"}}     # an accelerator imported under try: without it the file computes the same values


def imports(path):
    """Top-level package names of every import in ``path``, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("." * node.level + (node.module or ""))
            elif node.module:
                names.add(node.module.split(".")[0])
    return names


def optional_imports(path):
    """Package names imported, and nothing else done, in a ``try`` whose handler catches ImportError."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Try) and all(isinstance(n, ast.Import) for n in node.body) and \
                any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers):
            names |= {a.name.split(".")[0] for n in node.body for a in n.names}
    return names


GRAPH = {m: imports(p) & set(MODULES) - {m} for m, p in MODULES.items()}


def test_the_reader_sees_lazy_imports(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text("import os.path\ndef f():\n    import hie_ref\n    from data import x\n    from . import y\n")
    assert imports(source) == {"os", "hie_ref", "data", "."}


def test_an_optional_import_is_one_guarded_by_import_error(tmp_path):
    source = tmp_path / "optional.py"
    source.write_text("try:\n    import edt\nexcept ImportError:\n    edt = None\n"
                      "try:\n    import cc3d\nexcept Exception:\n    pass\n")
    assert optional_imports(source) == {"edt"} and imports(source) == {"edt", "cc3d"}


def test_nothing_imports_the_command_line():
    assert [m for m, deps in GRAPH.items() if "hie_ref" in deps] == []


def test_no_circles():
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    circles = sorted(m for m in GRAPH if m in reach(m))
    assert circles == [], f"modules on an import circle: {circles}"


@pytest.mark.parametrize("name", STANDALONE)
def test_standalone_modules_import_no_project_file(name):
    found, optional = imports(MODULES[name]), optional_imports(MODULES[name])
    assert found & set(MODULES) == set(), f"{name}.py imports project files {found & set(MODULES)}"
    assert not any(n.startswith(".") for n in found)
    assert optional == OPTIONAL.get(name, set()), f"{name}.py: optional imports {optional}"
    assert found - optional <= ALLOWED_STANDALONE, f"{name}.py imports {found - optional - ALLOWED_STANDALONE}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_file_is_one_chapter(name):
    text = MODULES[name].read_text()
    assert text.count("\n") <= 500, f"{name}.py has {text.count(chr(10))} lines"
    doc = ast.get_docstring(ast.parse(text))
    assert doc, f"{name}.py opens with no docstring"
    if name not in ("plumbing", "hie_ref", "figures", "stats"):
        assert "SPEC" in doc.split("\n\n")[0] or "SPEC" in doc, f"{name}.py: its docstring names no SPEC section"


def _flags(p):
    """(command, action) of every flag of a parser and its subcommands."""
    import argparse
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {c}", a) for c, a in _flags(sub))
        elif action.option_strings and action.dest != "help":
            yield "", action


def test_every_flag_says_what_it_does_and_its_default():
    import hie_ref
    import train
    for prog, p in (("train.py", train.parser()), ("hie_ref.py", hie_ref.parser())):
        for command, action in _flags(p):
            text = p.formatter_class("x")._get_help_string(action)
            where = f"{prog} {command}{action.option_strings[0]}"
            assert text, f"{where} has no help"
            if not (action.required or action.const is True):        # a value flag: its default is shown
                assert "default" in text, f"{where}: help shows no default: {text!r}"


def test_each_stated_default_is_the_one_the_code_uses():
    # a help that states its default in words must state the parser's (or, where the parser's is None and
    # the run fills it in, the value the run resolves): "--augment (default: torch on CUDA, torchio
    # otherwise)" outlived the code that chose so
    import re
    import torch
    import hie_ref
    import train
    from plumbing import shown
    resolved = train.parser().parse_args(["--loss", "dice"])
    train.apply_profile(resolved, torch.device("cpu"))
    augment = []
    for prog, p in (("train.py", train.parser()), ("hie_ref.py", hie_ref.parser())):
        for command, action in _flags(p):
            stated = re.search(r"\(default: ([^()]*(?:\([^()]*\)[^()]*)*)\)$", action.help or "")
            if not stated or action.const is True:
                continue
            stated, where = stated[1], f"{prog} {command}{action.option_strings[0]}"
            if action.default not in (None, False):
                value = shown(action.default) if hasattr(action.default, "parts") else action.default
                words = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
                assert stated.startswith(words), f"{where}: help says the default is {stated!r}, the parser's is {words!r}"
            elif action.dest == "augment":                       # train.py and each study run: filled in by the run
                assert stated == resolved.augment, f"{where}: help says {stated!r}, a run uses {resolved.augment!r}"
                augment.append(where)
    assert augment == ["train.py --augment", "hie_ref.py study --augment"], augment
