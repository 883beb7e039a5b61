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

__all__ = ["as_langchain_embeddings", "feedback_handler", "pipeline", "query_embedder"]


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


def feedback_handler(record: Any, *, source: str = "langchain", id_key: str = "_id") -> Any:
    """A LangChain callback handler that logs every retrieval (query and the ids shown).

    Pass it in a chain's or retriever's ``config={"callbacks": [handler]}``; each retrieval is
    logged through ``record(query, [], shown=ids, source=source)`` (the finetuner's
    :meth:`~nudge_rag.NudgeEmbeddingFinetuner.record`): impressions, which a later confirmation
    (``ft.record(query, cited_ids)``) turns into training data.

    Args:
        record: Called as ``record(query, ids, shown=..., source=...)``.
        source: The label logged with each retrieval.
        id_key: Metadata key of the id for stores whose documents carry none (Qdrant: ``_id``).
    """
    require("langchain_core", "langchain")
    return _handler_class()(record, source, id_key)


@functools.cache
def _handler_class() -> type:
    from langchain_core.callbacks import BaseCallbackHandler

    class NudgeFeedbackHandler(BaseCallbackHandler):
        """Logs each retrieval's query and the ids of the documents it returned."""

        def __init__(self, record: Any, source: str, id_key: str) -> None:
            self._record = record
            self._source = source
            self._id_key = id_key
            self._queries: dict[Any, str] = {}

        def on_retriever_start(
            self, serialized: Any, query: str, *, run_id: Any, **kwargs: Any
        ) -> None:
            self._queries[run_id] = query

        def on_retriever_end(self, documents: Any, *, run_id: Any, **kwargs: Any) -> None:
            query = self._queries.pop(run_id, None)
            ids = [
                str(d.id if getattr(d, "id", None) is not None else d.metadata.get(self._id_key))
                for d in documents
            ]
            if query and query.strip() and ids:
                self._record(query, [], shown=ids, source=self._source)

        def on_retriever_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
            self._queries.pop(run_id, None)

    return NudgeFeedbackHandler
