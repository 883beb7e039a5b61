"""The examples in the docstrings run, and show what they claim.

Every module of ``nudge_rag`` whose docstrings hold an example (``>>>``) is run through
``doctest`` here (an example that cannot run offline is marked ``# doctest: +SKIP``), so a new
example is checked without being listed. Two need more than the fast suite has: the local model
(``nudge_rag.embedding``, slow) and the SciFact folder (``nudge_rag.beir``).
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nudge_rag"
DATA = PACKAGE.parent.parent / "shared" / "data" / "scifact"

#: Modules whose examples need more than numpy and the standard library.
NEEDS = {
    "nudge_rag.embedding": pytest.mark.slow,  # loads all-MiniLM-L6-v2
    "nudge_rag.beir": pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/scifact"),
}


def _modules_with_examples() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


MODULES = _modules_with_examples()


def test_the_examples_are_found() -> None:
    assert {"nudge_rag.judged", "nudge_rag._util", "nudge_rag.core.topk"} <= set(MODULES)


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=NEEDS[m]) if m in NEEDS else m for m in MODULES]
)
def test_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "nudge_rag.beir":
        monkeypatch.chdir(PACKAGE.parent)  # its example reads ../shared/data/scifact
    else:
        monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    failures: list[str] = []
    for test in finder.find(module, name, globs=vars(module).copy()):
        out: list[str] = []
        result = runner.run(test, out=out.append)
        if result.failed:
            failures.append("".join(out))
    assert not failures, "\n".join(failures)
