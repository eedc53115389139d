"""The README and docs/ as a new user reads them: every relative link and image resolves, every
`python train.py ...` / `python hie_ref.py SUB ...` command shown uses a subcommand and flags
that exist, and the README's set-up block is the one .ci/run runs."""
import argparse
import re
import shlex
from pathlib import Path

import pytest

import hie_ref
import train

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def shown_commands(text):
    """Every `python train.py ...` and `... hie_ref.py SUB ...` command in the page's code blocks,
    continuation lines joined, comments and [optional] brackets removed."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if re.search(r"\b(train|hie_ref)\.py\b", line) and line.startswith(("python", "torchrun", "srun")):
                commands.append(line.replace("[", " ").replace("]", " ").replace("|", " "))
    return commands


def flags_of(parser):
    return {s for action in parser._actions for s in action.option_strings}


def subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def check(command):
    """Problems of one shown command against the parsers (None when it is right)."""
    words = shlex.split(command)
    script = next(i for i, w in enumerate(words) if w.endswith(("train.py", "hie_ref.py")))
    words = words[script:]
    if words[0].endswith("train.py"):
        parser, rest = train.parser(), words[1:]
    else:
        commands = subparsers(hie_ref.parser())
        if len(words) < 2 or words[1] not in commands:
            return f"{command}: no subcommand {words[1] if len(words) > 1 else ''!r}"
        parser, rest = commands[words[1]], words[2:]
    unknown = [w for w in rest if w.startswith("--") and w.split("=")[0] not in flags_of(parser)]
    return f"{command}: no flag {', '.join(unknown)}" if unknown else None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_exists(page):
    commands = shown_commands(page.read_text())
    problems = [p for p in map(check, commands) if p]
    assert not problems, "; ".join(problems)


def test_the_checker_catches_a_wrong_command():
    assert check("python hie_ref.py evaluate --checkpoint x --nonsense") is not None
    assert check("python hie_ref.py frobnicate") is not None
    assert check("python train.py --loss dice --no-such-flag 1") is not None
    assert check("torchrun --nproc_per_node 8 hie_ref.py study --folds 5") is None


def test_the_readme_has_commands_and_every_page_has_some_text():
    assert len(shown_commands((ROOT / "README.md").read_text())) >= 15
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    for page in PAGES[1:]:
        assert page.read_text().splitlines()[0].startswith("# "), f"{page.name} opens with its title"


def test_the_readme_set_up_block_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set up"):readme.index("## Quickstart")]
    block = re.search(r"```bash\n(.*?)```", setup, re.S)[1].strip().splitlines()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    position = [ci.index(line) for line in block]                 # each set-up command, in .ci/run, in order
    assert position == sorted(position)
