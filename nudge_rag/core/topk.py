"""Top-k in numpy: the one exact ranking of the package, and the best unmoved scores of NUDGE.

* :func:`topk_rows`: the rows of the ``k`` best scores per query, best first, ties to the lower
  row (exact; the evaluation, the store scans and the CLI's exact search all rank with it), and
  :class:`RunningTopK`, the same over records that arrive page by page.
* Only records that some training query points to ever move; every other record scores the same
  for every γ. One pass over those records, keeping per query its ``k`` best scores, is all γ
  selection needs from them. :class:`UnmovedTopK` does that pass incrementally, so the records
  may come from a matrix in memory or from a vector store read page by page.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nudge_rag.errors import (
    ConfigError,
    DimensionMismatchError,
    NonFiniteError,
    ShapeError,
    ZeroVectorError,
)

__all__ = [
    "BestUnmovedScores",
    "RunningTopK",
    "UnmovedTopK",
    "normalize_rows",
    "row_norms",
    "topk_rows",
]


class BestUnmovedScores(NamedTuple):
    """Per validation query, the ``k`` best scores among records outside the fitted set.

    ``scores`` is ``(n_queries, k)`` float32, each row sorted in decreasing order, padded with
    ``-inf`` where fewer than ``k`` such records exist. "Outside the fitted set" means: not an
    answer of any training or validation query (those records are scored exactly by the core).
    """

    scores: np.ndarray

    @property
    def k(self) -> int:
        return int(self.scores.shape[1])


def row_norms(x: np.ndarray, *, first_row: int = 0, name: str = "record embeddings") -> np.ndarray:
    """Euclidean norms of the rows of ``x`` (float32), refusing non-finite and zero rows.

    ``first_row`` offsets the row numbers quoted in error messages (for page-by-page callers).
    """
    x32 = np.asarray(x, dtype=np.float32)
    # float32 accumulation: ~3x faster than float64 here, norms exact to ~1e-7 relative
    norms: np.ndarray = np.sqrt(np.einsum("ij,ij->i", x32, x32))
    if not np.all(np.isfinite(norms)):
        bad = int(np.flatnonzero(~np.isfinite(norms))[0])
        msg = f"{name}: row {first_row + bad} has a NaN or inf value"
        raise NonFiniteError(msg)
    if np.any(norms == 0.0):
        bad = int(np.flatnonzero(norms == 0.0)[0])
        msg = f"{name}: row {first_row + bad} is an all-zero vector and cannot be normalised"
        raise ZeroVectorError(msg)
    return norms


def normalize_rows(
    x: np.ndarray,
    *,
    first_row: int = 0,
    name: str = "record embeddings",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``x / ||x||`` row-wise in float32, refusing non-finite and zero rows.

    ``first_row`` offsets the row numbers quoted in error messages (for page-by-page callers);
    ``out`` receives the result when given (a float32 array of the same shape).
    """
    x32 = np.asarray(x, dtype=np.float32)
    norms = row_norms(x32, first_row=first_row, name=name)
    if out is None:
        out = np.empty(x32.shape, dtype=np.float32)
    np.divide(x32, norms[:, None], out=out)
    return out


class UnmovedTopK:
    """Accumulates, per query, the ``k`` best scores among records not in ``exclude``.

    Example:
        >>> acc = UnmovedTopK(np.eye(2, dtype=np.float32), exclude=[0], k=1)
        >>> acc.update(np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32), first_row=0)
        >>> acc.result().scores.tolist()
        [[0.6000000238418579], [1.0]]

    Args:
        queries: ``(n, d)`` query vectors.
        exclude: Global record rows to leave out (the records the core scores exactly).
        k: How many best scores to keep per query.
        normalize: Normalise each record before scoring (NUDGE works on unit records).
    """

    def __init__(
        self,
        queries: np.ndarray,
        exclude: np.ndarray | list[int],
        k: int,
        *,
        normalize: bool = True,
    ) -> None:
        if k < 1:
            msg = f"k must be >= 1; received {k}"
            raise ShapeError(msg)
        self._q = np.ascontiguousarray(queries, dtype=np.float32)
        self._exclude = np.unique(np.asarray(exclude, dtype=np.int64))
        self._k = int(k)
        self._normalize = normalize
        self._best = np.full((self._q.shape[0], self._k), -np.inf, dtype=np.float32)
        self._buf = np.empty((0, self._q.shape[0]), dtype=np.float32)
        self.n_seen = 0

    def update(
        self, records: np.ndarray, *, first_row: int | None = None, rows: np.ndarray | None = None
    ) -> None:
        """Score one page of records.

        Give either ``first_row`` (the page holds rows ``first_row .. first_row + len - 1``) or
        ``rows`` (the global row of each record of the page).
        """
        page = np.asarray(records)
        if page.ndim != 2 or (page.shape[0] and page.shape[1] != self._q.shape[1]):
            msg = f"a page of records must be (n, {self._q.shape[1]}); received shape {page.shape}"
            raise DimensionMismatchError(msg)
        n = page.shape[0]
        if n == 0 or self._q.shape[0] == 0:
            self.n_seen += n
            return
        if rows is None:
            start = 0 if first_row is None else int(first_row)
            lo, hi = np.searchsorted(self._exclude, [start, start + n])
            local_excl = self._exclude[lo:hi] - start
            start_for_msg = start
        else:
            rows = np.asarray(rows, dtype=np.int64)
            local_excl = np.flatnonzero(np.isin(rows, self._exclude))
            start_for_msg = 0
        if self._normalize:
            page = normalize_rows(page, first_row=start_for_msg)
        else:
            page = np.asarray(page, dtype=np.float32)
        # (page × queries): masking excluded records is then a cheap row write. The buffer is
        # reused from page to page: a fresh one would cost a page fault per 4 KiB every page.
        if self._buf.shape[0] < n:
            self._buf = np.empty((n, self._q.shape[0]), dtype=np.float32)
        scores = np.matmul(page, self._q.T, out=self._buf[:n])
        if local_excl.size:
            scores[local_excl] = -np.inf
        self._merge(scores)
        self.n_seen += n

    def _merge(self, scores: np.ndarray) -> None:
        k = self._k
        if k == 1:
            np.maximum(self._best[:, 0], scores.max(axis=0), out=self._best[:, 0])
            return
        if scores.shape[0] > k:
            part = np.partition(scores, scores.shape[0] - k, axis=0)[-k:]
        else:
            part = scores
        both = np.concatenate([self._best, part.T], axis=1)
        both.sort(axis=1)
        self._best = np.ascontiguousarray(both[:, ::-1][:, :k])

    def result(self) -> BestUnmovedScores:
        """The best scores so far, each row in decreasing order."""
        best = self._best.copy()
        if self._k > 1:
            best = -np.sort(-best, axis=1)
        return BestUnmovedScores(best)


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` highest scores of each query, best first.

    Uses ``np.argpartition`` (linear time) then sorts only the ``k`` winners. Ties are broken
    deterministically by the lower row index first, both inside the top ``k`` and at its
    boundary (of rows tied with the k-th best score, the lowest-indexed ones are kept; only
    the queries where such a tie straddles the boundary pay for an extra pass).

    Args:
        scores: ``(n_queries, n_records)`` similarity scores, higher is better; no NaN.
        k: Number of rows to return, >= 1. If ``k > n_records`` the extra columns are ``-1``
            (the padding value :func:`~nudge_rag.evaluation.ranking_metrics` understands).

    Returns:
        ``(n_queries, k)`` int64 matrix of record rows.

    Raises:
        ConfigError: If ``k`` is not an integer >= 1.
        ShapeError: If ``scores`` is not a 2-D numeric matrix.
        NonFiniteError: If ``scores`` holds NaN.

    Example:
        >>> topk_rows(np.array([[0.2, 0.5, 0.5, 0.1]]), k=2)
        array([[1, 2]])
    """
    # (the core imports nothing but numpy and errors, hence this check is not _util's)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        msg = f"k: expected an integer >= 1, received {k!r}"
        raise ConfigError(msg)
    k = int(k)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        msg = f"scores must be a 2-D (n_queries, n_records) matrix, got shape {scores.shape}"
        raise ShapeError(msg)
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        msg = f"scores must be numeric, got dtype {scores.dtype}"
        raise ShapeError(msg)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        msg = "scores must not hold NaN"
        raise NonFiniteError(msg)
    n, n_rec = scores.shape
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or n_rec == 0:
        return out
    if k >= n_rec:
        out[:, :n_rec] = np.argsort(-scores, axis=1, kind="stable")
        return out

    # The k best of each row as a set (order unspecified), without copying the scores.
    cand = np.argpartition(scores, n_rec - k, axis=1)[:, n_rec - k :]
    kth = np.take_along_axis(scores, cand, axis=1).min(axis=1, keepdims=True)
    # Where rows tied with the k-th best score straddle the boundary, argpartition picked an
    # arbitrary subset of them: redo those rows keeping the lowest-indexed tied rows.
    n_above = np.count_nonzero(scores > kth, axis=1)
    n_tied = np.count_nonzero(scores == kth, axis=1)
    spill = np.flatnonzero(n_above + n_tied > k)
    for start in range(0, spill.size, 256):  # in chunks, to bound the temporaries
        rows = spill[start : start + 256]
        sub, sub_kth = scores[rows], kth[rows]
        tied = sub == sub_kth
        need = (k - n_above[rows])[:, None]
        keep = (sub > sub_kth) | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need))
        cand[rows] = np.nonzero(keep)[1].reshape(rows.size, k)
    # Sort the winners by score descending, ties by lower row index.
    cand.sort(axis=1)
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    order = np.argsort(-cand_scores, axis=1, kind="stable")
    out[:] = np.take_along_axis(cand, order, axis=1)
    return out


class RunningTopK:
    """The exact :func:`topk_rows` of records that arrive page by page.

    Records are numbered in arrival order (the first page's rows first); ties go to the record
    that arrived first, as they would in one :func:`topk_rows` call over all pages side by side.
    Memory: one page of scores and ``n_queries × k`` best rows.

    Example:
        >>> top = RunningTopK(n_queries=1, k=2)
        >>> top.update(np.array([[0.1, 0.9]]))
        >>> top.update(np.array([[0.5, 0.9]]))
        >>> top.rows.tolist(), top.scores.tolist(), top.n_seen
        ([[1, 3]], [[0.9, 0.9]], 4)
    """

    def __init__(self, n_queries: int, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            msg = f"k: expected an integer >= 1, received {k!r}"
            raise ConfigError(msg)
        self.k = int(k)
        self.scores = np.zeros((int(n_queries), 0), dtype=np.float64)
        self.rows = np.zeros((int(n_queries), 0), dtype=np.int64)
        self.n_seen = 0

    def update(self, scores: np.ndarray) -> None:
        """Merge one page: ``(n_queries, n_page)`` scores of the next ``n_page`` records."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape[0] != self.rows.shape[0]:
            msg = f"a page of scores must be ({self.rows.shape[0]}, n); received shape {s.shape}"
            raise ShapeError(msg)
        if s.shape[1] == 0:
            return
        cand_s = np.concatenate([self.scores, s], axis=1)
        page_rows = np.broadcast_to(self.n_seen + np.arange(s.shape[1]), s.shape)
        cand_i = np.concatenate([self.rows, page_rows], axis=1)
        top = topk_rows(cand_s, min(self.k, cand_s.shape[1]))  # kept rows come first: ties to them
        self.scores = np.take_along_axis(cand_s, top, axis=1)
        self.rows = np.take_along_axis(cand_i, top, axis=1)
        self.n_seen += s.shape[1]
