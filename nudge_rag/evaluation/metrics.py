"""Information-retrieval metrics in pure numpy: nDCG, recall, MRR, hit rate and precision at k.

Two flavours share one set of conventions (those of ``trec_eval`` / BEIR):

* per-query functions (:func:`ndcg_at_k`, :func:`recall_at_k`, :func:`mrr_at_k`,
  :func:`hit_rate_at_k`, :func:`precision_at_k`) that take a ranked list of ids and a mapping of
  id to relevance grade; and
* a batched, vectorised :func:`ranking_metrics` for the hot path (benchmarks, γ selection) that
  takes a matrix of ranked row indices and the relevance judgements in CSR form, together with
  :func:`topk_rows` (scores to ranked rows) and :func:`answers_to_csr` (answer lists to CSR).

Conventions:

* A document is *relevant* when its grade is > 0. Grades <= 0, and documents with no judgement,
  earn nothing.
* nDCG uses linear gains, as ``trec_eval``'s ``ndcg_cut``: ``DCG@k = sum_{r=1..k} g_r / log2(r+1)``
  with ``g_r`` the grade of the document at rank ``r``; the ideal DCG sorts all judged grades > 0
  in decreasing order (including relevant documents that were not retrieved).
* Ranks are positions in the ranking as given. A repeated id keeps its slot but only its first
  occurrence counts: later occurrences earn nothing (they count as non-relevant).
* An empty ranking, or a query with no relevant document, scores 0.0 on every metric.
* ``precision_at_k`` divides by ``k`` even when fewer than ``k`` documents were retrieved
  (``trec_eval``'s ``P_k``); ``mrr_at_k`` only looks at the top ``k`` (unlike ``trec_eval``'s
  ``recip_rank``, which has no cutoff).

Example:
    >>> ndcg_at_k(["d2", "d3", "x"], {"d1": 2, "d2": 0, "d3": 1}, k=2)  # doctest: +ELLIPSIS
    0.2398...
    >>> ranked = topk_rows(np.array([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]]), k=2)
    >>> ranked
    array([[1, 2],
           [0, 1]])
    >>> indptr, rows, gains = answers_to_csr([[2], {1: 2.0, 2: 1.0}])
    >>> ranking_metrics(ranked, indptr, rows, gains, k=2).mean()  # doctest: +ELLIPSIS
    MetricMeans(ndcg=0.5552..., recall=0.75, mrr=0.5, hit=1.0)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from nudge_rag._util import check_positive_int
from nudge_rag.core.topk import topk_rows
from nudge_rag.errors import AnswerError, NonFiniteError, ShapeError

__all__ = [
    "MetricMeans",
    "RankingMetrics",
    "answers_to_csr",
    "hit_rate_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
    "topk_rows",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _first_k_gains(
    ranked_ids: Sequence[Hashable], relevance: Mapping[Hashable, float], k: int
) -> list[float]:
    """Gains (grade if > 0, else 0) of the first ``k`` positions; repeats earn 0."""
    seen: set[Hashable] = set()
    out: list[float] = []
    for doc in list(ranked_ids)[:k]:
        if doc in seen:
            out.append(0.0)
            continue
        seen.add(doc)
        grade = float(relevance.get(doc, 0.0))
        out.append(grade if grade > 0 else 0.0)
    return out


def _n_relevant(relevance: Mapping[Hashable, float]) -> int:
    return sum(1 for g in relevance.values() if float(g) > 0)


# --------------------------------------------------------------------------------------------
# per-query metrics
# --------------------------------------------------------------------------------------------


def ndcg_at_k(
    ranked_ids: Sequence[Hashable], relevance: Mapping[Hashable, float], k: int = 10
) -> float:
    """Normalised discounted cumulative gain at ``k`` with linear (graded) gains.

    ``DCG@k = sum_{r=1..k} grade(r) / log2(r + 1)``, divided by the DCG of the ideal ordering of
    all judged grades > 0. Matches ``trec_eval``'s ``ndcg_cut.k``.

    Args:
        ranked_ids: Retrieved ids, best first. Only the first occurrence of a repeated id counts.
        relevance: Grade of each judged id; grades <= 0 count as non-relevant.
        k: Cutoff, >= 1.

    Returns:
        nDCG@k in [0, 1]; 0.0 for an empty ranking or when no id has a grade > 0.

    Raises:
        ConfigError: If ``k`` is not an integer >= 1.
    """
    k = check_positive_int(k, "k")
    ideal = sorted((float(g) for g in relevance.values() if float(g) > 0), reverse=True)[:k]
    if not ideal:
        return 0.0
    gains = _first_k_gains(ranked_ids, relevance, k)
    dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains) if g > 0)
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg


def recall_at_k(
    ranked_ids: Sequence[Hashable], relevance: Mapping[Hashable, float], k: int = 10
) -> float:
    """Share of the relevant ids (grade > 0) found in the top ``k``.

    Args:
        ranked_ids: Retrieved ids, best first. Only the first occurrence of a repeated id counts.
        relevance: Grade of each judged id; grades <= 0 count as non-relevant.
        k: Cutoff, >= 1.

    Returns:
        ``|relevant ∩ top-k| / |relevant|``; 0.0 when there is no relevant id.

    Raises:
        ConfigError: If ``k`` is not an integer >= 1.
    """
    k = check_positive_int(k, "k")
    n_rel = _n_relevant(relevance)
    if n_rel == 0:
        return 0.0
    hits = sum(1 for g in _first_k_gains(ranked_ids, relevance, k) if g > 0)
    return hits / n_rel


def precision_at_k(
    ranked_ids: Sequence[Hashable], relevance: Mapping[Hashable, float], k: int = 10
) -> float:
    """Share of the top ``k`` positions holding a relevant id (``trec_eval``'s ``P_k``).

    Args:
        ranked_ids: Retrieved ids, best first. Only the first occurrence of a repeated id counts.
        relevance: Grade of each judged id; grades <= 0 count as non-relevant.
        k: Cutoff, >= 1. The denominator is always ``k``, even if fewer ids were retrieved.

    Returns:
        ``|relevant ∩ top-k| / k``.

    Raises:
        ConfigError: If ``k`` is not an integer >= 1.
    """
    k = check_positive_int(k, "k")
    hits = sum(1 for g in _first_k_gains(ranked_ids, relevance, k) if g > 0)
    return hits / k


def mrr_at_k(
    ranked_ids: Sequence[Hashable], relevance: Mapping[Hashable, float], k: int = 10
) -> float:
    """Reciprocal rank of the first relevant id within the top ``k``.

    Args:
        ranked_ids: Retrieved ids, best first.
        relevance: Grade of each judged id; grades <= 0 count as non-relevant.
        k: Cutoff, >= 1.

    Returns:
        ``1 / rank`` of the first relevant id (ranks start at 1), or 0.0 if none is in the top k.

    Raises:
        ConfigError: If ``k`` is not an integer >= 1.
    """
    k = check_positive_int(k, "k")
    for r, g in enumerate(_first_k_gains(ranked_ids, relevance, k)):
        if g > 0:
            return 1.0 / (r + 1)
    return 0.0


def hit_rate_at_k(
    ranked_ids: Sequence[Hashable], relevance: Mapping[Hashable, float], k: int = 10
) -> float:
    """1.0 if any relevant id is in the top ``k``, else 0.0.

    Args:
        ranked_ids: Retrieved ids, best first.
        relevance: Grade of each judged id; grades <= 0 count as non-relevant.
        k: Cutoff, >= 1.

    Returns:
        1.0 or 0.0.

    Raises:
        ConfigError: If ``k`` is not an integer >= 1.
    """
    k = check_positive_int(k, "k")
    return 1.0 if any(g > 0 for g in _first_k_gains(ranked_ids, relevance, k)) else 0.0


# --------------------------------------------------------------------------------------------
# batched metrics
# --------------------------------------------------------------------------------------------


class MetricMeans(NamedTuple):
    """Metrics averaged over queries."""

    ndcg: float
    recall: float
    mrr: float
    hit: float


class RankingMetrics(NamedTuple):
    """Per-query metrics at a cutoff, each a float64 array of shape ``(n_queries,)``.

    Example:
        >>> m = ranking_metrics(np.array([[3, 1], [-1, -1]]), *answers_to_csr([[1], [0]]), k=2)
        >>> m.recall, m.mrr
        (array([1., 0.]), array([0.5, 0. ]))
    """

    ndcg: np.ndarray
    recall: np.ndarray
    mrr: np.ndarray
    hit: np.ndarray

    def mean(self) -> MetricMeans:
        """Average each metric over the queries.

        Raises:
            ShapeError: If there are no queries to average over.
        """
        if self.ndcg.size == 0:
            msg = "cannot average metrics over zero queries (ranked had 0 rows)"
            raise ShapeError(msg)
        return MetricMeans(
            ndcg=float(self.ndcg.mean()),
            recall=float(self.recall.mean()),
            mrr=float(self.mrr.mean()),
            hit=float(self.hit.mean()),
        )


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _check_csr(
    indptr: np.ndarray, rows: np.ndarray, gains: np.ndarray, n_queries: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indptr = np.asarray(indptr)
    rows = np.asarray(rows)
    gains = np.asarray(gains)
    if indptr.ndim != 1 or indptr.shape[0] != n_queries + 1:
        msg = (
            f"indptr must have shape (n_queries + 1,) = ({n_queries + 1},) to match ranked, "
            f"got shape {indptr.shape}"
        )
        raise ShapeError(msg)
    if indptr.size and not np.issubdtype(indptr.dtype, np.integer):
        msg = f"indptr must hold integers, got dtype {indptr.dtype}"
        raise ShapeError(msg)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        msg = f"rows must be a 1-D integer array, got shape {rows.shape} dtype {rows.dtype}"
        raise ShapeError(msg)
    if gains.ndim != 1 or gains.shape != rows.shape:
        msg = f"gains must be 1-D with the shape of rows {rows.shape}, got shape {gains.shape}"
        raise ShapeError(msg)
    indptr = indptr.astype(np.int64, copy=False)
    if indptr[0] != 0 or indptr[-1] != rows.shape[0] or np.any(np.diff(indptr) < 0):
        msg = (
            f"indptr must start at 0, never decrease and end at len(rows) = {rows.shape[0]}, "
            f"got start {indptr[0]}, end {indptr[-1]}"
        )
        raise ShapeError(msg)
    rows = rows.astype(np.int64, copy=False)
    if rows.size and rows.min() < 0:
        msg = f"rows must be record rows >= 0, got {int(rows.min())}"
        raise AnswerError(msg)
    try:
        gains = gains.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        msg = f"gains must be numeric, got dtype {gains.dtype}"
        raise ShapeError(msg) from exc
    if not np.all(np.isfinite(gains)):
        msg = "gains must be finite, got NaN or inf"
        raise NonFiniteError(msg)
    return indptr, rows, gains


def ranking_metrics(
    ranked: np.ndarray,
    indptr: np.ndarray,
    rows: np.ndarray,
    gains: np.ndarray,
    k: int | None = None,
) -> RankingMetrics:
    """nDCG, recall, MRR and hit rate at ``k`` for many queries at once, vectorised.

    Same conventions as the per-query functions (linear gains, relevant = gain > 0, a repeated
    row in a ranking counts only at its first position, empty rankings score 0).

    Args:
        ranked: ``(n_queries, width)`` integer matrix of record rows, best first; ``-1`` marks
            padding (nothing retrieved at that position).
        indptr: ``(n_queries + 1,)`` CSR offsets: query ``i``'s judgements are
            ``rows[indptr[i]:indptr[i + 1]]`` with grades ``gains[indptr[i]:indptr[i + 1]]``.
        rows: ``(nnz,)`` judged record rows (>= 0, no repeats within a query).
        gains: ``(nnz,)`` grades; those <= 0 count as non-relevant.
        k: Cutoff, >= 1; defaults to ``width``. Only the first ``min(k, width)`` columns of
            ``ranked`` are read; if ``k > width`` the missing positions count as padding.

    Returns:
        A :class:`RankingMetrics` of ``(n_queries,)`` float64 arrays.

    Raises:
        ConfigError: If ``k`` is not an integer >= 1.
        ShapeError: If ``ranked`` is not a 2-D integer matrix with entries >= -1, or the CSR
            arrays are inconsistent with each other or with ``ranked``.
        AnswerError: If ``rows`` holds a negative row or repeats a row within a query.
        NonFiniteError: If ``gains`` holds NaN or inf.
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        msg = f"ranked must be a 2-D (n_queries, k) matrix, got shape {ranked.shape}"
        raise ShapeError(msg)
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        msg = f"ranked must hold integer row indices, got dtype {ranked.dtype}"
        raise ShapeError(msg)
    n, width = ranked.shape
    k = width if k is None else k
    k = check_positive_int(k, "k")
    ranked = ranked[:, :k].astype(np.int64, copy=False)
    if ranked.size and ranked.min() < -1:
        msg = f"ranked must hold row indices >= 0 or -1 for padding, got {int(ranked.min())}"
        raise ShapeError(msg)
    indptr, rows, gains = _check_csr(indptr, rows, gains, n)

    # Look every retrieved (query, row) pair up among the judged pairs with one searchsorted on
    # the combined key query * n_keys + row.
    n_keys = int(max(rows.max(initial=-1), ranked.max(initial=-1))) + 1
    if n * n_keys >= 2**62:
        msg = f"too many queries x rows to index: {n} x {n_keys}"
        raise ShapeError(msg)
    query_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    judged_keys = query_of * n_keys + rows
    order = np.argsort(judged_keys, kind="stable")
    judged_keys = judged_keys[order]
    judged_gains = gains[order]
    repeats = judged_keys[1:] == judged_keys[:-1]
    if np.any(repeats):
        bad = int(judged_keys[1:][repeats][0])
        msg = (
            f"rows must not repeat a row within a query: "
            f"query {bad // n_keys} lists row {bad % n_keys} twice"
        )
        raise AnswerError(msg)

    kw = ranked.shape[1]
    gain_mat = np.zeros((n, kw), dtype=np.float64)
    if judged_keys.size and ranked.size:
        keys = np.arange(n, dtype=np.int64)[:, None] * n_keys + ranked
        pos = np.searchsorted(judged_keys, keys)
        pos_c = np.minimum(pos, judged_keys.size - 1)
        found = (judged_keys[pos_c] == keys) & (ranked >= 0)
        gain_mat[found] = judged_gains[pos_c[found]]
        # Repeated rows within a ranking: only the first occurrence counts.
        by_row = np.argsort(ranked, axis=1, kind="stable")
        sorted_rows = np.take_along_axis(ranked, by_row, axis=1)
        later = np.zeros_like(ranked, dtype=bool)
        later[:, 1:] = sorted_rows[:, 1:] == sorted_rows[:, :-1]
        dup = np.zeros_like(later)
        np.put_along_axis(dup, by_row, later, axis=1)
        gain_mat[dup] = 0.0
    gain_mat = np.where(gain_mat > 0, gain_mat, 0.0)
    relevant = gain_mat > 0

    disc = _discounts(k)
    dcg = gain_mat @ disc[:kw]

    # Ideal DCG: each query's positive grades sorted decreasingly, first k of them.
    positive = gains > 0
    pq, pg = query_of[positive], gains[positive]
    n_rel = np.bincount(pq, minlength=n).astype(np.float64)
    by_q = np.lexsort((-pg, pq))
    pq, pg = pq[by_q], pg[by_q]
    starts = np.concatenate(([0], np.cumsum(n_rel.astype(np.int64))))[:-1]
    rank_in_q = np.arange(pq.size, dtype=np.int64) - starts[pq]
    top = rank_in_q < k
    idcg = np.bincount(pq[top], weights=pg[top] * disc[rank_in_q[top]], minlength=n)

    hits = relevant.sum(axis=1).astype(np.float64)
    any_rel = relevant.any(axis=1)
    first = np.argmax(relevant, axis=1) if kw else np.zeros(n, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndcg = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
        recall = np.where(n_rel > 0, hits / np.where(n_rel > 0, n_rel, 1.0), 0.0)
    mrr = np.where(any_rel, 1.0 / (first + 1.0), 0.0)
    return RankingMetrics(
        ndcg=ndcg.astype(np.float64),
        recall=recall.astype(np.float64),
        mrr=mrr.astype(np.float64),
        hit=np.asarray(any_rel, dtype=np.float64),
    )


def answers_to_csr(
    answers: Sequence[Mapping[int, float] | Iterable[int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert per-query answers to the CSR triple :func:`ranking_metrics` takes.

    Args:
        answers: One entry per query: either a mapping of record row to grade, or an iterable
            of record rows (binary relevance, each row getting gain 1.0; repeats collapse).
            An empty entry is allowed (a query with nothing relevant scores 0).

    Returns:
        ``(indptr, rows, gains)``: int64 ``(n_queries + 1,)``, int64 ``(nnz,)``, float64
        ``(nnz,)``, rows of each query in the order given.

    Raises:
        AnswerError: If an entry is not a mapping or iterable of rows, or a row is not an
            integer >= 0.
        NonFiniteError: If a grade is NaN or inf.

    Example:
        >>> answers_to_csr([{3: 2.0, 1: 1.0}, [0, 2]])
        (array([0, 2, 4]), array([3, 1, 0, 2]), array([2., 1., 1., 1.]))
    """
    indptr = [0]
    rows: list[int] = []
    gains: list[float] = []
    for qi, ans in enumerate(answers):
        if isinstance(ans, Mapping):
            items = list(ans.items())
        elif isinstance(ans, (str, bytes)) or not isinstance(ans, (Iterable, np.ndarray)):
            msg = (
                f"answers[{qi}] must be a mapping of row -> grade or a list of rows, "
                f"got {type(ans).__name__}"
            )
            raise AnswerError(msg)
        else:
            seq = ans.ravel().tolist() if isinstance(ans, np.ndarray) else list(ans)
            items = [(r, 1.0) for r in dict.fromkeys(seq)]
        for row, grade in items:
            if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or row < 0:
                msg = f"answers[{qi}] must name record rows as integers >= 0, got {row!r}"
                raise AnswerError(msg)
            g = float(grade)
            if not math.isfinite(g):
                msg = f"answers[{qi}] grade for row {row} must be finite, got {grade!r}"
                raise NonFiniteError(msg)
            rows.append(int(row))
            gains.append(g)
        indptr.append(len(rows))
    return (
        np.asarray(indptr, dtype=np.int64),
        np.asarray(rows, dtype=np.int64),
        np.asarray(gains, dtype=np.float64),
    )
