"""`QuerySet`: query vectors and, per query, the record rows that answer it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from nudge_rag.errors import (
    AnswerError,
    DimensionMismatchError,
    NonFiniteError,
    ShapeError,
    ZeroVectorError,
)

__all__ = ["QuerySet", "as_float32_matrix"]

Answers = Sequence[Iterable[int] | Mapping[int, float]]


def as_float32_matrix(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a C-contiguous 2-D float32 array, or raise a typed error naming ``name``.

    Integer, boolean, object and complex arrays are refused: a vector of ints is far more often a
    mistake (ids passed where vectors were meant) than an embedding.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        msg = f"{name} must be a 2-D array (n, d); received an array of shape {arr.shape}"
        raise ShapeError(msg)
    if not np.issubdtype(arr.dtype, np.floating):
        msg = f"{name} must hold floating-point numbers; received dtype {arr.dtype}"
        raise ShapeError(msg)
    if arr.shape[1] == 0:
        msg = f"{name} has vectors of width 0; received shape {arr.shape}"
        raise ShapeError(msg)
    return np.ascontiguousarray(arr, dtype=np.float32)


class QuerySet:
    """Query vectors ``(n, d)`` and, for each query, the record rows that answer it.

    Answers are given per query either as a list of record rows (binary relevance) or as a mapping
    ``{row: grade}`` (graded relevance; grades <= 0 are dropped as "not relevant"). Everything is
    validated on construction, and each problem raises its own subclass of
    :class:`~nudge_rag.errors.NudgeInputError` naming the query at fault.

    Example:
        >>> qs = QuerySet(np.eye(2, 3, dtype=np.float32), [[0], {1: 2.0, 2: 1.0}])
        >>> len(qs), qs.dim, qs.answer_rows(1).tolist(), qs.answer_gains(1).tolist()
        (2, 3, [1, 2], [2.0, 1.0])

    Args:
        embeddings: Query vectors, shape ``(n, d)``, floating point, finite and non-zero. Used as
            given (not normalised): scale them as your retriever does.
        answers: One entry per query: its answer rows, or ``{row: grade}``.
        n_records: If given, every answer row must be below it.
        dim: If given, the query width must equal it (the width of the record vectors).
    """

    __slots__ = ("_embeddings", "gains", "indptr", "rows")

    def __init__(
        self,
        embeddings: Any,
        answers: Answers,
        *,
        n_records: int | None = None,
        dim: int | None = None,
    ) -> None:
        emb = np.array(as_float32_matrix(embeddings, "QuerySet embeddings"), copy=True)
        if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
            msg = (
                "QuerySet answers must be a sequence with one entry per query (a list of record "
                f"rows or a {{row: grade}} mapping); received {type(answers).__name__}"
            )
            raise AnswerError(msg)
        if len(answers) != emb.shape[0]:
            msg = (
                f"QuerySet has {emb.shape[0]} query vectors but {len(answers)} answer entries; "
                "there must be exactly one entry per query"
            )
            raise ShapeError(msg)
        bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
        if bad.size:
            msg = f"query {int(bad[0])} has a NaN or inf value ({bad.size} such queries in all)"
            raise NonFiniteError(msg)
        zero = np.flatnonzero(~emb.any(axis=1))
        if zero.size:
            msg = f"query {int(zero[0])} is an all-zero vector ({zero.size} such queries in all)"
            raise ZeroVectorError(msg)

        fast = _plain_answers(answers)
        if fast is not None:
            indptr, rows_arr, gains_arr = fast
        else:
            counts = np.zeros(len(answers), dtype=np.int64)
            rows: list[int] = []
            gains: list[float] = []
            for i, ans in enumerate(answers):
                pairs = _answer_pairs(i, ans)
                if not pairs:
                    msg = f"query {i} has no answer: every query needs at least one relevant record"
                    raise AnswerError(msg)
                for r, g in pairs:
                    rows.append(r)
                    gains.append(g)
                counts[i] = len(pairs)
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            rows_arr = np.asarray(rows, dtype=np.int64)
            gains_arr = np.asarray(gains, dtype=np.float64)
        self._embeddings = emb
        self.indptr, self.rows, self.gains = indptr, rows_arr, gains_arr
        self._embeddings.setflags(write=False)
        if n_records is not None or dim is not None:
            self.check_records(n_records, dim)

    # ------------------------------------------------------------------ accessors
    @property
    def embeddings(self) -> np.ndarray:
        """The query vectors, ``(n, d)`` float32 (read-only)."""
        return self._embeddings

    @property
    def dim(self) -> int:
        return int(self._embeddings.shape[1])

    def __len__(self) -> int:
        return int(self._embeddings.shape[0])

    def __repr__(self) -> str:
        return f"QuerySet(n={len(self)}, dim={self.dim}, answers={self.rows.size})"

    def answer_rows(self, i: int) -> np.ndarray:
        """Record rows that answer query ``i``."""
        return self.rows[self.indptr[i] : self.indptr[i + 1]]

    def answer_gains(self, i: int) -> np.ndarray:
        """Relevance grades of :meth:`answer_rows` (1.0 for binary answers)."""
        return self.gains[self.indptr[i] : self.indptr[i + 1]]

    @property
    def query_of_answer(self) -> np.ndarray:
        """For each entry of :attr:`rows`, the query it belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))

    def answers(self) -> list[dict[int, float]]:
        """Answers as a list of ``{row: grade}`` dicts (one per query)."""
        return [
            dict(zip(self.answer_rows(i).tolist(), self.answer_gains(i).tolist(), strict=True))
            for i in range(len(self))
        ]

    # ------------------------------------------------------------------ checks and views
    def check_records(self, n_records: int | None, dim: int | None) -> None:
        """Check the queries against a record matrix of ``n_records`` rows of width ``dim``."""
        if dim is not None and dim != self.dim:
            msg = f"query vectors have width {self.dim} but record vectors have width {dim}"
            raise DimensionMismatchError(msg)
        if n_records is not None and self.rows.size:
            top = int(self.rows.max())
            if top >= n_records:
                q = int(self.query_of_answer[int(np.argmax(self.rows))])
                msg = (
                    f"query {q} names record row {top}, but there are only {n_records} records "
                    f"(rows 0..{n_records - 1})"
                )
                raise AnswerError(msg)

    def subset(self, idx: Sequence[int] | np.ndarray) -> QuerySet:
        """The queries at positions ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        out = QuerySet.__new__(QuerySet)
        counts = np.diff(self.indptr)[idx]
        out.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        take = (
            np.concatenate([np.arange(self.indptr[i], self.indptr[i + 1]) for i in idx])
            if idx.size
            else np.zeros(0, dtype=np.int64)
        ).astype(np.int64)
        out.rows = self.rows[take]
        out.gains = self.gains[take]
        out._embeddings = self._embeddings[idx]
        out._embeddings.setflags(write=False)
        return out

    @staticmethod
    def concat(a: QuerySet, b: QuerySet) -> QuerySet:
        """The queries of ``a`` followed by those of ``b``."""
        if a.dim != b.dim:
            msg = f"cannot join query sets of widths {a.dim} and {b.dim}"
            raise DimensionMismatchError(msg)
        out = QuerySet.__new__(QuerySet)
        out._embeddings = np.concatenate([a.embeddings, b.embeddings])
        out._embeddings.setflags(write=False)
        out.indptr = np.concatenate([a.indptr, b.indptr[1:] + a.indptr[-1]])
        out.rows = np.concatenate([a.rows, b.rows])
        out.gains = np.concatenate([a.gains, b.gains])
        return out


def _plain_answers(
    answers: Sequence[Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The common inputs in vectorised passes: every entry a non-empty list/tuple of row ints,
    or every entry a ``{row int: int/float grade}`` dict. Returns ``(indptr, rows, gains)`` as
    the checked path would (duplicate rows dropped, first appearance kept; grades <= 0 dropped),
    or ``None`` for anything else, including any input error: the checked per-query path
    (:func:`_answer_pairs`) then handles it and words the error."""
    kinds = set(map(type, answers))
    if not kinds or not (kinds <= {list, tuple} or kinds == {dict}) or not all(answers):
        return None  # (empty entries: the checked path says which query has no answer)
    grades: np.ndarray | None = None
    if kinds <= {list, tuple}:
        flat = list(chain.from_iterable(answers))
    elif kinds == {dict}:
        flat = list(chain.from_iterable(answers))  # keys
        values = list(chain.from_iterable(a.values() for a in answers))
        if not set(map(type, values)) <= {int, float}:
            return None
        grades = np.array(values, dtype=np.float64)
        if not np.all(np.isfinite(grades)):
            return None
    if set(map(type, flat)) != {int}:
        return None
    rows = np.array(flat, dtype=np.int64)
    if rows.min() < 0:
        return None
    counts = np.fromiter(map(len, answers), dtype=np.int64, count=len(answers))
    query = np.repeat(np.arange(len(answers), dtype=np.int64), counts)
    if grades is None:
        grades = np.ones(rows.size)
        key = query * (int(rows.max()) + 1) + rows
        srt = np.sort(key)
        if np.any(srt[1:] == srt[:-1]):  # a row repeated within a query: keep the first
            _, first = np.unique(key, return_index=True)
            keep = np.sort(first)
            rows, grades, query = rows[keep], grades[keep], query[keep]
    elif np.any(grades <= 0):  # a dict's keys are distinct; grade <= 0 means "not relevant"
        keep = grades > 0
        rows, grades, query = rows[keep], grades[keep], query[keep]
    counts = np.bincount(query, minlength=len(answers))
    if np.any(counts == 0):
        return None
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, rows, grades


def _answer_pairs(i: int, ans: Any) -> list[tuple[int, float]]:
    if isinstance(ans, Mapping):
        items = list(ans.items())
    elif isinstance(ans, (str, bytes)) or not isinstance(ans, Iterable):
        msg = (
            f"answers of query {i} must be a list of record rows or a {{row: grade}} mapping; "
            f"received {type(ans).__name__}"
        )
        raise AnswerError(msg)
    else:
        items = [(r, 1.0) for r in ans]
    pairs: dict[int, float] = {}
    for r, g in items:
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)):
            msg = f"query {i} names record row {r!r}; rows must be integers"
            raise AnswerError(msg)
        if r < 0:
            msg = f"query {i} names record row {int(r)}; rows must be >= 0"
            raise AnswerError(msg)
        try:
            grade = float(g)
        except (TypeError, ValueError):
            msg = f"query {i}: grade of row {int(r)} must be a number; received {g!r}"
            raise AnswerError(msg) from None
        if not np.isfinite(grade):
            msg = f"query {i}: grade of row {int(r)} is {grade}; grades must be finite"
            raise AnswerError(msg)
        if grade > 0:
            pairs[int(r)] = max(grade, pairs.get(int(r), 0.0))
    return list(pairs.items())
