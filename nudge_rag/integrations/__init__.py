"""Glue to LlamaIndex and LangChain: which framework an object belongs to, how to embed queries
with the pipeline's own query-side call, how to hand back the framework's own retriever, and how
to turn any retriever into ranked ids (for :func:`~nudge_rag.evaluate`).

Each framework is imported only when an object of it is passed in.

::

    base.py        Pipeline, the query- and document-side embedders
    pipeline.py    resolve_pipeline: the Pipeline of a store, by framework
    llamaindex.py  LlamaIndex: embeddings, retriever, RetrieverEvaluator bridge
    langchain.py   LangChain: embeddings, retriever
    retrievers.py  any retriever (framework, finetuner, callable) as async query -> ranked ids
"""

from __future__ import annotations

from nudge_rag._util import framework_of
from nudge_rag.integrations.base import (
    Pipeline,
    QueryEmbedder,
    document_embedder,
    framework_query_embedder,
    generic_embedder,
    model_name,
)
from nudge_rag.integrations.pipeline import resolve_pipeline

__all__ = [
    "Pipeline",
    "QueryEmbedder",
    "document_embedder",
    "framework_of",
    "framework_query_embedder",
    "generic_embedder",
    "model_name",
    "resolve_pipeline",
]
