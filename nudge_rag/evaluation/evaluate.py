"""Evaluate any retriever on judged queries: graded NDCG@k, Recall@k, MRR@k, hit rate.

::

    retriever (LlamaIndex, LangChain, ours, or a callable)      judged queries (pairs, LlamaIndex
          │                                                      JSON, a BEIR folder, ...)
          └──── ranked ids per query, max_concurrency at a time ───┘
                    └─ per-query metrics (trec_eval conventions) ─▶ EvaluationResult
                                                                      └─ compare(before, after)

:func:`evaluate` accepts

* a LlamaIndex retriever (``aretrieve(query)`` → ``NodeWithScore`` list; ids are ``node_id``);
* a LangChain retriever, or any runnable (``ainvoke(query)`` → ``Document`` list; ids are
  ``doc.id``);
* a LlamaIndex ``VectorStoreIndex`` or LangChain ``VectorStore`` (``as_retriever`` is called with
  top-k = ``k``), or a :class:`~nudge_rag.NudgeEmbeddingFinetuner` (its ``retriever(k)``);
* a plain callable ``query -> ranked ids`` (sync or async). Items may be ids, ``(id, score)``
  pairs, nodes, documents or dicts.

Turning each of those into ranked ids is :mod:`nudge_rag.integrations.retrievers`; reading the
queries is :meth:`nudge_rag.judged.JudgedQueries.from_any`; the results are
:mod:`nudge_rag.evaluation.results`; LlamaIndex's own ``RetrieverEvaluator`` on the same queries
is :func:`nudge_rag.integrations.llamaindex.llamaindex_retriever_evaluator`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from nudge_rag._util import check_positive_int, gather_bounded, run_sync
from nudge_rag.errors import ConfigError
from nudge_rag.evaluation.metrics import (
    RankingMetrics,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)
from nudge_rag.evaluation.results import EvaluationResult, frozen
from nudge_rag.integrations.retrievers import resolve_retriever
from nudge_rag.judged import JudgedQueries

__all__ = ["aevaluate", "evaluate", "score"]

logger = logging.getLogger(__name__)


async def aevaluate(
    retriever: Any,
    dataset: Any,
    k: int = 10,
    *,
    split: str | None = None,
    id_key: str | None = None,
    name: str = "",
    max_concurrency: int = 8,
    show_progress: bool = False,
) -> EvaluationResult:
    """Async :func:`evaluate` (same arguments)."""
    k = check_positive_int(k, "k")
    max_concurrency = check_positive_int(max_concurrency, "max_concurrency")
    data = JudgedQueries.from_any(dataset, name="dataset", split=split)
    if data.texts is None:
        msg = "dataset: a retriever is asked with query texts; these judged queries have none"
        raise ConfigError(msg)
    kind, ids_for = resolve_retriever(retriever, k, id_key)
    logger.info("evaluating a %s retriever on %d queries at k=%d", kind, len(data), k)
    t0 = time.perf_counter()
    retrieved = await gather_bounded(
        ids_for,
        data.texts,
        max_concurrency,
        show_progress=show_progress,
        desc=f"evaluate {name}".strip(),
        unit="query",
    )
    seconds = time.perf_counter() - t0
    return score(data, retrieved, k, name, seconds, warn_short=kind != "callable")


def score(
    data: JudgedQueries,
    retrieved: Sequence[Sequence[str]],
    k: int,
    name: str = "",
    seconds: float = 0.0,
    *,
    warn_short: bool = True,
) -> EvaluationResult:
    """Score rankings (one list of ids per query of ``data``, best first) at ``k``."""
    rels: Sequence[Mapping[Hashable, float]] = data.relevance  # type: ignore[assignment]
    pairs = list(zip(retrieved, rels, strict=True))
    per = RankingMetrics(
        ndcg=frozen(ndcg_at_k(r, g, k) for r, g in pairs),
        recall=frozen(recall_at_k(r, g, k) for r, g in pairs),
        mrr=frozen(mrr_at_k(r, g, k) for r, g in pairs),
        hit=frozen(hit_rate_at_k(r, g, k) for r, g in pairs),
    )
    n_empty = sum(1 for r in retrieved if not r)
    longest = max((len(r) for r in retrieved), default=0)
    if warn_short and 0 < longest < k:
        logger.warning(
            "the retriever returned at most %d ids per query, fewer than k=%d: the metrics are "
            "@%d in effect; set its top-k (similarity_top_k= / search_kwargs={'k': %d}) to k",
            longest, k, longest, k,
        )  # fmt: skip
    if n_empty:
        logger.warning("%d of %d queries retrieved nothing (they score 0)", n_empty, len(data))
    means = per.mean()
    return EvaluationResult(
        name=name,
        k=k,
        ndcg=means.ndcg,
        recall=means.recall,
        mrr=means.mrr,
        hit_rate=means.hit,
        per_query=per,
        query_ids=data.query_ids,
        retrieved=tuple(tuple(r) for r in retrieved),
        n_empty=n_empty,
        seconds=seconds,
    )


def evaluate(
    retriever: Any,
    dataset: Any,
    k: int = 10,
    *,
    split: str | None = None,
    id_key: str | None = None,
    name: str = "",
    max_concurrency: int = 8,
    show_progress: bool = False,
) -> EvaluationResult:
    """Run every query of ``dataset`` through ``retriever`` and score the rankings at ``k``.

    Metrics follow ``trec_eval`` / BEIR (see :mod:`nudge_rag.evaluation.metrics`): graded NDCG
    with linear gains, recall over all relevant ids, MRR and hit rate within the top ``k``. A
    retriever that returns nothing for a query scores 0 on it (never raises). Works in a
    notebook (a running event loop) too; use :func:`aevaluate` from async code.

    Args:
        retriever: A LlamaIndex retriever, a LangChain retriever / runnable, an index or vector
            store (``as_retriever`` is called with top-k = ``k``), a
            :class:`~nudge_rag.NudgeEmbeddingFinetuner`, or a callable ``query -> ranked ids``
            (sync callables run in worker threads).
        dataset: Judged queries in any shape :meth:`~nudge_rag.judged.JudgedQueries.from_any`
            reads: a ``JudgedQueries`` / ``QADataset``, LlamaIndex's
            ``EmbeddingQAFinetuneDataset`` (or its JSON path), a BEIR folder (with ``split``),
            or ``[(query, [ids] | {id: grade}), ...]``.
        k: Cutoff, >= 1. The retriever's own top-k should be at least ``k`` (a warning is
            logged otherwise).
        split: BEIR qrels split (``"test"`` by default when there are several).
        id_key: Read ids from ``metadata[id_key]`` when present (else the node / document id).
        name: A label for summaries, comparisons and plots (``"before"``, ``"nudge-n"``...).
        max_concurrency: Queries in flight at once, >= 1.
        show_progress: Show a tqdm progress bar.

    Returns:
        An :class:`~nudge_rag.evaluation.EvaluationResult`.

    Raises:
        ConfigError: ``k`` or ``max_concurrency`` is not an integer >= 1, the retriever is of an
            unknown kind, or returns items without ids.
        DatasetError: The dataset cannot be read (see
            :meth:`~nudge_rag.judged.JudgedQueries.from_any`).

    Example:
        >>> res = evaluate(my_retriever, "val_dataset.json", k=10)  # doctest: +SKIP
        >>> res.ndcg, res.per_query.ndcg[:3]                        # doctest: +SKIP
        (0.712..., array([1.  , 0.63, 0.  ]))
    """
    return run_sync(
        aevaluate(
            retriever,
            dataset,
            k,
            split=split,
            id_key=id_key,
            name=name,
            max_concurrency=max_concurrency,
            show_progress=show_progress,
        )
    )
