"""Any retriever as ``async query -> ranked ids``: LlamaIndex and LangChain retrievers, indexes
and vector stores, a :class:`~nudge_rag.NudgeEmbeddingFinetuner` (through its public
``retriever(k)``), sync or async callables; and the id of whatever a retriever returns (ids,
``(id, score)`` pairs, nodes, ``NodeWithScore``, ``Document`` or dicts).

With ``id_key``, an item's id is read from ``metadata[id_key]`` when it is there (falling back to
the node / document id): use it when the store's ids are not the ids of the dataset.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nudge_rag._util import framework_of
from nudge_rag.errors import ConfigError
from nudge_rag.stores import VectorStoreAdapter

__all__ = ["IdsFn", "MakesRetrievers", "ids_of", "resolve_retriever", "retrieved_id"]

#: ``async query -> ranked ids``.
IdsFn = Callable[[str], Coroutine[Any, Any, list[str]]]


def retrieved_id(item: Any, id_key: str | None = None) -> str:
    """The id of one retrieved item: an id, ``(id, score)``, node, ``NodeWithScore``, ``Document``
    or dict (including LangChain's serialised ``{"lc": 1, "kwargs": {...}}`` form).

    With ``id_key``, ``metadata[id_key]`` wins when present.

    Raises:
        ConfigError: The item carries no id (the message says which ``id_key`` would help).
    """
    if isinstance(item, str):
        return item
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return str(item)
    if isinstance(item, tuple) and len(item) == 2:
        return retrieved_id(item[0], id_key)
    if isinstance(item, Mapping):
        if "lc" in item and isinstance(item.get("kwargs"), Mapping):
            item = item["kwargs"]
        meta = item.get("metadata") or {}
        if id_key is not None and isinstance(meta, Mapping) and meta.get(id_key) is not None:
            return str(meta[id_key])
        for key in ("id", "node_id", "id_", "_id"):
            if isinstance(item.get(key), (str, int)):
                return str(item[key])
    else:
        node = getattr(item, "node", None)
        if node is not None and hasattr(item, "score"):  # LlamaIndex NodeWithScore
            return retrieved_id(node, id_key)
        meta = getattr(item, "metadata", None)
        if id_key is not None and isinstance(meta, Mapping) and meta.get(id_key) is not None:
            return str(meta[id_key])
        for attr in ("node_id", "id"):
            value = getattr(item, attr, None)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
    hint = (
        f"metadata has no {id_key!r}"
        if id_key is not None
        else "pass id_key= to read the id from the item's metadata"
    )
    msg = f"retrieved item: expected an id, a node or a document with an id, received {type(item).__name__} without one ({hint})"
    raise ConfigError(msg)


def ids_of(result: Any, id_key: str | None) -> list[str]:
    """The ids of a retriever's result (a list of items :func:`retrieved_id` reads; ``None``
    is an empty retrieval)."""
    if result is None:
        return []
    if isinstance(result, (str, Mapping)):
        msg = f"retriever: expected a ranked list of ids, nodes or documents, received {type(result).__name__}"
        raise ConfigError(msg)
    return [retrieved_id(item, id_key) for item in result]


async def call_any(fn: Callable[[str], Any], query: str) -> Any:
    """Call a sync or async callable; sync ones run in a worker thread."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - a callable object's async __call__
    ):
        return await fn(query)
    out = await asyncio.to_thread(fn, query)
    if inspect.isawaitable(out):
        out = await out
    return out


@runtime_checkable
class MakesRetrievers(Protocol):
    """An object that hands out the framework's retriever over its store for a given ``k``
    (:class:`~nudge_rag.NudgeEmbeddingFinetuner`: :meth:`~nudge_rag.NudgeEmbeddingFinetuner.
    retriever`). Where that retriever is a bare store adapter (a store with no framework), the
    object's ``aembed_queries(texts)`` embeds the queries for the adapter's own search."""

    def retriever(self, similarity_top_k: int | None = None, **kwargs: Any) -> Any: ...


def resolve_retriever(retriever: Any, k: int | None, id_key: str | None) -> tuple[str, IdsFn]:
    """``(kind, async query -> ranked ids)`` for any retriever :func:`~nudge_rag.evaluate` takes.

    Args:
        retriever: A LlamaIndex retriever (``aretrieve``), a LangChain retriever or runnable
            (``ainvoke``), an index or vector store (``as_retriever`` with top-k ``k``), an
            object that :class:`MakesRetrievers` (a finetuner), a sync retriever / runnable
            (``retrieve`` / ``invoke``), or a callable ``query -> ranked ids`` (sync or async).
        k: The top-k of retrievers built here (default 10).
        id_key: Read ids from ``metadata[id_key]`` when present.

    Raises:
        ConfigError: A retriever of none of those kinds, or a bare store adapter.
    """
    if isinstance(retriever, VectorStoreAdapter):
        msg = (
            f"retriever: a bare store adapter ({retriever.name}) cannot embed queries; pass the "
            "NudgeEmbeddingFinetuner, the framework's retriever, or a callable query -> ids"
        )
        raise ConfigError(msg)
    if hasattr(retriever, "aretrieve"):
        kind, call = "llamaindex", retriever.aretrieve
    elif hasattr(retriever, "ainvoke"):
        kind, call = "langchain", retriever.ainvoke
    elif hasattr(retriever, "as_retriever"):
        top = k or 10
        if framework_of(retriever) == "llamaindex":
            return resolve_retriever(retriever.as_retriever(similarity_top_k=top), k, id_key)
        return resolve_retriever(retriever.as_retriever(search_kwargs={"k": top}), k, id_key)
    elif isinstance(retriever, MakesRetrievers):
        return _from_maker(retriever, k, id_key)
    elif hasattr(retriever, "retrieve"):
        kind, call = "sync-retriever", retriever.retrieve
    elif hasattr(retriever, "invoke"):
        kind, call = "sync-runnable", retriever.invoke
    elif callable(retriever):
        kind, call = "callable", retriever
    else:
        msg = (
            "retriever: expected a LlamaIndex retriever (aretrieve), a LangChain retriever "
            "(ainvoke), an index or vector store (as_retriever), a NudgeEmbeddingFinetuner, or a "
            f"callable query -> ranked ids; received {type(retriever).__name__}"
        )
        raise ConfigError(msg)

    async def ids_for(query: str) -> list[str]:
        return ids_of(await call_any(call, query), id_key)

    return kind, ids_for


def _from_maker(maker: MakesRetrievers, k: int | None, id_key: str | None) -> tuple[str, IdsFn]:
    """The retriever a finetuner hands out; a bare adapter searched with the finetuner's own
    query-side embedding."""
    inner = maker.retriever(k)
    if not isinstance(inner, VectorStoreAdapter):
        return resolve_retriever(inner, k, id_key)
    embed = getattr(maker, "aembed_queries", None)
    if embed is None:
        msg = (
            f"retriever: {type(maker).__name__}.retriever() gave a bare {inner.name} store "
            "adapter, and it has no aembed_queries(texts) to embed the queries with"
        )
        raise ConfigError(msg)
    adapter, top = inner, k or 10

    async def via_store(query: str) -> list[str]:
        vec = np.asarray(await embed([query]))[0]
        hits = await asyncio.to_thread(adapter.search, vec, top)
        return [h[0] for h in hits]

    return "nudge-finetuner", via_store
