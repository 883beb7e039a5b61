"""``adapter_for``: find the adapter for whatever index or vector store the user passed.

Detection looks at the class names and modules of the object's type (its MRO), so it never
imports a framework or store client the user does not have.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nudge_rag._util import from_class as _is
from nudge_rag.errors import UnsupportedStoreError
from nudge_rag.stores._base import VectorStoreAdapter

__all__ = ["SUPPORTED_STORES", "adapter_for"]

#: Adapter name -> what the user passes for it.
_DESCRIPTIONS: dict[str, str] = {
    "llamaindex-simple": "LlamaIndex SimpleVectorStore (or a VectorStoreIndex over it)",
    "llamaindex-chroma": "LlamaIndex ChromaVectorStore (or a VectorStoreIndex over it)",
    "llamaindex-qdrant": "LlamaIndex QdrantVectorStore (or a VectorStoreIndex over it)",
    "llamaindex-faiss": (
        "LlamaIndex FaissVectorStore / FaissMapVectorStore over a flat index "
        "(or a VectorStoreIndex over it)"
    ),
    "langchain-inmemory": "LangChain InMemoryVectorStore (langchain_core)",
    "langchain-chroma": "LangChain Chroma (langchain_chroma)",
    "langchain-qdrant": "LangChain QdrantVectorStore (langchain_qdrant)",
    "langchain-faiss": "LangChain FAISS over a flat index (langchain_community)",
    "chroma": "a chromadb Collection",
    "llamaindex-pgvector": (
        "LlamaIndex PGVectorStore (llama-index-vector-stores-postgres; or a VectorStoreIndex over it)"
    ),
    "langchain-pgvectorstore": "LangChain PGVectorStore (langchain_postgres)",
    "langchain-pgvector": "LangChain PGVector (langchain_postgres, the older API)",
    "llamaindex-milvus": "LlamaIndex MilvusVectorStore (or a VectorStoreIndex over it)",
    "langchain-milvus": "LangChain Milvus (langchain_milvus)",
    "llamaindex-lancedb": "LlamaIndex LanceDBVectorStore (or a VectorStoreIndex over it)",
    "langchain-lancedb": "LangChain LanceDB (langchain_community)",
}

#: Names of the stores ``adapter_for`` accepts (each adapter's ``name``).
SUPPORTED_STORES: list[str] = list(_DESCRIPTIONS)


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _unsupported(obj: Any, inside: Any = None) -> UnsupportedStoreError:
    where = f" (the vector_store of the {_type_name(inside)} passed)" if inside is not None else ""
    listing = "; ".join(f"{k}: {v}" for k, v in _DESCRIPTIONS.items())
    msg = (
        f"no vector store adapter for {_type_name(obj)}{where}. Supported stores: {listing}. "
        "For another store, subclass nudge_rag.stores.VectorStoreAdapter (count, dim, "
        "iter_pages, get, _missing, _write_batch, _search; docs/reference.md: 'Another store') and pass "
        "an instance of it"
    )
    return UnsupportedStoreError(msg)


def adapter_for(obj: Any) -> VectorStoreAdapter:
    """The adapter that reads and writes the vectors of ``obj``.

    Args:
        obj: A LlamaIndex ``VectorStoreIndex`` or vector store, a LangChain vector store, a
            chromadb ``Collection``, or an adapter (returned as is). ``SUPPORTED_STORES`` lists
            them.

    Raises:
        UnsupportedStoreError: No adapter exists for this type (the message names it and lists
            the supported stores).
        StoreError: The store is of a supported kind but cannot be adapted (e.g. a FAISS IVF
            index, a Chroma space or Qdrant distance with no counterpart).
    """
    if isinstance(obj, VectorStoreAdapter):
        return obj
    if _is(obj, "llama_index.", "VectorStoreIndex"):
        adapter = _llamaindex_store(obj.vector_store, obj)
        if adapter is None:
            raise _unsupported(obj.vector_store, inside=obj)
        return adapter
    adapter = _llamaindex_store(obj, None) or _langchain_store(obj)
    if adapter is not None:
        return adapter
    if _is(obj, "chromadb.", "Collection"):
        from nudge_rag.stores._chroma import ChromaAdapter

        return ChromaAdapter(obj, name="chroma")
    raise _unsupported(obj)


def _llamaindex_store(vs: Any, index: Any) -> VectorStoreAdapter | None:
    if _is(vs, "llama_index.core.vector_stores", "SimpleVectorStore"):
        from nudge_rag.stores._inmemory import LlamaIndexSimpleAdapter

        return LlamaIndexSimpleAdapter(vs, index)
    if _is(vs, "llama_index.vector_stores.chroma", "ChromaVectorStore"):
        from nudge_rag.stores._chroma import ChromaAdapter

        return ChromaAdapter(vs.client, name="llamaindex-chroma")
    if _is(vs, "llama_index.vector_stores.qdrant", "QdrantVectorStore"):
        from nudge_rag.stores._qdrant import QdrantAdapter, llamaindex_payload_docs

        return QdrantAdapter(
            vs.client,
            vs.collection_name,
            name="llamaindex-qdrant",
            vector_name=vs.dense_vector_name,
            payload_docs=llamaindex_payload_docs(vs.text_key),
        )
    if _is(vs, "llama_index.vector_stores.faiss", "FaissVectorStore", "FaissMapVectorStore"):
        return _llamaindex_faiss(vs, index)
    if _is(vs, "llama_index.vector_stores.postgres", "PGVectorStore"):
        from nudge_rag.stores._pgvector import llamaindex_pgvector

        return llamaindex_pgvector(vs)
    if _is(vs, "llama_index.vector_stores.milvus", "MilvusVectorStore"):
        from nudge_rag.stores._milvus import llamaindex_milvus

        return llamaindex_milvus(vs)
    if _is(vs, "llama_index.vector_stores.lancedb", "LanceDBVectorStore"):
        from nudge_rag.stores._lancedb import llamaindex_lancedb

        return llamaindex_lancedb(vs)
    return None


def _llamaindex_faiss(vs: Any, index: Any) -> VectorStoreAdapter:
    from nudge_rag.stores._faiss import FaissFlatAdapter
    from nudge_rag.stores._inmemory import llamaindex_docstore_docs

    is_map = _is(vs, "llama_index.vector_stores.faiss", "FaissMapVectorStore")

    def label_ids(labels: np.ndarray) -> list[str]:
        if is_map:
            by_label = vs._faiss_id_to_node_id_map
            vector_ids = [by_label[int(lab)] for lab in labels]
        else:  # FaissVectorStore names each record by its position
            vector_ids = [str(int(lab)) for lab in labels]
        if index is None:
            return vector_ids
        nodes = index.index_struct.nodes_dict  # vector-store id -> node id
        return [nodes.get(v, v) for v in vector_ids]

    docs = None
    if index is not None:

        def docs(ids: list[str]) -> tuple[list[str | None], list[dict[str, Any]]]:
            return llamaindex_docstore_docs(index, ids)

    return FaissFlatAdapter(vs.client, label_ids, name="llamaindex-faiss", docs=docs)


def _langchain_store(vs: Any) -> VectorStoreAdapter | None:
    if _is(vs, "langchain_core.vectorstores", "InMemoryVectorStore"):
        from nudge_rag.stores._inmemory import LangChainInMemoryAdapter

        return LangChainInMemoryAdapter(vs)
    if _is(vs, "langchain_chroma", "Chroma"):
        from nudge_rag.stores._chroma import ChromaAdapter

        return ChromaAdapter(vs._collection, name="langchain-chroma")
    if _is(vs, "langchain_qdrant", "QdrantVectorStore"):
        from nudge_rag.stores._qdrant import QdrantAdapter, langchain_payload_docs

        return QdrantAdapter(
            vs.client,
            vs.collection_name,
            name="langchain-qdrant",
            vector_name=vs.vector_name,
            payload_docs=langchain_payload_docs(vs.content_payload_key, vs.metadata_payload_key),
        )
    if _is(vs, "langchain_community.vectorstores", "FAISS"):
        return _langchain_faiss(vs)
    if _is(vs, "langchain_postgres", "PGVectorStore", "AsyncPGVectorStore"):
        from nudge_rag.stores._pgvector import langchain_pgvectorstore

        return langchain_pgvectorstore(vs)
    if _is(vs, "langchain_postgres", "PGVector"):
        from nudge_rag.stores._pgvector import langchain_pgvector

        return langchain_pgvector(vs)
    if _is(vs, "langchain_milvus", "Milvus"):
        from nudge_rag.stores._milvus import langchain_milvus

        return langchain_milvus(vs)
    if _is(vs, "langchain_community.vectorstores", "LanceDB"):
        from nudge_rag.stores._lancedb import langchain_lancedb

        return langchain_lancedb(vs)
    return None


def _langchain_faiss(vs: Any) -> VectorStoreAdapter:
    from nudge_rag.stores._faiss import FaissFlatAdapter

    def label_ids(labels: np.ndarray) -> list[str]:
        by_label = vs.index_to_docstore_id
        return [str(by_label[int(lab)]) for lab in labels]

    def docs(ids: list[str]) -> tuple[list[str | None], list[dict[str, Any]]]:
        texts: list[str | None] = []
        metas: list[dict[str, Any]] = []
        for id_ in ids:
            doc = vs.docstore.search(id_)
            if isinstance(doc, str):  # the docstore's "ID not found" message
                texts.append(None)
                metas.append({})
            else:
                texts.append(doc.page_content)
                metas.append(dict(doc.metadata))
        return texts, metas

    return FaissFlatAdapter(vs.index, label_ids, name="langchain-faiss", docs=docs)
