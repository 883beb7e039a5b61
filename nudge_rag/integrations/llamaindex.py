"""LlamaIndex glue: the query-side embedding call and the index's own retriever."""

from __future__ import annotations

import functools
from typing import Any

from nudge_rag._util import framework_of, from_class
from nudge_rag.errors import ConfigError, require
from nudge_rag.integrations.base import (
    Pipeline,
    QueryEmbedder,
    document_embedder,
    framework_query_embedder,
    model_name,
)

__all__ = ["as_llamaindex_embedding", "pipeline", "query_embedder"]


def _is_base_embedding(model: Any) -> bool:
    return from_class(model, "llama_index.", "BaseEmbedding")


def query_embedder(model: Any, max_concurrency: int = 16) -> QueryEmbedder:
    """Embed queries with ``aget_query_embedding`` (the query-side call), ``max_concurrency`` at
    a time. LlamaIndex has no batched query-side call; text-side batching would embed queries as
    documents, which differs for models with query instructions."""
    return framework_query_embedder(
        model, _is_base_embedding(model), "aget_query_embedding", max_concurrency
    )


def pipeline(obj: Any, embed_model: Any = None, *, max_concurrency: int = 16) -> Pipeline:
    """A LlamaIndex ``VectorStoreIndex`` or vector store, as the finetuner sees it.

    The embedding model is ``embed_model``, else the index's own, else ``Settings.embed_model``
    when the application set one; ``Settings.llm``, when set, is the default LLM for query
    generation.
    """
    require("llama_index.core", "llamaindex")
    from llama_index.core import Settings

    is_index = from_class(obj, "llama_index.", "VectorStoreIndex")
    model = embed_model
    if model is None and is_index:
        model = getattr(obj, "_embed_model", None)
    if model is None:
        # The private attribute: the public property builds OpenAI's model when none was set.
        model = getattr(Settings, "_embed_model", None)
    if model is None:
        msg = (
            f"a bare LlamaIndex {type(obj).__name__} carries no embedding model: pass "
            "embed_model= (the one that embedded the stored nodes), set "
            "llama_index.core.Settings.embed_model, or pass the VectorStoreIndex"
        )
        raise ConfigError(msg)
    if framework_of(model) not in (None, "llamaindex"):
        msg = f"embed_model for a LlamaIndex store must be a LlamaIndex BaseEmbedding or one of ours; received {type(model).__name__}"
        raise ConfigError(msg)

    def make_retriever(k: int | None, **kwargs: Any) -> Any:
        if k is not None:
            kwargs["similarity_top_k"] = k
        if is_index:
            return obj.as_retriever(**kwargs)
        from llama_index.core import VectorStoreIndex

        if not getattr(obj, "stores_text", True):
            return None  # its texts live in the index's docstore: only the index can retrieve
        index = VectorStoreIndex.from_vector_store(obj, embed_model=model)
        return index.as_retriever(**kwargs)

    expand = None
    if is_index:

        def expand(ids: list[str]) -> dict[str, list[str]]:
            """Source document ids (``ref_doc_id``) to the ids of their nodes."""
            out: dict[str, list[str]] = {}
            for i in ids:
                info = obj.docstore.get_ref_doc_info(i)
                if info is not None and info.node_ids:
                    out[i] = [str(n) for n in info.node_ids]
            return out

    method = "aget_text_embedding" if _is_base_embedding(model) else None
    return Pipeline(
        "llamaindex",
        obj,
        query_embedder(model, max_concurrency),
        make_retriever,
        document_embedder(model, method, max_concurrency),
        model_name(model),
        getattr(Settings, "_llm", None),
        expand,
    )


def as_llamaindex_embedding(embedder: Any, *, model_name: str | None = None) -> Any:
    """Wrap an embedder of ours (``embed_documents`` / ``embed_queries``, e.g.
    :class:`~nudge_rag.embedding.LocalEmbedder`) as a LlamaIndex ``BaseEmbedding``."""
    require("llama_index.core", "llamaindex")
    cls = _embedding_class()
    name = model_name or str(getattr(embedder, "model_id", type(embedder).__name__))
    return cls(embedder, model_name=name)


@functools.cache
def _embedding_class() -> type:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr

    class NudgeRagEmbedding(BaseEmbedding):
        """A nudge_rag embedder as a LlamaIndex embedding model (batched on the text side)."""

        _inner: Any = PrivateAttr()

        def __init__(self, inner: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._inner = inner

        @classmethod
        def class_name(cls) -> str:
            return "NudgeRagEmbedding"

        def _get_query_embedding(self, query: str) -> list[float]:
            return [float(x) for x in self._inner.embed_queries([query])[0]]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return [float(x) for x in self._inner.embed_documents([text])[0]]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return [[float(x) for x in row] for row in self._inner.embed_documents(texts)]

    return NudgeRagEmbedding
