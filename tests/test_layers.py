"""The package's layers, and a check that each module imports only from its own layer or below.

``LAYERS`` is the one place the layering is written down (docs/architecture.md draws it).
Every import counts, also one inside a function, except those under ``if TYPE_CHECKING:``
(annotations only, never run). What is loaded by name is not an import: the tick loads
the builtin plugins below it from ``plugins.BUILTIN_PLUGINS``; the demo cluster and the
etcd store backend are registered from above (``wyneos_core.demo.demo_plugins``, which
the CLI passes to the orchestrator, and ``wyneos_core.store.register_backend``, called
when ``wyneos_core.ha`` is imported).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import wyneos_core

PACKAGE = Path(wyneos_core.__file__).parent
DOCS = Path(__file__).resolve().parent.parent / "docs"

#: lowest first; a module belongs to the layer of the longest entry naming it or a package
#: above it (names relative to ``wyneos_core``; ``__init__`` is the package's own face)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("model", ("__init__", "model", "licence_result", "nodetable", "metadata_codes", "sharing", "names", "transitions", "safeio", "yamlio", "wording",
               "diagnostics", "action_params", "selectors", "nodeviews", "nodecodes")),
    ("engines", ("config", "checks", "pyrules", "intake", "telemetry_inbox", "registry", "store", "causes",
                 "heartbeat_checks", "consensus", "mesh", "mesh_graph", "mesh_search", "mesh_topology",
                 "rules", "licensing", "trust", "enforcement", "predict", "drift")),
    ("builtin plugins", ("builtin",)),
    ("tick", ("hookspecs", "plugins", "tick", "loop", "explain")),
    ("service, replicas, simulation", ("service", "ha", "simulate", "demo", "backup")),
    ("cli", ("cli", "validate", "remote", "fleetview")),
]


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root`` by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str, package: str, layers) -> int | None:
    """The index in ``layers`` of ``module``'s layer, None when no entry places it."""
    rel = module[len(package) + 1:] if module != package else "__init__"
    best, best_len = None, -1
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            if (rel == entry or rel.startswith(entry + ".")) and len(entry) > best_len:
                best, best_len = index, len(entry)
    return best


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(module: str, path: Path, known: dict[str, Path], package: str) -> list[tuple[int, str]]:
    """(line, module of the package) for every import in ``path`` that runs, in functions too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue
            while target not in known:
                target = target.rpartition(".")[0]
            if target != module and (node.lineno, target) not in out:
                out.append((node.lineno, target))
    return out


def unplaced(root: Path, layers) -> list[str]:
    return [m for m in modules(root) if layer_of(m, root.name, layers) is None]


def violations(root: Path, layers) -> list[str]:
    """One line per import of a higher layer: file, line, the importer's layer and the higher one."""
    package, known = root.name, modules(root)
    out = []
    for module, path in known.items():
        low = layer_of(module, package, layers)
        if low is None:
            continue
        for line, target in imports_of(module, path, known, package):
            high = layer_of(target, package, layers)
            if high is not None and high > low:
                out.append(f"{path.relative_to(root.parent)}:{line}: {module} (layer {low + 1}, {layers[low][0]}) "
                           f"imports {target} of the higher layer {high + 1} ({layers[high][0]})")
    return out


def test_every_module_has_a_layer():
    missing = unplaced(PACKAGE, LAYERS)
    assert not missing, f"place these modules in LAYERS (tests/test_layers.py): {missing}"


def test_no_module_imports_a_higher_layer():
    found = violations(PACKAGE, LAYERS)
    assert not found, "\n".join(["imports that go up a layer:", *found])


def test_the_check_names_a_violation_with_its_file_and_line(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "top.py").write_text("X = 1\n")
    (root / "base.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.sub.top import X\n"         # annotations only: not counted
        "def f():\n"
        "    from pkg.sub import top\n"           # line 5, inside a function: counted
        "    return top.X\n")
    (root / "mid.py").write_text("from .sub.top import X\nfrom . import base\n")  # line 1 counted, line 2 is down
    layers = [("low", ("__init__", "base")), ("middle", ("mid",)), ("high", ("sub",))]
    found = violations(root, layers)
    assert found == [
        "pkg/base.py:5: pkg.base (layer 1, low) imports pkg.sub.top of the higher layer 3 (high)",
        "pkg/mid.py:1: pkg.mid (layer 2, middle) imports pkg.sub.top of the higher layer 3 (high)",
    ]
    assert unplaced(root, layers[:2]) == ["pkg.sub", "pkg.sub.top"]


def test_architecture_page_draws_every_layer():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    for index, (name, entries) in enumerate(LAYERS, 1):
        assert re.search(rf"^\s*{index}\s+{re.escape(name)}\b", section, re.M), (index, name)
        for entry in entries:
            if entry != "__init__":
                assert re.search(rf"(?<![\w.]){re.escape(entry)}\b", section), (name, entry)
