"""The NUDGE engine: pure numpy, no framework, no store client, no torch."""

from __future__ import annotations

from nudge_rag.core.nudge import NudgeM, NudgeN, NudgeResult, ValidationCurve
from nudge_rag.core.queries import QuerySet
from nudge_rag.core.split import validation_split
from nudge_rag.core.topk import BestUnmovedScores, UnmovedTopK, normalize_rows

__all__ = [
    "BestUnmovedScores",
    "NudgeM",
    "NudgeN",
    "NudgeResult",
    "QuerySet",
    "UnmovedTopK",
    "ValidationCurve",
    "normalize_rows",
    "validation_split",
]
