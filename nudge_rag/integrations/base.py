"""What the finetuner needs from a pipeline, whatever its framework: :class:`Pipeline`, and the
embedders that call a model's query side (or document side) with bounded concurrency.

The framework modules (:mod:`~nudge_rag.integrations.llamaindex`,
:mod:`~nudge_rag.integrations.langchain`) build on these; :func:`~nudge_rag.integrations.
resolve_pipeline` picks one of them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag.errors import ConfigError

__all__ = [
    "Pipeline",
    "QueryEmbedder",
    "document_embedder",
    "framework_query_embedder",
    "generic_embedder",
    "model_name",
]

QueryEmbedder = Callable[[Sequence[str]], Awaitable[np.ndarray]]

if TYPE_CHECKING:
    from langchain_core.vectorstores import VectorStoreRetriever
    from llama_index.core.base.base_retriever import BaseRetriever

    from nudge_rag.stores import VectorStoreAdapter

    #: What ``finetune()`` / ``retriever()`` hand back: the framework's own retriever
    #: (LlamaIndex ``BaseRetriever``, LangChain ``VectorStoreRetriever``), or the store's adapter
    #: for a store with no framework (a chromadb collection). Narrow it with ``isinstance``.
    Retriever = BaseRetriever | VectorStoreRetriever | VectorStoreAdapter


@dataclass
class Pipeline:
    """What the finetuner needs from the user's pipeline.

    Attributes:
        framework: ``"llamaindex"``, ``"langchain"`` or ``"none"`` (a bare adapter or client).
        store: The object whose vectors are fine-tuned (an index, a vector store, a collection).
        embed_queries: Async ``texts -> (n, d)`` with the pipeline's query-side embedding call.
        make_retriever: ``(k, **kwargs) -> retriever`` of the framework's own type (None when no
            framework); the keyword arguments go to the framework's ``as_retriever``.
        embed_documents: Async ``texts -> (n, d)`` with the document-side call (None if unknown).
        model_name: A name for the embedding model (recorded with the state).
        default_llm: The framework's configured LLM (LlamaIndex ``Settings.llm`` when set).
        expand_ids: Maps ids that are not record ids (LlamaIndex ``ref_doc_id``) to the record
            ids they stand for (None where the framework has no such ids).
        adapts_queries: Whether ``make_retriever`` takes ``adaptor=`` (a
            :class:`~nudge_rag.core.Adaptor` its retriever embeds queries through).
    """

    framework: str
    store: Any
    embed_queries: QueryEmbedder
    make_retriever: Callable[..., Any] | None
    embed_documents: QueryEmbedder | None = None
    model_name: str = ""
    default_llm: Any = None
    expand_ids: Callable[[list[str]], dict[str, list[str]]] | None = None
    adapts_queries: bool = False


def model_name(model: Any) -> str:
    """A readable name for an embedding model: its ``model_name`` / ``model`` / ``model_id``
    attribute where it has one, else its class."""
    inner = getattr(model, "_inner", None) or getattr(model, "inner", None)
    for obj in (model, inner):
        for attr in ("model_name", "model", "model_id"):
            v = getattr(obj, attr, None)
            if isinstance(v, str) and v:
                return v
    return type(model).__name__


def document_embedder(model: Any, method: str | None, max_concurrency: int) -> QueryEmbedder | None:
    """The document-side twin of :func:`framework_query_embedder` (None when there is none)."""
    inner = getattr(model, "_inner", None) or getattr(model, "inner", None)
    target = inner if inner is not None and hasattr(inner, "embed_documents") else model
    if hasattr(target, "embed_documents") and (target is inner or method is None):

        async def run_ours(texts: Sequence[str]) -> np.ndarray:
            return np.asarray(await asyncio.to_thread(target.embed_documents, list(texts)))

        return run_ours
    if hasattr(model, "embed") and method is None:  # nudge_rag.testing.BagOfWordsEmbedder

        async def run_embed(texts: Sequence[str]) -> np.ndarray:
            return np.asarray(model.embed(list(texts)))

        return run_embed
    if method is None or not hasattr(model, method):
        return None
    call = getattr(model, method)

    async def run(texts: Sequence[str]) -> np.ndarray:
        if method == "aembed_documents":
            return np.asarray(await call(list(texts)), dtype=np.float32)
        sem = asyncio.Semaphore(max_concurrency)

        async def one(t: str) -> Any:
            async with sem:
                return await call(t)

        out = await asyncio.gather(*(one(t) for t in texts))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    return run


def generic_embedder(model: Any, max_concurrency: int = 16) -> QueryEmbedder:
    """Embed queries with an object of ours (``embed_queries`` / ``embed``) or a plain callable
    ``text -> vector`` (sync or async, ``max_concurrency`` in flight)."""
    if hasattr(model, "embed_queries"):  # nudge_rag.embedding.LocalEmbedder and friends

        async def run(texts: Sequence[str]) -> np.ndarray:
            return np.asarray(await asyncio.to_thread(model.embed_queries, list(texts)))

        return run
    if hasattr(model, "embed"):  # nudge_rag.testing.BagOfWordsEmbedder

        async def run_embed(texts: Sequence[str]) -> np.ndarray:
            return np.asarray(model.embed(list(texts)))

        return run_embed
    if callable(model):
        fn = model

        async def run_call(texts: Sequence[str]) -> np.ndarray:
            sem = asyncio.Semaphore(max_concurrency)

            async def one(t: str) -> Any:
                async with sem:
                    out = fn(t)
                    if inspect.isawaitable(out):
                        out = await out
                    return out

            return np.asarray(await asyncio.gather(*(one(t) for t in texts)), dtype=np.float32)

        return run_call
    msg = (
        "embed_model must be a LlamaIndex BaseEmbedding, a LangChain Embeddings, an object with "
        f"embed_queries(texts), or a callable text -> vector; received {type(model).__name__}"
    )
    raise ConfigError(msg)


def framework_query_embedder(
    model: Any, is_framework_model: bool, method: str, max_concurrency: int
) -> QueryEmbedder:
    """Embed queries with the framework model's async query-side ``method`` (one query per call,
    ``max_concurrency`` in flight); an embedder of ours wrapped for the framework is called
    batched instead, and anything else goes through :func:`generic_embedder`."""
    inner = getattr(model, "_inner", None) or getattr(model, "inner", None)
    if inner is not None and hasattr(inner, "embed_queries"):
        return generic_embedder(inner, max_concurrency)  # one of ours: batched, same vectors
    if not is_framework_model:
        return generic_embedder(model, max_concurrency)
    call = getattr(model, method)

    async def run(texts: Sequence[str]) -> np.ndarray:
        sem = asyncio.Semaphore(max_concurrency)

        async def one(t: str) -> Any:
            async with sem:
                return await call(t)

        out = await asyncio.gather(*(one(t) for t in texts))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    return run
