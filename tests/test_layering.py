"""Imports go one way: no module of the package imports, directly or through others, a module
that imports it back (imports inside functions count: one placed there to dodge a cycle is still
a cycle), and no module imports another's private (underscored) name."""

from __future__ import annotations

import ast
from pathlib import Path

import scalselect

NATIVE = {"_C"}  # the compiled extension: a module of its own, not a name of the package


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(root: Path) -> dict[str, set[tuple[str, str | None, int]]]:
    """{module: {(imported module, imported name or None, line)}} for every import of the
    package's own modules, at any depth of the code."""
    modules = {_module_name(root, p): p for p in root.rglob("*.py")}
    found: dict[str, set] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                if target.split(".")[0] != root.name:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules or alias.name in NATIVE:
                        edges.add((sub, None, node.lineno))
                    else:
                        edges.add((target, alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                edges |= {(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == root.name}
        found[name] = edges
    return found


def import_cycles(imports: dict) -> list[list[str]]:
    """Every cycle a depth-first walk of the import graph meets, as [a, b, ..., a]."""
    graph = {m: sorted({t for t, _, _ in edges if t != m}) for m, edges in imports.items()}
    cycles, done, path = [], set(), []

    def visit(node):
        path.append(node)
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return cycles


def private_imports(imports: dict) -> list[str]:
    return sorted(f"{m}:{line} imports {t}.{name}" for m, edges in imports.items() for t, name, line in edges
                  if name and name.startswith("_") and not name.startswith("__") and t != m)


ROOT = Path(scalselect.__file__).parent


def test_the_package_has_no_import_cycle():
    assert import_cycles(package_imports(ROOT)) == []


def test_no_module_imports_another_ones_private_names():
    assert private_imports(package_imports(ROOT)) == []


def test_the_checks_find_a_cycle_and_a_private_import(tmp_path):
    """The same checks on a package made to break both rules, lazily (inside a function)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n\ndef _helper():\n    pass\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def late():\n    from ..a import _helper\n    return _helper\n")
    found = package_imports(pkg)
    assert import_cycles(found) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    assert private_imports(found) == ["pkg.sub.b:2 imports pkg.a._helper"]
