"""LangChain glue: the query-side embedding call and the store's own retriever."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from nudge_rag._util import framework_of, from_class
from nudge_rag.errors import ConfigError, require
from nudge_rag.integrations.base import (
    Pipeline,
    QueryEmbedder,
    document_embedder,
    framework_query_embedder,
    model_name,
)
from nudge_rag.integrations.options import retriever_options

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

    def make_retriever(k: int | None, adaptor: Any = None, **kwargs: Any) -> Any:
        k, kwargs = retriever_options("langchain", k, kwargs)
        search_kwargs = dict(kwargs.pop("search_kwargs", None) or {})
        if k is not None:
            search_kwargs["k"] = k
        store = obj if adaptor is None else adapted_store(obj, adaptor)
        return store.as_retriever(search_kwargs=search_kwargs, **kwargs)

    method = "aembed_documents" if _is_embeddings(model) else None
    return Pipeline(
        "langchain",
        obj,
        query_embedder(model, max_concurrency),
        make_retriever,
        document_embedder(model, method, max_concurrency),
        model_name(model),
        adapts_queries=adapted_store(obj, None) is not None,
    )


def adapted_store(store: Any, adaptor: Any) -> Any:
    """A shallow copy of the LangChain ``store`` whose embeddings embed queries through
    ``adaptor`` (:class:`~nudge_rag.core.Adaptor`): the same collection / table / index, searched
    with adapted query vectors; documents are embedded as before. With ``adaptor=None``: whether
    that can be done (the copy with the store's own embeddings, or None)."""
    import copy

    model = getattr(store, "embeddings", None)
    if model is None:
        return None
    wrapped = model if adaptor is None else _adapted_embeddings_class()(model, adaptor)

    def swap(obj: Any, depth: int) -> Any:
        attrs = getattr(obj, "__dict__", None)
        if attrs is None:
            return None
        dup = copy.copy(obj)
        found = False
        for name, value in list(attrs.items()):
            if value is model:
                object.__setattr__(dup, name, wrapped)
                found = True
            elif depth and not isinstance(value, (str, bytes, int, float, list, dict, tuple)):
                inner = getattr(value, "__dict__", None)
                if inner is not None and any(v is model for v in inner.values()):
                    object.__setattr__(dup, name, swap(value, depth - 1))
                    found = True
        return dup if found else None

    try:
        dup = swap(store, 1)
    except Exception:
        return None
    if dup is None or getattr(dup, "embeddings", None) is not wrapped:
        return None
    return dup


@functools.cache
def _adapted_embeddings_class() -> type:
    from langchain_core.embeddings import Embeddings

    class AdaptedQueryEmbeddings(Embeddings):
        """Embeddings whose query vectors pass through a nudge_rag query adaptor."""

        def __init__(self, inner: Any, adaptor: Any) -> None:
            self.inner = inner
            self.adaptor = adaptor

        def _adapt(self, vec: Any) -> list[float]:
            return [float(x) for x in self.adaptor.transform(np.asarray(vec, dtype=np.float32))]

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return list(self.inner.embed_documents(texts))

        def embed_query(self, text: str) -> list[float]:
            return self._adapt(self.inner.embed_query(text))

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return list(await self.inner.aembed_documents(texts))

        async def aembed_query(self, text: str) -> list[float]:
            return self._adapt(await self.inner.aembed_query(text))

    return AdaptedQueryEmbeddings


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
