"""The NUDGE engine: pure numpy, no framework, no store client, no torch."""

from __future__ import annotations

from nudge_rag.core.adaptor import Adaptor, AdaptorConfig, fit_adaptor, ndcg_at_k
from nudge_rag.core.nudge import NudgeM, NudgeN, NudgeResult, ValidationCurve
from nudge_rag.core.queries import QuerySet
from nudge_rag.core.split import validation_split
from nudge_rag.core.topk import BestUnmovedScores, UnmovedTopK, normalize_rows

__all__ = [
    "Adaptor",
    "AdaptorConfig",
    "BestUnmovedScores",
    "NudgeM",
    "NudgeN",
    "NudgeResult",
    "QuerySet",
    "UnmovedTopK",
    "ValidationCurve",
    "fit_adaptor",
    "ndcg_at_k",
    "normalize_rows",
    "validation_split",
]
