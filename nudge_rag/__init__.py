"""nudge_rag: NUDGE fine-tuning for the embeddings stored in RAG vector stores.

The core (:mod:`nudge_rag.core`) is pure numpy. Framework and store integrations import their
dependencies lazily, so ``import nudge_rag`` loads no framework, store client or torch.
"""

from __future__ import annotations

from nudge_rag.core import (
    BestUnmovedScores,
    NudgeM,
    NudgeN,
    NudgeResult,
    QuerySet,
    UnmovedTopK,
    ValidationCurve,
    validation_split,
)
from nudge_rag.errors import NudgeError
from nudge_rag.evaluation.evaluate import evaluate
from nudge_rag.finetuner import FinetuneReport, NudgeEmbeddingFinetuner
from nudge_rag.querygen import generate_queries

__version__ = "0.1.0"

__all__ = [
    "BestUnmovedScores",
    "FinetuneReport",
    "NudgeEmbeddingFinetuner",
    "NudgeError",
    "NudgeM",
    "NudgeN",
    "NudgeResult",
    "QuerySet",
    "UnmovedTopK",
    "ValidationCurve",
    "__version__",
    "evaluate",
    "generate_queries",
    "validation_split",
]
