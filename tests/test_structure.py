"""The package's structure as rules: imports point one way (down the layers below, never up) with no
cycle, a recipe is two files that nothing else names, and no core module branches on a method."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# lowest first: a module imports only from its own layer or lower ones
LAYERS = [
    ["errors", "registry", "plugins", "preemption", "precision"],
    ["config", "shards", "kernels"],
    ["datasets", "data", "models", "losses", "metrics", "distributed", "checkpoint", "optim", "run",
     "released"],
    ["recipes", "engine"],
    ["builder", "checkpointer"],
    ["trainer"],
    ["train", "evaluate", "predict", "report", "pipeline", "cli", "convert", "launch"],
]
# within a layer, what a part may not import all the same (STYLE.md's boundaries)
FORBIDDEN = {"data": ("models", "losses", "kernels", "metrics"), "models": ("losses", "data")}


def modules() -> dict[str, Path]:
    """'fastmlic.x.y' -> its file, `kernels/` installed as fastmlic.kernels."""
    found = {}
    for root, prefix in ((ROOT / "fastmlic", "fastmlic"), (ROOT / "kernels", "fastmlic.kernels")):
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((prefix, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(mods: dict[str, Path]) -> set[tuple[str, str]]:
    """(importer, imported) for every import of a fastmlic module, at the top or inside a function;
    imports under `if TYPE_CHECKING:` are left out (they never run)."""
    edges = set()
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree)
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}  # fmt: skip
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name and target.startswith("fastmlic"):
                    edges.add((name, target))
    return edges


def top(name: str) -> str:
    return name.split(".")[1] if name.count(".") else name


def layer(name: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top(name) in names)


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_every_module_has_a_layer():
    unplaced = sorted({top(n) for n in modules() if n != "fastmlic"} - {n for names in LAYERS for n in names})
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def test_imports_point_down_the_layers_and_never_in_a_cycle():
    mods = modules()
    edges = {(a, b) for a, b in imports(mods) if "fastmlic" not in (a, b)}
    upward = sorted(f"{a} -> {b}" for a, b in edges if layer(a) < layer(b))
    assert not upward, "imports up the layers:\n" + "\n".join(upward)
    forbidden = sorted(f"{a} -> {b}" for a, b in edges if top(b) in FORBIDDEN.get(top(a), ()))
    assert not forbidden, "imports across a boundary:\n" + "\n".join(forbidden)
    assert cycles(edges) == []


def test_the_checker_sees_an_upward_import_and_a_cycle():
    edges = {("fastmlic.config", "fastmlic.models"), ("fastmlic.models", "fastmlic.config")}
    upward = [f"{a} -> {b}" for a, b in sorted(edges) if layer(a) < layer(b)]
    assert upward == ["fastmlic.config -> fastmlic.models"]
    assert cycles(edges) == [["fastmlic.config", "fastmlic.models"]]


def test_no_core_module_branches_on_a_method():
    """Outside fastmlic/recipes no code compares against a method's name, and no name is one; prose may
    still cite a codebase's convention (a docstring saying whose)."""
    from fastmlic.recipes.base import RECIPES

    methods = {n for n in RECIPES if n != "standard"}
    found = []
    for name, path in modules().items():
        if name.startswith("fastmlic.recipes"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            compared = []
            if isinstance(node, ast.Compare):
                for operand in [node.left, *node.comparators]:
                    compared += [n.value for n in ast.walk(operand) if isinstance(n, ast.Constant)]
            elif isinstance(node, ast.Name):
                compared = [node.id]
            hits = {v for v in compared if isinstance(v, str) and v.lower() in methods}
            if hits:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(hits)}")
    assert not found, "core code naming a method:\n" + "\n".join(found)


def layout_entries() -> set[str]:
    """The files and folders the README's Layout tree names: a line at the left margin is a path (a
    folder ends in /), an indented line names files in the folder above it; names come before the two
    spaces that start a line's description."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout") :]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")]
    entries, folder = set(), ""
    for line in block.splitlines():
        names = line.strip().split("  ")[0].split()
        if not names:
            continue
        if line.startswith(" "):
            entries |= {folder + n for n in names}
        else:
            entries |= set(names)
            folder = names[0] if names[0].endswith("/") else folder
    return entries


def test_the_readme_layout_names_every_source_file_and_only_files_that_exist():
    entries = layout_entries()
    missing = sorted(e for e in entries if "*" not in e and not (ROOT / e).exists())
    assert not missing, f"the README's layout names files that do not exist: {missing}"
    files = [p.relative_to(ROOT).as_posix() for folder in ("fastmlic", "kernels", "tools", "benchmarks")
             for p in (ROOT / folder).rglob("*.py") if p.name != "__init__.py" or p.parent.name == "recipes"]
    unlisted = sorted(f for f in files if f not in entries and not any(
        e.endswith("/*.yaml") for e in entries if f.startswith(e[:-6])))  # fmt: skip
    assert not unlisted, f"source files the README's layout does not list: {unlisted}"
