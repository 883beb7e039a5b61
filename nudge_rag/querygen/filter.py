"""Round-trip filtering of generated queries (InPars, Promptagator).

A generated question is kept only if, under the current embeddings, its source chunk ranks in the
top ``k`` of all chunks. Questions the source chunk cannot win are often vague ("What were the
results?") or answered better elsewhere; they would pull the chunk in a useless direction. With
``mode="report"`` nothing is dropped and the report says how many would have been.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nudge_rag._util import check_positive_int
from nudge_rag.errors import ConfigError, QueryGenerationError, ShapeError

__all__ = ["RoundTrip", "RoundTripReport", "check_generated", "round_trip_ranks"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RoundTrip:
    """Settings of the round-trip filter.

    Args:
        embedder: Anything with ``embed_queries(texts)`` (and ``embed_documents(texts)`` when
            ``chunk_embeddings`` is not given), e.g. :class:`~nudge_rag.embedding.LocalEmbedder`.
        embed_queries: Instead of ``embedder``: a callable ``texts -> (n, d)`` for queries.
        chunk_embeddings: ``(N, d)`` vectors of *all* chunks in the order of the ``chunks`` passed
            to :func:`generate_queries` (e.g. the vectors already in the store). Embedded with
            ``embedder.embed_documents`` when not given.
        top_k: Keep a question if its chunk ranks among the ``top_k`` best (1 = strict round trip).
        mode: ``"filter"`` drops the others; ``"report"`` only counts them.
    """

    embedder: Any = None
    embed_queries: Callable[[Sequence[str]], Any] | None = None
    chunk_embeddings: Any = None
    top_k: int = 10
    mode: Literal["filter", "report"] = "filter"

    def __post_init__(self) -> None:
        if self.mode not in ("filter", "report"):
            msg = f"round_trip mode must be 'filter' or 'report'; received {self.mode!r}"
            raise ConfigError(msg)
        check_positive_int(self.top_k, "round_trip top_k")
        if self.embed_queries is None and not hasattr(self.embedder, "embed_queries"):
            msg = (
                "round_trip needs embedder= (with embed_queries / embed_documents) or "
                f"embed_queries=; received embedder={type(self.embedder).__name__}"
            )
            raise ConfigError(msg)
        if self.chunk_embeddings is None and not hasattr(self.embedder, "embed_documents"):
            msg = "round_trip needs chunk_embeddings= or an embedder with embed_documents"
            raise ConfigError(msg)


@dataclass(frozen=True)
class RoundTripReport:
    """What the round-trip check found.

    Attributes:
        mode: ``"filter"`` or ``"report"``.
        top_k: The rank a source chunk had to reach.
        n_checked: Questions checked.
        n_failed: Questions whose chunk ranked below ``top_k`` (dropped in ``"filter"`` mode).
        ranks: 0-based rank of the source chunk of every checked question, in dataset order.
    """

    mode: str
    top_k: int
    n_checked: int
    n_failed: int
    ranks: np.ndarray

    @property
    def n_dropped(self) -> int:
        """Questions actually removed (0 in ``"report"`` mode)."""
        return self.n_failed if self.mode == "filter" else 0

    @property
    def top1(self) -> float:
        """Share of questions whose source chunk ranks first."""
        return float(np.mean(self.ranks == 0)) if self.ranks.size else float("nan")


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def round_trip_ranks(
    query_emb: Any, source_rows: Sequence[int], chunk_emb: Any, *, batch: int = 512
) -> np.ndarray:
    """0-based rank of each query's source chunk among all chunks, by cosine similarity.

    Ties count against the source (a chunk tied with it ranks above it), so a query that does not
    tell its chunk apart from a duplicate is not credited with rank 0.
    """
    q = _unit(np.asarray(query_emb, dtype=np.float32))
    d = _unit(np.asarray(chunk_emb, dtype=np.float32))
    rows = np.asarray(source_rows, dtype=np.int64)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1] or rows.shape != (q.shape[0],):
        msg = (
            f"round trip: query vectors {q.shape}, chunk vectors {d.shape} and {rows.shape} source "
            "rows do not fit together"
        )
        raise ShapeError(msg)
    out = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], batch):
        scores = q[s : s + batch] @ d.T
        own = scores[np.arange(scores.shape[0]), rows[s : s + batch]]
        out[s : s + batch] = (scores >= own[:, None]).sum(axis=1) - 1
    return out


def check_generated(ds: Any, n_chunks: int) -> None:
    """Refuse generated questions that a broken or echoing LLM wrote: the same question for many
    chunks (questions must be about their chunk), or nothing at all."""
    queries: Mapping[str, str] = getattr(ds, "queries", {}) or {}
    rel: Mapping[str, Any] = getattr(ds, "relevant_docs", {}) or {}
    if not queries:
        stats = getattr(ds, "stats", None)
        msg = (
            f"query generation gave no question for the {n_chunks} chunks"
            + (f" ({stats})" if stats is not None else "")
            + ": check the LLM (its answers, its credentials); nothing was written"
        )
        raise QueryGenerationError(msg, chunk_id="")
    chunks_of: dict[str, set[str]] = {}
    for qid, text in queries.items():
        key = " ".join(str(text).lower().split())
        chunks_of.setdefault(key, set()).update(str(c) for c in rel.get(qid, []))
    shared = {k: v for k, v in chunks_of.items() if len(v) > 1}
    n_shared = sum(len(v) for v in shared.values())
    n_chunks_with = len({c for v in chunks_of.values() for c in v})
    if shared and n_shared > max(2, n_chunks_with // 4):
        example = max(shared, key=lambda k: len(shared[k]))
        msg = (
            f"the LLM wrote the same question for several chunks ({len(shared)} question(s) "
            f"shared by {n_shared} chunk answers, e.g. {example[:80]!r} for {len(shared[example])} "
            "chunks): is it echoing the prompt or broken? Questions must be about their own "
            "chunk; nothing was written"
        )
        raise QueryGenerationError(msg, chunk_id=sorted(shared[example])[0])
