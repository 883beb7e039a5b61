"""The pool: per held-out question, its best records among those that do not move.

Held-out questions are scored against the records a candidate fits exactly, and against a pool
of the best other records (read from a scan of the store, or from the store's own search), so
that an adaptor's changed query vectors can be rescored without reading the store again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["POOL", "Pool", "PoolAccumulator", "pool_from_hits"]

#: Records pooled per held-out question.
POOL = 40


@dataclass(frozen=True)
class Pool:
    """Per held-out question, up to ``P`` unit vectors of records that do not move (``vectors``
    ``(h, P, d)``, ``valid`` ``(h, P)``), plus ``shared`` records every question sees."""

    vectors: np.ndarray
    valid: np.ndarray
    shared: np.ndarray

    def scores(self, q: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``(h, P + s)`` scores of the pooled records for question vectors ``q`` (``-inf``
        where a question's pool has fewer records); ``rows``: the held-out questions ``q`` are
        (default: all, in order)."""
        q32 = np.asarray(q, dtype=np.float32)
        vec = self.vectors if rows is None else self.vectors[rows]
        ok = self.valid if rows is None else self.valid[rows]
        own = np.einsum("hd,hpd->hp", q32, vec)
        own = np.where(ok, own, -np.inf).astype(np.float32)
        if self.shared.shape[0]:
            return np.concatenate([own, q32 @ self.shared.T], axis=1)
        return own


class PoolAccumulator:
    """Builds a :class:`Pool` from pages of records (unit vectors), as a store is scanned."""

    def __init__(self, queries: np.ndarray, size: int = POOL) -> None:
        self._q = np.ascontiguousarray(queries, dtype=np.float32)
        h, d = self._q.shape
        self._p = int(size)
        self._s = np.full((h, self._p), -np.inf, dtype=np.float32)
        self._v = np.zeros((h, self._p, d), dtype=np.float32)

    def update(self, unit_records: np.ndarray) -> None:
        page = np.asarray(unit_records, dtype=np.float32)
        if page.shape[0] == 0 or self._q.shape[0] == 0:
            return
        sc = self._q @ page.T  # (h, n)
        # only questions whose pool this page improves are merged
        better = np.flatnonzero(sc.max(axis=1) > self._s[:, -1])
        if better.size == 0:
            return
        p = self._p
        both = np.concatenate([self._s[better], sc[better]], axis=1)  # (b, P + n)
        take = min(p, both.shape[1])
        top = np.argpartition(-both, take - 1, axis=1)[:, :take]
        order = np.argsort(-np.take_along_axis(both, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        new_s = np.full((better.size, p), -np.inf, dtype=np.float32)
        new_v = np.zeros((better.size, p, page.shape[1]), dtype=np.float32)
        new_s[:, :take] = np.take_along_axis(both, top, axis=1)
        old = top < p
        bi, ci = np.nonzero(old)
        new_v[bi, ci] = self._v[better[bi], top[bi, ci]]
        bi, ci = np.nonzero(~old)
        new_v[bi, ci] = page[top[bi, ci] - p]
        self._s[better] = new_s
        self._v[better] = new_v

    def result(self, shared: np.ndarray | None = None) -> Pool:
        d = self._q.shape[1]
        sh = np.zeros((0, d), np.float32) if shared is None else np.asarray(shared, np.float32)
        return Pool(self._v.copy(), np.isfinite(self._s), sh)


def pool_from_hits(
    n_queries: int, hits: Sequence[Sequence[str]], vectors: dict[str, np.ndarray], dim: int,
    shared: np.ndarray | None = None,
) -> Pool:  # fmt: skip
    """A :class:`Pool` from a store's search results (ids per question) and their unit vectors."""
    p = max((len(h) for h in hits), default=0) or 1
    v = np.zeros((n_queries, p, dim), dtype=np.float32)
    ok = np.zeros((n_queries, p), dtype=bool)
    for j, ids in enumerate(hits):
        for c, rid in enumerate(ids):
            vec = vectors.get(rid)
            if vec is not None:
                v[j, c] = vec
                ok[j, c] = True
    sh = np.zeros((0, dim), np.float32) if shared is None else np.asarray(shared, np.float32)
    return Pool(v, ok, sh)
