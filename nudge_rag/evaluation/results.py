"""What an evaluation gives: :class:`EvaluationResult` (means and per-query values at ``k``) and
:func:`compare` of two of them (:class:`Comparison`, one :class:`MetricDelta` per metric, with
per-query wins, losses and ties). Typed values that print as tables and serialise to JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from nudge_rag.errors import ConfigError
from nudge_rag.evaluation.metrics import MetricMeans, RankingMetrics

__all__ = ["Comparison", "EvaluationResult", "MetricDelta", "compare", "frozen"]

#: Metric names, in display order: (field of EvaluationResult, label prefix).
METRICS: tuple[tuple[str, str], ...] = (
    ("ndcg", "NDCG"),
    ("recall", "Recall"),
    ("mrr", "MRR"),
    ("hit_rate", "Hit rate"),
)


def _n_queries(n: int) -> str:
    return f"{n} query" if n == 1 else f"{n} queries"


def frozen(a: Iterable[float]) -> np.ndarray:
    """``a`` as a read-only float64 array (per-query values are never changed after the fact)."""
    arr = np.asarray(list(a), dtype=np.float64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Retrieval quality over judged queries: means and per-query values at cutoff ``k``.

    Attributes:
        name: A label (used by :func:`compare` and the plot).
        k: Cutoff.
        ndcg: Mean graded NDCG@k (linear gains, as ``trec_eval``'s ``ndcg_cut``).
        recall: Mean Recall@k.
        mrr: Mean reciprocal rank within the top k.
        hit_rate: Share of queries with a relevant id in the top k.
        per_query: The four metrics per query, ``(n_queries,)`` read-only float64 arrays.
        query_ids: Query ids, in the order of ``per_query``.
        retrieved: The ids each query retrieved, as returned (all of them, not only the top k).
        n_empty: Queries for which the retriever returned nothing (they score 0).
        seconds: Wall time of the retrieval.

    Example:
        >>> from nudge_rag import evaluate
        >>> res = evaluate(lambda q: ["d1", "d2"], [("what is a cat", ["d2"])], k=10)
        >>> print(res.summary())
        1 query, k=10
          NDCG@10      0.6309
          Recall@10    1.0000
          MRR@10       0.5000
          Hit rate@10  1.0000
    """

    name: str
    k: int
    ndcg: float
    recall: float
    mrr: float
    hit_rate: float
    per_query: RankingMetrics
    query_ids: tuple[str, ...]
    retrieved: tuple[tuple[str, ...], ...]
    n_empty: int
    seconds: float

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    @property
    def means(self) -> MetricMeans:
        """The four means as a :class:`~nudge_rag.evaluation.MetricMeans`."""
        return MetricMeans(self.ndcg, self.recall, self.mrr, self.hit_rate)

    def metrics(self) -> dict[str, float]:
        """``{"ndcg@10": ..., "recall@10": ..., "mrr@10": ..., "hit_rate@10": ...}``."""
        return {f"{m}@{self.k}": float(getattr(self, m)) for m, _ in METRICS}

    def summary(self) -> str:
        """A few readable lines: the means at k."""
        head = f"{self.name}: " if self.name else ""
        empty = f" ({self.n_empty} empty retrievals)" if self.n_empty else ""
        lines = [f"{head}{_n_queries(self.n_queries)}, k={self.k}{empty}"]
        width = max(len(f"{label}@{self.k}") for _, label in METRICS)
        for m, label in METRICS:
            lines.append(f"  {f'{label}@{self.k}':<{width}}  {getattr(self, m):.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self, *, per_query: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dict: means, and (by default) per-query values and retrieved ids."""
        out: dict[str, Any] = {
            "name": self.name,
            "k": self.k,
            "n_queries": self.n_queries,
            "n_empty": self.n_empty,
            "seconds": self.seconds,
            "metrics": self.metrics(),
        }
        if per_query:
            pq = self.per_query
            out["per_query"] = {
                "query_ids": list(self.query_ids),
                "ndcg": pq.ndcg.tolist(),
                "recall": pq.recall.tolist(),
                "mrr": pq.mrr.tolist(),
                "hit_rate": pq.hit.tolist(),
                "retrieved": [list(r) for r in self.retrieved],
            }
        return out


class MetricDelta(NamedTuple):
    """One metric before and after, with per-query wins, losses and ties."""

    metric: str
    before: float
    after: float
    delta: float
    wins: int
    losses: int
    ties: int


@dataclass(frozen=True, eq=False)
class Comparison:
    """Two evaluations of the same queries side by side (see :func:`compare`).

    Attributes:
        before: The baseline.
        after: The candidate.
        rows: One :class:`MetricDelta` per metric (NDCG, recall, MRR, hit rate). A *win* is a
            query whose value rose by more than 1e-12, a *loss* one whose value fell.
    """

    before: EvaluationResult
    after: EvaluationResult
    rows: tuple[MetricDelta, ...]

    def __getitem__(self, metric: str) -> MetricDelta:
        for row in self.rows:
            if row.metric == metric:
                return row
        msg = f"metric: expected one of {[r.metric for r in self.rows]}, received {metric!r}"
        raise KeyError(msg)

    @property
    def ndcg(self) -> MetricDelta:
        return self["ndcg"]

    @property
    def recall(self) -> MetricDelta:
        return self["recall"]

    @property
    def mrr(self) -> MetricDelta:
        return self["mrr"]

    @property
    def hit_rate(self) -> MetricDelta:
        return self["hit_rate"]

    def table(self) -> str:
        """A plain-text table: metric, before, after, change, wins / losses / ties."""
        k = self.after.k
        b, a = self.before.name or "before", self.after.name or "after"
        labels = [f"{label}@{k}" for _, label in METRICS]
        w = max(len(x) for x in [*labels, "metric"])
        wb, wa = max(len(b), 7), max(len(a), 7)
        head = f"{'metric':<{w}}  {b:>{wb}}  {a:>{wa}}  {'change':>8}  {'wins':>5} {'losses':>6} {'ties':>5}"
        lines = [_n_queries(self.after.n_queries), head, "-" * len(head)]
        for (_, label), row in zip(METRICS, self.rows, strict=True):
            lines.append(
                f"{f'{label}@{k}':<{w}}  {row.before:>{wb}.4f}  {row.after:>{wa}.4f}  "
                f"{row.delta:>+8.4f}  {row.wins:>5} {row.losses:>6} {row.ties:>5}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"k", "n_queries", "before", "after", "metrics": [...]}``."""
        return {
            "k": self.after.k,
            "n_queries": self.after.n_queries,
            "before": self.before.name,
            "after": self.after.name,
            "metrics": [row._asdict() for row in self.rows],
        }


def compare(before: EvaluationResult, after: EvaluationResult) -> Comparison:
    """Compare two evaluations of the same queries at the same ``k``.

    Queries are matched by id (their order may differ).

    Raises:
        ConfigError: The two results are not :class:`EvaluationResult`, differ in ``k``, or
            evaluated different queries.
    """
    for arg, value in (("before", before), ("after", after)):
        if not isinstance(value, EvaluationResult):
            msg = f"{arg}: expected an EvaluationResult (from evaluate()), received {type(value).__name__}"
            raise ConfigError(msg)
    if before.k != after.k:
        msg = f"after: expected the same k as before ({before.k}), received k={after.k}"
        raise ConfigError(msg)
    if set(before.query_ids) != set(after.query_ids) or before.n_queries != after.n_queries:
        only_b = sorted(set(before.query_ids) - set(after.query_ids))[:5]
        only_a = sorted(set(after.query_ids) - set(before.query_ids))[:5]
        msg = (
            "after: expected the same queries as before; "
            f"only in before: {only_b}, only in after: {only_a} "
            f"({before.n_queries} vs {after.n_queries} queries)"
        )
        raise ConfigError(msg)
    pos = {q: i for i, q in enumerate(after.query_ids)}
    order = np.array([pos[q] for q in before.query_ids], dtype=np.int64)
    rows = []
    for (m, _), fieldname in zip(METRICS, ("ndcg", "recall", "mrr", "hit"), strict=True):
        vb = getattr(before.per_query, fieldname)
        va = getattr(after.per_query, fieldname)[order]
        diff = va - vb
        rows.append(
            MetricDelta(
                metric=m,
                before=float(getattr(before, m)),
                after=float(getattr(after, m)),
                delta=float(getattr(after, m)) - float(getattr(before, m)),
                wins=int(np.sum(diff > 1e-12)),
                losses=int(np.sum(diff < -1e-12)),
                ties=int(np.sum(np.abs(diff) <= 1e-12)),
            )
        )
    return Comparison(before=before, after=after, rows=tuple(rows))
