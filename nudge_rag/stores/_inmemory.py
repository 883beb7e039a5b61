"""Adapters for the frameworks' pure-Python in-memory stores.

- LlamaIndex ``SimpleVectorStore``: vectors in ``vs.data.embedding_dict[node_id]`` (lists of
  floats); the text lives in the index's docstore. Ranks by cosine similarity, always.
- LangChain ``InMemoryVectorStore``: ``vs.store[id] = {"id", "vector", "text", "metadata"}``.
  Ranks by cosine similarity, always.

Both keep vectors exactly as written (Python floats), so writes read back bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np

from nudge_rag.stores._base import (
    StoreIdentity,
    StorePage,
    VectorStoreAdapter,
    as_page_array,
    empty_page,
    process_identity,
)

__all__ = ["LangChainInMemoryAdapter", "LlamaIndexSimpleAdapter"]


def _first_width(vectors: Any) -> int | None:
    for v in vectors:
        return len(v)
    return None


class _DictStoreAdapter(VectorStoreAdapter):
    """Shared logic for stores that are a Python dict from id to record."""

    metric = "cosine"
    normalizes_on_write = False

    def _keys(self) -> list[str]:
        raise NotImplementedError

    def _vector(self, id_: str) -> list[float]:
        raise NotImplementedError

    def _has(self, id_: str) -> bool:
        raise NotImplementedError

    def _docs(self, ids: list[str]) -> tuple[list[str | None], list[dict[str, Any]]]:
        raise NotImplementedError

    def _page(self, ids: list[str], with_documents: bool) -> StorePage:
        d = self.dim() if ids else 0
        emb = as_page_array([self._vector(i) for i in ids], d)
        if with_documents:
            texts, metas = self._docs(ids)
        else:
            texts, metas = [None] * len(ids), [{} for _ in ids]
        return StorePage(list(ids), emb, texts, metas)

    def iter_pages(
        self, page_size: int = 1000, *, with_documents: bool = True
    ) -> Iterator[StorePage]:
        self._check_page_size(page_size)
        # A snapshot of the keys (ids only): the dict is already in memory, and iterating over
        # it directly would break if records were added between two pages.
        keys = self._keys()
        for start in range(0, len(keys), page_size):
            yield self._page(keys[start : start + page_size], with_documents)

    def get(self, ids: Sequence[str]) -> StorePage:
        ids = list(ids)
        missing = [i for i in dict.fromkeys(ids) if not self._has(i)]
        if missing:
            self._raise_missing(missing)
        if not ids:
            return empty_page(self.dim() if self.count() else 0)
        return self._page(ids, True)

    def _missing(self, ids: list[str]) -> list[str]:
        return [i for i in ids if not self._has(i)]


class LlamaIndexSimpleAdapter(_DictStoreAdapter):
    """LlamaIndex ``SimpleVectorStore``, alone or inside a ``VectorStoreIndex``.

    Ids are the node ids. Texts and node metadata come from the index's docstore when the index
    is given; a bare ``SimpleVectorStore`` keeps no text (``None``), and its metadata is the
    store's own ``metadata_dict`` record.
    """

    name = "llamaindex-simple"

    def __init__(self, vector_store: Any, index: Any = None) -> None:
        self._vs = vector_store
        self._index = index

    def identity(self) -> StoreIdentity:
        return process_identity(self._vs, self.name)

    @property
    def _emb(self) -> dict[str, list[float]]:
        # the store's own dict (written in place by _write_batch), untyped by the framework
        return cast("dict[str, list[float]]", self._vs.data.embedding_dict)

    def count(self) -> int:
        return len(self._emb)

    def dim(self) -> int:
        width = _first_width(self._emb.values())
        if width is None:
            from nudge_rag.errors import StoreError

            msg = f"the {self.name} store is empty, so it has no vector width yet"
            raise StoreError(msg)
        return width

    def _keys(self) -> list[str]:
        return list(self._emb)

    def _vector(self, id_: str) -> list[float]:
        return self._emb[id_]

    def _has(self, id_: str) -> bool:
        return id_ in self._emb

    def _docs(self, ids: list[str]) -> tuple[list[str | None], list[dict[str, Any]]]:
        if self._index is None:
            meta = self._vs.data.metadata_dict
            return [None] * len(ids), [dict(meta.get(i) or {}) for i in ids]
        return llamaindex_docstore_docs(self._index, ids)

    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        emb = self._emb
        for id_, row in zip(ids, vectors.tolist(), strict=True):
            emb[id_] = row

    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        from llama_index.core.vector_stores.types import VectorStoreQuery

        res = self._vs.query(VectorStoreQuery(query_embedding=query.tolist(), similarity_top_k=k))
        return [
            (str(i), float(s)) for i, s in zip(res.ids or [], res.similarities or [], strict=True)
        ]


def llamaindex_docstore_docs(
    index: Any, node_ids: list[str]
) -> tuple[list[str | None], list[dict[str, Any]]]:
    """Text and metadata of nodes from a LlamaIndex index's docstore (None / {} if absent)."""
    from llama_index.core.schema import MetadataMode

    docstore = index.docstore
    texts: list[str | None] = []
    metas: list[dict[str, Any]] = []
    for node_id in node_ids:
        node = docstore.get_node(node_id, raise_error=False)
        if node is None:
            texts.append(None)
            metas.append({})
        else:
            texts.append(node.get_content(metadata_mode=MetadataMode.NONE))
            metas.append(dict(node.metadata))
    return texts, metas


class LangChainInMemoryAdapter(_DictStoreAdapter):
    """LangChain ``InMemoryVectorStore``: ids, ``vector``, ``text`` and ``metadata`` per record."""

    name = "langchain-inmemory"

    def __init__(self, vector_store: Any) -> None:
        self._vs = vector_store

    def identity(self) -> StoreIdentity:
        return process_identity(self._vs, self.name)

    @property
    def _store(self) -> dict[str, dict[str, Any]]:
        # the store's own dict (written in place by _write_batch), untyped by the framework
        return cast("dict[str, dict[str, Any]]", self._vs.store)

    def count(self) -> int:
        return len(self._store)

    def dim(self) -> int:
        width = _first_width(r["vector"] for r in self._store.values())
        if width is None:
            from nudge_rag.errors import StoreError

            msg = f"the {self.name} store is empty, so it has no vector width yet"
            raise StoreError(msg)
        return width

    def _keys(self) -> list[str]:
        return list(self._store)

    def _vector(self, id_: str) -> list[float]:
        return cast("list[float]", self._store[id_]["vector"])

    def _has(self, id_: str) -> bool:
        return id_ in self._store

    def _docs(self, ids: list[str]) -> tuple[list[str | None], list[dict[str, Any]]]:
        recs = [self._store[i] for i in ids]
        return [r.get("text") for r in recs], [dict(r.get("metadata") or {}) for r in recs]

    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        store = self._store
        for id_, row in zip(ids, vectors.tolist(), strict=True):
            store[id_]["vector"] = row

    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        hits = self._vs.similarity_search_with_score_by_vector(query.tolist(), k=k)
        return [(str(doc.id), float(score)) for doc, score in hits]
