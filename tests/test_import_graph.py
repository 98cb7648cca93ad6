"""The package's import graph: no cycles between modules, and no arrow from a lower layer to a higher one that is not
listed (with its reason) in ALLOWED. Every import counts, function-level ones too: a lazy import is still a
dependency. Parsed with `ast`, nothing is imported."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fslm"

# Low to high. A module may import its own layer and the layers below; the root package (fslm/__init__.py, the public
# facade that Python runs before any submodule) is left out of the graph.
LAYERS: list[set[str]] = [
    {"errors", "settings", "version", "digest", "io", "generation", "extras", "cpu", "scale"},
    {"models", "tasks"},
    {"engine", "teachers"},
    {"retrieve"},
    {"config", "stages", "stack_checks", "stack_cache", "stack_steps", "stack", "stack_pack"},
    {"distill"},
    {"finetune"},
    {"evaluate", "lm_eval_plugin", "lm_eval_tasks"},
    {"collaborate", "logs"},
    {"serve"},
    {"experiment"},
    {"cli"},
]

# (importing module, imported module) -> why the upward arrow is right
ALLOWED: dict[tuple[str, str], str] = {
    ("fslm.finetune.pairs", "fslm.evaluate.prompts"): (
        "raw-scoring pairs must be rendered exactly as the evaluation renders items, so they use its one renderer"
    ),
    ("fslm.evaluate.systems", "fslm.collaborate.proxy_engine"): (
        "a proxy-tuned model is evaluated like any model: load_system builds its fused Engine, then speaks only Engine"
    ),
    ("fslm.evaluate.systems", "fslm.collaborate.proxy_params"): (
        "--expert-delta is checked and its paths made absolute before any load, by the parser generate uses"
    ),
    ("fslm.distill.synth", "fslm.evaluate.metrics"): (
        "self-instruct deduplicates with the same ROUGE-L that scores generation tasks, so there is one implementation"
    ),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> fslm modules it imports (`from pkg import mod` counts as mod when mod is a module)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in files.items():
        graph[mod]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fslm"):
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("fslm")]
            graph[mod].update(t for t in targets if t != mod and t != "fslm" and t in files)
    graph.pop("fslm", None)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    top = module.split(".")[1]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: its package {top!r} is in no layer of tests/test_import_graph.py")


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, bs in graph.items() for b in bs if layer(a) < layer(b))


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_upward_arrow_is_justified():
    graph = import_graph()
    unexplained = [edge for edge in upward(graph) if edge not in ALLOWED]
    assert unexplained == [], "an import from a lower layer to a higher one: move the shared code down"
    stale = [edge for edge in ALLOWED if edge[1] not in graph.get(edge[0], set())]
    assert stale == [], "ALLOWED lists an arrow that no longer exists: remove it"


def test_the_checks_can_fail(tmp_path):
    """A synthetic package with a cycle and an upward arrow is caught by both checks."""
    pkg = tmp_path / "fslm"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "serve").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text("def f():\n    from fslm.serve import app\n")
    (pkg / "serve" / "__init__.py").write_text("")
    (pkg / "serve" / "app.py").write_text("from fslm.engine import f\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [["fslm.engine", "fslm.serve.app"]]
    assert upward(graph) == [("fslm.engine", "fslm.serve.app")]


@pytest.mark.parametrize("names", LAYERS)
def test_every_package_in_a_layer_exists(names):
    for name in names:
        assert (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file(), name
