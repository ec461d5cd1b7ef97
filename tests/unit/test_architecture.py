"""The shape of the code, checked from its own imports (docs/architecture.md draws it).

Fails when an import cycle between modules comes back, a module grows past 500 lines, a private name is
imported from another module, or a package imports one it may not (the table below is the one place that
says which may import which; each package's docstring says the same in words).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# folder in the repository -> the installed package name (pyproject.toml's package-dir)
ROOTS = {"nearline": "nearline", "models": "nearline.models", "beam_jobs": "nearline.beam_jobs"}
MAX_LINES = 500

# package -> the packages it may import (besides itself and the root ``nearline``); lowest first
LOWER = {
    "config": set(),
    "core": {"config"},
    "marketplace": set(),
    "registry": {"core"},
    "io": {"core", "config"},
    "inference": {"core", "registry"},
    "standardize": {"core", "io", "config", "marketplace"},
    "stream": {"core", "io", "config", "registry", "inference", "standardize"},
    "offline": {"core", "io", "config", "registry", "inference", "stream"},
    "beam_jobs": {"core", "io", "config", "registry", "inference", "stream", "offline"},
    "models": {"core", "registry", "marketplace", "standardize"},
    "ops": {"core", "io", "config", "registry", "marketplace"},
    "consumers": {"core", "io", "config", "registry", "inference", "ops"},
    "launch": {"core", "io", "config", "registry", "inference", "offline", "beam_jobs"},
    "multidc": {"core", "io", "config", "marketplace", "ops", "consumers"},
}
LOWER["cli"] = set(LOWER) - {"cli"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in ROOTS.items():
        for path in (REPO / folder).rglob("*.py"):
            if "packages" in path.relative_to(REPO / folder).parts:
                continue
            rel = path.relative_to(REPO / folder).with_suffix("").parts
            rel = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((pkg, *rel))] = path
    return out


def package_of(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) == 1:
        return "nearline"
    return parts[1]


def imports(mods: dict[str, Path]) -> list[tuple[str, str, str | None]]:
    """(importer, imported module, imported name or None), function-level imports included."""
    out = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out += [(mod, a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".")
                    parts = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    out.append((mod, full, None) if full in mods else (mod, base, a.name))
    return [(a, b, n) for a, b, n in out if b.split(".")[0] == "nearline"]


def resolve(target: str, mods) -> str | None:
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycle_between_modules():
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, _ in imports(mods):
        t = resolve(b, mods)
        # a package's __init__ is its docstring only; an import of the root package is of nearline/__init__.py
        if t and t != a:
            graph[a].add(t)
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_packages_import_only_what_they_may():
    mods = modules()
    wrong = []
    for a, b, _ in imports(mods):
        t = resolve(b, mods)
        if t is None:
            continue
        pa, pb = package_of(a), package_of(t)
        if pb in (pa, "nearline"):
            continue
        if pb not in LOWER.get(pa, set()):
            wrong.append(f"{a} imports {t} ({pa} may import {sorted(LOWER.get(pa, set()))})")
    assert not wrong, "\n".join(wrong)


def test_every_package_is_in_the_table_and_says_what_it_owns():
    mods = modules()
    pkgs = {package_of(m) for m in mods} - {"nearline"}
    assert pkgs <= set(LOWER), f"packages missing from LOWER: {pkgs - set(LOWER)}"
    for m, path in mods.items():
        if path.name == "__init__.py" and m != "nearline":
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert len(doc) > 40, f"{m} has no docstring saying what it owns"


def test_no_module_over_500_lines():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_no_private_name_imported_across_modules():
    private = [f"{a} imports {b}.{n}" for a, b, n in imports(modules())
               if n and n.startswith("_") and not n.startswith("__")]
    assert not private, private
