"""A small topic corpus shared by the convention and learning-from-use tests.

Record ``d{i}`` talks about ``topic{i}``, ``alpha{i % 7}`` and ``beta{i % 5}``; the questions
share words with another record than the one they are judged relevant to, so fitting has
something to fix. The LangChain store built from it is the ``lc_topics`` fixture (conftest.py).
"""

from __future__ import annotations

N = 40


def texts() -> list[str]:
    """The text of record ``d{i}`` at index ``i``."""
    return [f"record about topic{i} with alpha{i % 7} and beta{i % 5}" for i in range(N)]


def questions(n_docs: int = 16, per_doc: int = 2) -> list[tuple[str, list[str]]]:
    """``per_doc`` questions judged relevant to each of the first ``n_docs`` records."""
    return [
        (f"question alpha{(d + 1) % 7} beta{(d + 2) % 5} topic{d} v{i}", [f"d{d}"])
        for i in range(per_doc)
        for d in range(n_docs)
    ]
