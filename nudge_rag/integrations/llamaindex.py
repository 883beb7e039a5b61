"""LlamaIndex glue: the query-side embedding call and the index's own retriever."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from nudge_rag.errors import ConfigError, require
from nudge_rag.integrations import Pipeline, QueryEmbedder, framework_of, generic_embedder

__all__ = ["pipeline", "query_embedder"]


def _is_base_embedding(model: Any) -> bool:
    return any(c.__name__ == "BaseEmbedding" for c in type(model).__mro__)


def query_embedder(model: Any, max_concurrency: int = 16) -> QueryEmbedder:
    """Embed queries with ``aget_query_embedding`` (the query-side call), ``max_concurrency`` at
    a time. LlamaIndex has no batched query-side call; text-side batching would embed queries as
    documents, which differs for models with query instructions."""
    if not _is_base_embedding(model):
        return generic_embedder(model, max_concurrency)

    async def run(texts: Sequence[str]) -> np.ndarray:
        sem = asyncio.Semaphore(max_concurrency)

        async def one(t: str) -> list[float]:
            async with sem:
                return await model.aget_query_embedding(t)

        out = await asyncio.gather(*(one(t) for t in texts))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    return run


def pipeline(obj: Any, embed_model: Any = None, *, max_concurrency: int = 16) -> Pipeline:
    """A LlamaIndex ``VectorStoreIndex`` or vector store, as the finetuner sees it."""
    require("llama_index.core", "llamaindex")
    is_index = any(c.__name__ == "VectorStoreIndex" for c in type(obj).__mro__)
    model = embed_model
    if model is None and is_index:
        model = getattr(obj, "_embed_model", None)
    if model is None:
        msg = (
            f"a bare LlamaIndex {type(obj).__name__} carries no embedding model: pass "
            "embed_model= (the one that embedded the stored nodes), or pass the VectorStoreIndex"
        )
        raise ConfigError(msg)
    if framework_of(model) not in (None, "llamaindex"):
        msg = f"embed_model for a LlamaIndex store must be a LlamaIndex BaseEmbedding or one of ours; received {type(model).__name__}"
        raise ConfigError(msg)

    def make_retriever(k: int | None) -> Any:
        kwargs = {} if k is None else {"similarity_top_k": k}
        if is_index:
            return obj.as_retriever(**kwargs)
        from llama_index.core import VectorStoreIndex

        if not getattr(obj, "stores_text", True):
            return None  # its texts live in the index's docstore: only the index can retrieve
        index = VectorStoreIndex.from_vector_store(obj, embed_model=model)
        return index.as_retriever(**kwargs)

    return Pipeline("llamaindex", obj, query_embedder(model, max_concurrency), make_retriever)
