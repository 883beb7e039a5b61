"""Glue to LlamaIndex and LangChain: which framework an object belongs to, how to embed queries
with the pipeline's own query-side call, and how to hand back the framework's own retriever.

Each framework is imported only when an object of it is passed in.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nudge_rag.errors import ConfigError

__all__ = ["Pipeline", "QueryEmbedder", "framework_of", "resolve_pipeline"]

QueryEmbedder = Callable[[Sequence[str]], Awaitable[np.ndarray]]


def framework_of(obj: Any) -> str | None:
    """``"llamaindex"``, ``"langchain"`` or ``None``, from the modules in the object's type MRO."""
    mods = [c.__module__ or "" for c in type(obj).__mro__]
    if any(m.startswith("llama_index.") for m in mods):
        return "llamaindex"
    if any(m.startswith(("langchain_", "langchain.")) for m in mods):
        return "langchain"
    return None


@dataclass
class Pipeline:
    """What the finetuner needs from the user's pipeline.

    Attributes:
        framework: ``"llamaindex"``, ``"langchain"`` or ``"none"`` (a bare adapter or client).
        store: The object whose vectors are fine-tuned (an index, a vector store, a collection).
        embed_queries: Async ``texts -> (n, d)`` with the pipeline's query-side embedding call.
        make_retriever: ``k -> retriever`` of the framework's own type (None when no framework).
    """

    framework: str
    store: Any
    embed_queries: QueryEmbedder
    make_retriever: Callable[[int | None], Any] | None


def _generic_embedder(model: Any, max_concurrency: int) -> QueryEmbedder:
    """Embed queries with an object of ours or a plain callable."""
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


def resolve_pipeline(obj: Any, embed_model: Any = None, *, max_concurrency: int = 16) -> Pipeline:
    """Work out the framework of ``obj``, its query embedder and its retriever factory."""
    fw = framework_of(obj)
    if fw == "llamaindex":
        from nudge_rag.integrations import llamaindex

        return llamaindex.pipeline(obj, embed_model, max_concurrency=max_concurrency)
    if fw == "langchain":
        from nudge_rag.integrations import langchain

        return langchain.pipeline(obj, embed_model, max_concurrency=max_concurrency)
    if embed_model is None:
        msg = (
            f"{type(obj).__name__} carries no embedding model: pass embed_model= (the model that "
            "embedded the stored records; it embeds the training queries)"
        )
        raise ConfigError(msg)
    emb_fw = framework_of(embed_model)
    if emb_fw == "llamaindex":
        from nudge_rag.integrations import llamaindex

        return Pipeline("none", obj, llamaindex.query_embedder(embed_model, max_concurrency), None)
    if emb_fw == "langchain":
        from nudge_rag.integrations import langchain

        return Pipeline("none", obj, langchain.query_embedder(embed_model, max_concurrency), None)
    return Pipeline("none", obj, _generic_embedder(embed_model, max_concurrency), None)


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


def generic_embedder(model: Any, max_concurrency: int = 16) -> QueryEmbedder:
    """Public for the framework modules: an embedder for non-framework models."""
    return _generic_embedder(model, max_concurrency)
