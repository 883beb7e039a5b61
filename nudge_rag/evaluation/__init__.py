"""Evaluation: information-retrieval metrics, :func:`evaluate` any retriever, compare, plot.

::

    metrics.py    per-query and batched NDCG / recall / MRR / hit rate / precision at k
    evaluate.py   evaluate / aevaluate: a retriever on judged queries -> EvaluationResult
    results.py    EvaluationResult, compare -> Comparison (MetricDelta per metric)
    langsmith.py  our metrics as a LangSmith custom evaluator
    plot.py       before / after bars and the γ validation curve (matplotlib, lazily)

The data (judged queries, BEIR folders) are :mod:`nudge_rag.judged` and :mod:`nudge_rag.beir`;
LlamaIndex's own ``RetrieverEvaluator`` bridge is in :mod:`nudge_rag.integrations.llamaindex`.
All are re-exported here.
"""

from __future__ import annotations

from nudge_rag.beir import BeirData, load_beir, paper_split
from nudge_rag.core.topk import topk_rows
from nudge_rag.evaluation.evaluate import aevaluate, evaluate
from nudge_rag.evaluation.langsmith import langsmith_evaluator
from nudge_rag.evaluation.metrics import (
    MetricMeans,
    RankingMetrics,
    answers_to_csr,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)
from nudge_rag.evaluation.plot import plot_comparison
from nudge_rag.evaluation.results import Comparison, EvaluationResult, MetricDelta, compare
from nudge_rag.integrations.llamaindex import (
    RetrieverEvaluatorResult,
    allamaindex_retriever_evaluator,
    llamaindex_retriever_evaluator,
)
from nudge_rag.integrations.retrievers import retrieved_id
from nudge_rag.judged import JudgedQueries, QADataset

__all__ = [
    "BeirData",
    "Comparison",
    "EvaluationResult",
    "JudgedQueries",
    "MetricDelta",
    "MetricMeans",
    "QADataset",
    "RankingMetrics",
    "RetrieverEvaluatorResult",
    "aevaluate",
    "allamaindex_retriever_evaluator",
    "answers_to_csr",
    "compare",
    "evaluate",
    "hit_rate_at_k",
    "langsmith_evaluator",
    "llamaindex_retriever_evaluator",
    "load_beir",
    "mrr_at_k",
    "ndcg_at_k",
    "paper_split",
    "plot_comparison",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
    "retrieved_id",
    "topk_rows",
]
