"""LangChain glue: the query-side embedding call and the store's own retriever."""

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

__all__ = ["as_langchain_embeddings", "pipeline", "query_embedder"]


def _is_embeddings(model: Any) -> bool:
    return from_class(model, "langchain_core", "Embeddings")


def query_embedder(model: Any, max_concurrency: int = 16) -> QueryEmbedder:
    """Embed queries with ``aembed_query`` (the query-side call), ``max_concurrency`` at a time."""
    return framework_query_embedder(model, _is_embeddings(model), "aembed_query", max_concurrency)


def pipeline(obj: Any, embed_model: Any = None, *, max_concurrency: int = 16) -> Pipeline:
    """A LangChain ``VectorStore``, as the finetuner sees it (its ``embeddings`` embed queries)."""
    require("langchain_core", "langchain")
    model = embed_model if embed_model is not None else getattr(obj, "embeddings", None)
    if model is None:
        msg = (
            f"the LangChain {type(obj).__name__} exposes no embeddings: pass embed_model= "
            "(the model that embedded the stored documents)"
        )
        raise ConfigError(msg)
    if framework_of(model) not in (None, "langchain"):
        msg = f"embed_model for a LangChain store must be a LangChain Embeddings or one of ours; received {type(model).__name__}"
        raise ConfigError(msg)

    def make_retriever(k: int | None, **kwargs: Any) -> Any:
        search_kwargs = dict(kwargs.pop("search_kwargs", None) or {})
        if k is not None:
            search_kwargs["k"] = k
        return obj.as_retriever(search_kwargs=search_kwargs, **kwargs)

    method = "aembed_documents" if _is_embeddings(model) else None
    return Pipeline(
        "langchain",
        obj,
        query_embedder(model, max_concurrency),
        make_retriever,
        document_embedder(model, method, max_concurrency),
        model_name(model),
    )


def as_langchain_embeddings(embedder: Any) -> Any:
    """Wrap an embedder of ours (``embed_documents`` / ``embed_queries``, e.g.
    :class:`~nudge_rag.embedding.LocalEmbedder`) as LangChain ``Embeddings``."""
    require("langchain_core", "langchain")
    return _embeddings_class()(embedder)


@functools.cache
def _embeddings_class() -> type:
    from langchain_core.embeddings import Embeddings

    class NudgeRagEmbeddings(Embeddings):
        """A nudge_rag embedder as LangChain ``Embeddings`` (query side and document side)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[float(x) for x in row] for row in self.inner.embed_documents(texts)]

        def embed_query(self, text: str) -> list[float]:
            return [float(x) for x in self.inner.embed_queries([text])[0]]

    return NudgeRagEmbeddings
