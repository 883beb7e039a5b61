"""Vector store adapters: read stored vectors page by page, write vectors back in place.

One adapter per store; ``adapter_for(obj)`` picks it from what the user already has::

    >>> from nudge_rag.stores import adapter_for
    >>> store = adapter_for(index)                  # doctest: +SKIP
    >>> store.name, store.metric, store.count()     # doctest: +SKIP
    ('llamaindex-chroma', 'cosine', 1183)
    >>> for page in store.iter_pages(500):          # doctest: +SKIP
    ...     page.ids, page.embeddings.shape
    >>> store.write_vectors(ids, new_vectors)       # doctest: +SKIP

Importing this package imports numpy only; each store client and framework is imported when an
adapter for it is made.

============================  =======================================  ========================
store                         metric                                   read back after a write
============================  =======================================  ========================
LlamaIndex SimpleVectorStore  cosine                                   bit for bit
LangChain InMemoryVectorStore cosine                                   bit for bit
Chroma (both, or collection)  its space: l2 (default), cosine, ip=dot  bit for bit; cosine ~1e-7
Qdrant (both)                 its distance: Cosine, Dot, Euclid=l2     bit for bit; Cosine: unit
FAISS flat (both)             the index's: IP=dot, L2=l2               bit for bit
pgvector (LlamaIndex)         cosine (its queries use ``<=>``)         bit for bit
pgvector (LangChain, both)    its distance_strategy: cosine, l2, dot   bit for bit
Milvus (both)                 its index's: COSINE, IP=dot, L2=l2       bit for bit
LanceDB (both)                l2; with a vector index, the index's     bit for bit
============================  =======================================  ========================

``search`` and ``top_scores`` are exact on flat stores and approximate where the store searches
an index (HNSW, IVF): see each adapter's ``exact_search``.
"""

from __future__ import annotations

from nudge_rag.stores._base import Metric, StoreIdentity, StorePage, VectorStoreAdapter
from nudge_rag.stores._detect import SUPPORTED_STORES, adapter_for

__all__ = [
    "SUPPORTED_STORES",
    "Metric",
    "StoreIdentity",
    "StorePage",
    "VectorStoreAdapter",
    "adapter_for",
]
