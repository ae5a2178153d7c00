"""Imports point down (docs/DESIGN.md): the base layer and the kernels import nothing above
them, and no module-level import goes round in a cycle.

The graph is read from the source with ``ast`` (nothing is imported), so the test also
covers modules whose optional dependencies are missing here.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "refquant"


def _modules():
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


MODULES = _modules()


def _imports(module: str, *, top_level_only: bool) -> set[str]:
    """The refquant modules that ``module`` imports (the module itself, not a package,
    where ``from package import module`` names one)."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != module}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_module_level_import_cycle():
    edges = {m: _imports(m, top_level_only=True) for m in MODULES}
    assert _cycles(edges) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("refquant._core", ("quant", "formats", "kernels", "compat", "prune", "io", "compress")),
        ("refquant.kernels.cpu", ("quant", "formats", "compat", "prune", "io", "compress")),
        ("refquant.kernels.cuda", ("quant", "formats", "compat", "prune", "io", "compress")),
        ("refquant.formats", ("quant", "compat", "prune", "io", "compress")),
    ],
)
def test_lower_layers_import_nothing_above(package, forbidden):
    bad = []
    for module in MODULES:
        if module != package and not module.startswith(package + "."):
            continue
        for target in _imports(module, top_level_only=False):
            layer = target.split(".")[1] if target.count(".") else ""
            if layer in forbidden:
                bad.append(f"{module} -> {target}")
    assert bad == []


def test_qparams_does_not_import_calibration():
    # calibration builds on qparams (MSE search over qparams_from_range); the methods
    # reach choose_qparams through a registry instead of an upward import.
    assert "refquant.quant.calibration" not in _imports("refquant.quant.qparams",
                                                        top_level_only=False)
    assert "refquant.quant.qparams" in _imports("refquant.quant.calibration",
                                                top_level_only=True)
