"""Evaluation: information-retrieval metrics (per query and batched) and data sets."""

from __future__ import annotations

from nudge_rag.evaluation.datasets import (
    BeirData,
    QADataset,
    load_beir,
    paper_split,
)
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
    topk_rows,
)

__all__ = [
    "BeirData",
    "MetricMeans",
    "QADataset",
    "RankingMetrics",
    "answers_to_csr",
    "hit_rate_at_k",
    "load_beir",
    "mrr_at_k",
    "ndcg_at_k",
    "paper_split",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
    "topk_rows",
]

from nudge_rag.evaluation.evaluate import (
    Comparison,
    EvalQueries,
    EvaluationResult,
    MetricDelta,
    RetrieverEvaluatorResult,
    aevaluate,
    allamaindex_retriever_evaluator,
    compare,
    evaluate,
    llamaindex_retriever_evaluator,
    retrieved_id,
)
from nudge_rag.evaluation.langsmith import langsmith_evaluator
from nudge_rag.evaluation.plot import plot_comparison

__all__ += [
    "Comparison",
    "EvalQueries",
    "EvaluationResult",
    "MetricDelta",
    "RetrieverEvaluatorResult",
    "aevaluate",
    "allamaindex_retriever_evaluator",
    "compare",
    "evaluate",
    "langsmith_evaluator",
    "llamaindex_retriever_evaluator",
    "plot_comparison",
    "retrieved_id",
]
