"""Best scores of query vectors among records that NUDGE does not move, computed page by page.

Only records that some training query points to ever move; every other record scores the same for
every γ. One pass over those records, keeping per query its ``k`` best scores, is all γ selection
needs from them. :class:`UnmovedTopK` does that pass incrementally, so the records may come from a
matrix in memory or from a vector store read page by page.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nudge_rag.errors import DimensionMismatchError, NonFiniteError, ShapeError, ZeroVectorError

__all__ = ["BestUnmovedScores", "UnmovedTopK", "normalize_rows", "row_norms"]


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
    norms = np.sqrt(np.einsum("ij,ij->i", x32, x32))
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
