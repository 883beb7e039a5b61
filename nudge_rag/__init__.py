"""nudge_rag: NUDGE fine-tuning for the embeddings stored in RAG vector stores.

The nouns a user needs are here; the machinery stays in its subpackages (:mod:`nudge_rag.core`
for the maths and streaming helpers, :mod:`nudge_rag.stores` for the store adapters,
:mod:`nudge_rag.querygen`, :mod:`nudge_rag.evaluation`, :mod:`nudge_rag.state`). Queries with
judged relevant records, whatever their shape, are :class:`JudgedQueries` (:mod:`nudge_rag.judged`).

The core is pure numpy. Framework and store integrations import their dependencies lazily, so
``import nudge_rag`` loads no framework, store client or torch. The library logs through
``logging`` under ``nudge_rag`` and prints nothing unless the application configures logging.
"""

from __future__ import annotations

import logging

from nudge_rag.core import NudgeM, NudgeN, NudgeResult, QuerySet, ValidationCurve
from nudge_rag.errors import NudgeError
from nudge_rag.evaluation import Comparison, EvaluationResult, QADataset, compare
from nudge_rag.evaluation.evaluate import aevaluate, evaluate
from nudge_rag.finetuner import FinetuneReport, NudgeEmbeddingFinetuner, RevertReport
from nudge_rag.judged import JudgedQueries
from nudge_rag.querygen import agenerate_queries, generate_queries

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "EvaluationResult",
    "FinetuneReport",
    "JudgedQueries",
    "NudgeEmbeddingFinetuner",
    "NudgeError",
    "NudgeM",
    "NudgeN",
    "NudgeResult",
    "QADataset",
    "QuerySet",
    "RevertReport",
    "ValidationCurve",
    "__version__",
    "aevaluate",
    "agenerate_queries",
    "compare",
    "evaluate",
    "generate_queries",
]
