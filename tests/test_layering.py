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
                base = here[: len(here) - node.level + 1] if node.level else []
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
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return cycles


def private_imports(imports: dict) -> list[str]:
    return sorted(
        f"{m}:{line} imports {t}.{name}"
        for m, edges in imports.items()
        for t, name, line in edges
        if name and name.startswith("_") and not name.startswith("__") and t != m
    )


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


def private_uses(path: Path) -> list[str]:
    """Where a test or benchmark file reaches a private (underscored) name of the package: an
    import of one, an attribute of a module of the package or of what a call returns (an object
    the package made), or a `setattr` on one by name (`setattr(module, "_x")` or
    `setattr("scalselect.module._x")`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "scalselect"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "scalselect":
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__") and a.name not in NATIVE:
                    found.append((node.lineno, f"{path.name}:{node.lineno} imports {node.module}.{a.name}"))
                modules.add(a.asname or a.name)  # a module or a class: its private names count the same

    def root(node):
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        private = lambda name: name.startswith("_") and not name.startswith("__") and name not in NATIVE  # noqa: E731
        if isinstance(node, ast.Attribute) and private(node.attr) and (root(node.value) in modules or root(node.value) is None):
            found.append((node.lineno, f"{path.name}:{node.lineno} uses .{node.attr}"))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "setattr"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("scalselect.")
            and private(node.args[0].value.rsplit(".", 1)[-1])
        ):
            found.append((node.lineno, f"{path.name}:{node.lineno} sets {node.args[0].value}"))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "setattr"
            and len(node.args) >= 2
            and root(node.args[0]) in modules
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value.rsplit(".", 1)[-1])
        ):
            found.append((node.lineno, f"{path.name}:{node.lineno} sets {node.args[1].value}"))
    return [text for _, text in sorted(found)]


def test_tests_and_benchmarks_reach_the_package_through_public_names():
    """Tests pin behaviour, not private helpers: what they use is named without an underscore
    (public, or internal and said so by its module)."""
    repo = Path(__file__).resolve().parent.parent
    files = [p for folder in ("tests", "benchmarks") for p in sorted((repo / folder).rglob("*.py"))]
    assert files
    assert [use for path in files for use in private_uses(path)] == []


def test_the_private_use_check_finds_each_kind(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import scalselect.atomic as atomic\nfrom scalselect.pipeline import _deal, BatchJob\n"
        "from scalselect import report\n\n"
        "def test(monkeypatch):\n    atomic._write(1)\n    BatchJob._forward\n"
        "    monkeypatch.setattr(report, '_figures', None)\n    report.plot_figures\n"
        "    BatchJob(1)._forward()\n    monkeypatch.setattr('scalselect.report._figures', None)\n"
        "    parser._actions\n"  # a name the file bound itself, not the package's: not counted
    )
    assert private_uses(probe) == [
        "probe.py:2 imports scalselect.pipeline._deal",
        "probe.py:6 uses ._write",
        "probe.py:7 uses ._forward",
        "probe.py:8 sets _figures",
        "probe.py:10 uses ._forward",
        "probe.py:11 sets scalselect.report._figures",
    ]
