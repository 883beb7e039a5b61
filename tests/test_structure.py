"""The shape of the package (issue 12): layers, no import cycle, short files, helpers written once.

The import graph is read from the source files with ``ast``: every ``import`` counts, those
inside functions too (a lazy import still ties two modules together), and importing
``a.b.c`` also imports the packages ``a.b`` and ``a`` (their ``__init__`` runs), except the
packages the importing module is itself inside.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nudge_rag"

#: Layer of each module (the longest prefix that matches wins). A module may import modules of
#: its own layer or of lower ones, never higher. A module missing here fails the test: give it
#: the layer of what it does.
LAYERS: dict[str, int] = {
    "nudge_rag.errors": 0,
    # the engine, and plumbing every layer may use
    "nudge_rag.core": 1,
    "nudge_rag._util": 1,
    "nudge_rag._faults": 1,
    # data and files: judged queries, BEIR folders, state on disk, metrics, models
    "nudge_rag.judged": 2,
    "nudge_rag.beir": 2,
    "nudge_rag.evaluation.metrics": 2,
    "nudge_rag.state": 2,
    "nudge_rag.persist": 2,
    "nudge_rag.testing": 2,
    "nudge_rag.feedback": 2,
    # store adapters
    "nudge_rag.stores": 3,
    # framework glue
    "nudge_rag.integrations": 4,
    # what is built on the glue: query generation, evaluation, the local model (framework wrappers)
    "nudge_rag.querygen": 5,
    "nudge_rag.evaluation": 5,
    "nudge_rag.embedding": 5,
    "nudge_rag._onnx": 5,  # the local model's ONNX backends
    # the store side of a fine-tune, its reports, the paper's protocol
    "nudge_rag.session": 6,
    # which place keeps a store's state (the adapters say where theirs is)
    "nudge_rag.state.places": 6,
    "nudge_rag.reports": 6,
    "nudge_rag.learning": 6,
    "nudge_rag.judge": 6,
    "nudge_rag.auto": 6,
    "nudge_rag.experiment": 6,
    "nudge_rag.finetuner": 7,
    # the public face, and SOURCE folders as a library
    "nudge_rag": 8,
    "nudge_rag.sources": 8,
    "nudge_rag.cli": 9,
    "nudge_rag.demo": 9,  # `make demo`: the flagship flow, then the CLI on SciFact
}

#: Longest file allowed, in lines; the NUDGE maths stay in one file.
MAX_LINES = 700
LONGER_ALLOWED = {"nudge_rag/core/nudge.py"}
MAX_CLI_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {
        _module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"), str(p)))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


SOURCES = _sources()
MODULES = set(SOURCES)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(name: str, tree: ast.Module) -> tuple[set[str], set[str]]:
    """``(nudge_rag modules, other top-level packages)`` that module ``name`` imports."""
    is_pkg = SOURCES[name][0].name == "__init__.py"
    own, other = set(), set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join(here + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in MODULES else base)
        for t in targets:
            if t.split(".")[0] != "nudge_rag":
                other.add(t.split(".")[0])
                continue
            while t not in MODULES:  # an attribute path (nudge_rag.x.y where y is a name)
                t = t.rsplit(".", 1)[0]
            own.add(t)
            own.update(a for a in _ancestors(t) if a not in _ancestors(name))
    own.discard(name)
    return own, other


GRAPH = {name: _imports(name, tree)[0] for name, (_, tree) in SOURCES.items()}


def layer(name: str) -> int:
    """The layer of the longest entry of LAYERS that is ``name`` or a package holding it (the
    root package's entry is for its ``__init__`` only)."""
    best = max(
        (p for p in LAYERS if name == p or (p != "nudge_rag" and name.startswith(p + "."))),
        key=len,
        default=None,
    )
    if best is None:
        pytest.fail(f"{name} has no layer: add it to LAYERS in {__file__}")
    return LAYERS[best]


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer(name)
    assert "nudge_rag.not_in_the_table" not in LAYERS
    with pytest.raises(pytest.fail.Exception, match="has no layer"):
        layer("nudge_rag.not_in_the_table")


def test_no_module_imports_a_higher_layer() -> None:
    bad = [
        f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
        for src, dsts in GRAPH.items()
        for dst in dsts
        if layer(dst) > layer(src)
    ]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_core_imports_numpy_the_standard_library_and_errors_only() -> None:
    for name, (_, tree) in SOURCES.items():
        if not (name == "nudge_rag.core" or name.startswith("nudge_rag.core.")):
            continue
        own, other = _imports(name, tree)
        assert {m for m in own if not m.startswith("nudge_rag.core")} <= {"nudge_rag.errors"}, name
        assert other <= {"numpy", "__future__"} | set(sys.stdlib_module_names), (name, other)


def test_nothing_imports_the_cli() -> None:
    assert [src for src, dsts in GRAPH.items() if "nudge_rag.cli" in dsts] == []


def test_the_graph_sees_real_edges() -> None:
    """The parser is not vacuous: edges known to exist are found (lazy ones included)."""
    assert (
        "nudge_rag.judged" in GRAPH["nudge_rag.finetuner"] | GRAPH["nudge_rag.evaluation.evaluate"]
    )
    assert "nudge_rag.stores" in GRAPH["nudge_rag.integrations.retrievers"]
    assert "nudge_rag.finetuner" in GRAPH["nudge_rag.sources.source"]  # inside a method
    assert "nudge_rag.evaluation" in GRAPH["nudge_rag.reports"]  # the package of a submodule


def test_no_file_is_too_long() -> None:
    long = {}
    for _name, (path, _) in SOURCES.items():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        limit = MAX_CLI_LINES if rel == "nudge_rag/cli.py" else MAX_LINES
        if n > limit and rel not in LONGER_ALLOWED:
            long[rel] = n
    assert not long, f"files over {MAX_LINES} lines (cli.py: {MAX_CLI_LINES}): {long}"


def _defs(*names: str) -> dict[str, list[str]]:
    """Where functions or methods of these names are defined."""
    found: dict[str, list[str]] = {n: [] for n in names}
    for mod, (_, tree) in SOURCES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in found:
                found[node.name].append(mod)
    return found


def _users(predicate: type[ast.AST], text: str) -> set[str]:
    out = set()
    for mod, (_, tree) in SOURCES.items():
        for node in ast.walk(tree):
            if isinstance(node, predicate) and text in ast.unparse(node):
                out.add(mod)
    return out


def test_shared_helpers_are_written_once() -> None:
    defs = _defs("run_sync", "_run_sync", "topk_rows", "framework_of", "progress_bar", "_progress")
    assert defs["run_sync"] == ["nudge_rag._util"] and defs["_run_sync"] == []
    assert defs["progress_bar"] == ["nudge_rag._util"] and defs["_progress"] == [
        "nudge_rag.embedding"  # LocalEmbedder's method, a call of progress_bar
    ]
    assert defs["topk_rows"] == ["nudge_rag.core.topk"]
    assert defs["framework_of"] == ["nudge_rag._util"]
    # one progress factory: only _util imports tqdm
    tqdm_users = _users(ast.ImportFrom, "tqdm") | _users(ast.Import, "tqdm")
    assert tqdm_users == {"nudge_rag._util"}
    # one way to run a coroutine from sync code
    assert {m for m in _users(ast.Call, "asyncio.run(") if m != "nudge_rag._util"} == set()
    # framework detection by MRO in one place (querygen.llm reads exception class names)
    assert _users(ast.Attribute, "__mro__") <= {"nudge_rag._util", "nudge_rag.querygen.llm"}
