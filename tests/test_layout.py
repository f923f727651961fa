"""The house stays one house (issue 22): no import cycles, no private names taken across modules, short modules
(a long one says why in its docstring), the two sides apart (what runs in the image never imports the client, the
client takes only the shared contract from the image's side), argparse only where a command line is parsed.
Read from the source with `ast`, so a regression fails here, in the fast tier, the day it is written."""

from __future__ import annotations

import ast
import re

import pytest

from .conftest import REPO

SRC = REPO / "src"
LIMIT, SAY_WHY = 450, 400
# argparse outside bincounter.cli, and why: each parses or defines a command line of its own
ARGPARSE_OUTSIDE_CLI = {
    "bincounter.train_config": "the trainer's flags, next to TrainConfig (read by `train` and the hp checks)",
    "bincounter.sagemaker.contract": "the hyperparameter strings of the SageMaker contract, as parser arguments",
    "bincounter.sagemaker.train_entry": "the image's `train` entry point parses SageMaker's hyperparameters",
    "bincounter.sm.hyperparameters": "checks --hp against the trainer's own parser (one definition of the flags)",
}


def _modules() -> dict[str, ast.Module]:
    mods = {}
    for path in sorted((SRC / "bincounter").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = (path, ast.parse(path.read_text()))
    return mods


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    path = MODULES[module][0]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import anywhere in the module, functions too."""
    out = []
    for node in ast.walk(MODULES[module][1]):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _target(module, node)
            for a in node.names:
                full = f"{target}.{a.name}"
                out.append((full, None) if full in MODULES else (target, a.name))
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_module_takes_a_private_name_of_another():
    private = []
    for m in MODULES:
        aliases = {}
        for target, name in _imports(m):
            if name and target in MODULES and name.startswith("_") and not name.startswith("__"):
                private.append(f"{m} imports {target}.{name}")
        for node in ast.walk(MODULES[m][1]):
            if isinstance(node, ast.ImportFrom):
                target = _target(m, node)
                aliases.update({a.asname or a.name: f"{target}.{a.name}" for a in node.names
                                if f"{target}.{a.name}" in MODULES})
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
        for node in ast.walk(MODULES[m][1]):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{m} uses {aliases[node.value.id]}.{node.attr}")
    assert private == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_is_short_or_says_why(module):
    path, tree = MODULES[module]
    lines = path.read_text().count("\n")
    assert lines <= LIMIT, f"{path.relative_to(REPO)}: {lines} lines, over {LIMIT}: split it"
    if lines > SAY_WHY:
        doc = ast.get_docstring(tree) or ""
        assert re.search(r"about \d+ lines", doc), (
            f"{path.relative_to(REPO)}: {lines} lines; its docstring must say why it is one module "
            f"('about N lines: <why>')")


def test_the_image_side_never_imports_the_client_side():
    """bincounter.sagemaker runs inside the image; bincounter.sm on the user's machine. The client reads only the
    shared contract constants from the image's side."""
    crossing = []
    for m in MODULES:
        for target, _ in _imports(m):
            if m.startswith("bincounter.sagemaker") and target.startswith("bincounter.sm"):
                crossing.append(f"{m} -> {target}")
            if (m.startswith("bincounter.sm") and target.startswith("bincounter.sagemaker")
                    and target != "bincounter.sagemaker.contract"):
                crossing.append(f"{m} -> {target}")
    assert crossing == []


def test_argparse_lives_in_the_cli_and_where_a_command_line_is_defined():
    users = {m for m in MODULES for target, _ in _imports(m) if target == "argparse" or target.startswith("argparse.")}
    outside = {m for m in users if m != "bincounter.cli" and not m.startswith("bincounter.cli.")}
    assert outside <= set(ARGPARSE_OUTSIDE_CLI), sorted(outside - set(ARGPARSE_OUTSIDE_CLI))
    assert set(ARGPARSE_OUTSIDE_CLI) <= MODULES.keys()  # a module that moved or went: its entry goes too


def test_architecture_has_a_row_for_every_module():
    """docs/ARCHITECTURE.md: one table row per module (a row may name a few small ones), so a new module is placed
    on the map the day it is added. The bare package markers (`__init__.py` with no code, `__main__.py`) need none."""
    rows = [ln.split("|")[1] for ln in (REPO / "docs" / "ARCHITECTURE.md").read_text().splitlines()
            if ln.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([\w/]+\.py)`", row)}
    missing = []
    for path, tree in MODULES.values():
        rel = path.relative_to(SRC / "bincounter").as_posix()
        bare = path.name == "__main__.py" or (path.name == "__init__.py" and len(tree.body) <= 1
                                              and path.parent.name != "bincounter")
        if not bare and rel not in named:
            missing.append(rel)
    assert missing == [], f"docs/ARCHITECTURE.md has no row for {missing}"
