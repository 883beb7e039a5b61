"""Training queries from stored chunks: any LLM (or none), concurrent, resumable, filtered.

The pieces, each usable alone:

* :func:`generate_queries` / :func:`agenerate_queries`: chunks in, a
  :class:`GeneratedDataset` (LlamaIndex ``EmbeddingQAFinetuneDataset`` JSON shape) out.
* :class:`OfflineGenerator`: pseudo-queries without a model (the default when ``llm=None``).
* :func:`parse_questions` / :func:`clean_questions`: what LLMs really answer, made usable, in
  time linear in the answer (cut at 64 kB; questions over 500 characters dropped).
* :class:`QueryCache`: the JSONL resume file.
* :class:`RoundTrip`: the InPars / Promptagator round-trip filter.

Only numpy and the standard library are imported; LLM frameworks are recognised by duck typing.
"""

from __future__ import annotations

from nudge_rag.errors import LLMRequestError, UnusableAnswerError
from nudge_rag.querygen.cache import QueryCache
from nudge_rag.querygen.filter import RoundTrip, RoundTripReport
from nudge_rag.querygen.generate import (
    GeneratedDataset,
    GenerationStats,
    QueryGenerationError,
    agenerate_queries,
    generate_queries,
    sample_chunks,
)
from nudge_rag.querygen.llm import as_async_llm
from nudge_rag.querygen.offline import OfflineGenerator
from nudge_rag.querygen.parsing import clean_questions, parse_questions
from nudge_rag.querygen.prompts import DEFAULT_PROMPT

__all__ = [
    "DEFAULT_PROMPT",
    "GeneratedDataset",
    "GenerationStats",
    "LLMRequestError",
    "OfflineGenerator",
    "QueryCache",
    "QueryGenerationError",
    "RoundTrip",
    "RoundTripReport",
    "UnusableAnswerError",
    "agenerate_queries",
    "as_async_llm",
    "clean_questions",
    "generate_queries",
    "parse_questions",
    "sample_chunks",
]
