"""The shape of the package, checked: no import cycles (lazy imports included), the layers of
docs/architecture.md, layouts dispatched through the registry, one source of truth for the
defaults, and a CLI whose ``--help`` loads no compiled kernels."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import ue8m0
from ue8m0.checkpoint.registry import LAYOUTS

SRC = Path(ue8m0.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports at run time, anywhere (functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("ue8m0"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if not base.startswith("ue8m0"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    out.discard(me)
    return {m for m in out if m in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_lazy_imports_included() -> None:
    assert _cycles(GRAPH) == []


def test_the_import_graph_sees_lazy_imports() -> None:
    # cli.quantize imports the planner inside its command function
    assert "ue8m0.checkpoint.plan_quantize" in GRAPH["ue8m0.cli.quantize"]


#: (importer prefix, forbidden import prefix): the layers of docs/architecture.md
LAYERS = [
    ("ue8m0.checkpoint", "ue8m0.cli"),
    ("ue8m0.checkpoint", "ue8m0.report"),
    ("ue8m0.checkpoint", "ue8m0.evaluation"),
    ("ue8m0.kernels", "ue8m0.checkpoint"),
    ("ue8m0.report", "ue8m0.cli"),
    ("ue8m0.plan", "ue8m0.checkpoint"),
    ("ue8m0.plan", "ue8m0.cli"),
]
#: the I/O layer: below every converter
IO_LAYER = [
    "ue8m0.checkpoint.safetensors",
    "ue8m0.checkpoint.writer",
    "ue8m0.checkpoint.dropbehind",
    "ue8m0.checkpoint.slabs",
    "ue8m0.checkpoint.source",
    "ue8m0.checkpoint.scales",
    "ue8m0.checkpoint.jsonio",
    "ue8m0.checkpoint.rawio",
    "ue8m0.checkpoint.progress",
]


@pytest.mark.parametrize(("importer", "forbidden"), LAYERS)
def test_layers(importer: str, forbidden: str) -> None:
    bad = [
        (m, d)
        for m, deps in GRAPH.items()
        if m.startswith(importer)
        for d in deps
        if d.startswith(forbidden)
    ]
    assert bad == []


def test_the_io_layer_imports_no_converter() -> None:
    for module in IO_LAYER:
        upward = {
            d
            for d in GRAPH[module]
            if d.startswith("ue8m0.checkpoint.") and d not in [*IO_LAYER, "ue8m0.checkpoint"]
        }
        assert upward == set(), module


def test_no_step_imports_another_step() -> None:
    steps = [m for m in MODULES if m.startswith("ue8m0.checkpoint.steps.")]
    shared = {"ue8m0.checkpoint.steps.context"}
    for m in steps:
        assert {d for d in GRAPH[m] if d in steps} <= shared, m


def _layout_name_comparisons(path: Path) -> list[str]:
    names = {layout.name for layout in LAYOUTS}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            consts = [node.left, *node.comparators]
            for c in consts:
                if isinstance(c, ast.Constant) and c.value in names:
                    found.append(f"{path.name}:{node.lineno}")
    return found


def test_layouts_are_dispatched_through_the_registry() -> None:
    outside = [
        hit
        for name, path in MODULES.items()
        if name != "ue8m0.checkpoint.registry"
        for hit in _layout_name_comparisons(path)
    ]
    assert outside == []
    assert len(_layout_name_comparisons(MODULES["ue8m0.checkpoint.registry"])) <= 2


def test_the_comparison_finder_bites(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('if opts.to == "mxfp8":\n    pass\n')
    assert _layout_name_comparisons(probe) == ["probe.py:1"]


def test_one_source_of_truth_for_eps_and_version() -> None:
    literal = [
        f"{name}:{node.lineno}"
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value == 1e-4
    ]
    assert literal == [
        "ue8m0.policies:" + str(_line_of(MODULES["ue8m0.policies"], "DEFAULT_EPS ="))
    ]
    assert ue8m0.__version__ == importlib.metadata.version("ue8m0")


def _line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(text))


HELP_PROBE = """
import sys
from ue8m0.cli.main import main
try:
    main({argv!r})
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in ("numba", "torch", "matplotlib", "transformers") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["quantize", "--help"], ["plan", "--help"], ["verify", "--help"]],
    ids=lambda a: " ".join(a),
)
def test_help_loads_no_numba(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", HELP_PROBE.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "HEAVY []" in out
