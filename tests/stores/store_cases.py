"""The real stores the adapter tests run against, each filled through its framework with the bag-of-words
embedder: LlamaIndex (``VectorStoreIndex`` over nodes) and LangChain (``from_texts``).

Chroma runs three ways: ephemeral, persistent (tmp_path), and as a server (``chroma run``, see
conftest.py). The Chroma clients come from fixtures, fetched by name from the test's request.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from nudge_rag.testing import BagOfWordsEmbedder

# Named third-party warnings these tests cannot avoid (applied to the tests in this folder only,
# see pytest_collection_modifyitems in conftest.py):
# - qdrant-client local mode warns when LlamaIndex creates its doc_id payload index;
# - langchain-community warns on import that it is being sunset (LangChain's FAISS lives there);
# - LlamaIndex's LanceDBVectorStore lists tables with lancedb's deprecated table_names().
THIRD_PARTY_WARNINGS = [
    "ignore:Payload indexes have no effect in the local Qdrant:UserWarning",
    "ignore:`langchain-community` is being sunset:DeprecationWarning",
    r"ignore:table_names\(\) is deprecated:DeprecationWarning",
]

DIM = 48
N_RECORDS = 23  # pages of 7 -> 7, 7, 7, 2

TOPICS = ["protein folding", "solar wind", "river delta", "neural network", "coral reef"]


def _texts() -> list[str]:
    return [
        f"note {i} on {TOPICS[i % 5]} with detail{i} and extra{i * 7 % 11}"
        for i in range(N_RECORDS)
    ]


def _metadatas() -> list[dict[str, Any]]:
    return [
        {"n": i, "topic": TOPICS[i % 5], "score": i / 4, "even": i % 2 == 0}
        for i in range(N_RECORDS)
    ]


def _ids() -> list[str]:
    # UUIDs, because Qdrant takes only UUIDs or unsigned ints as point ids.
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"nudge-rag-test/{i}")) for i in range(N_RECORDS)]


# LlamaIndex bookkeeping keys that sit next to the user's metadata in Chroma / Qdrant records.
LLAMAINDEX_KEYS = {"_node_content", "_node_type", "document_id", "doc_id", "ref_doc_id"}


def user_metadata(meta: dict) -> dict:
    """The user's metadata from a record as the store keeps it."""
    return {k: v for k, v in meta.items() if k not in LLAMAINDEX_KEYS}


@dataclass
class Case:
    """One real store, filled with the corpus above."""

    key: str
    obj: Any  # what the user would pass to adapter_for
    name: str  # expected adapter name
    metric: str  # expected metric
    normalizes: bool  # expected normalizes_on_write
    embedder: BagOfWordsEmbedder
    retrieve: Callable[[str, int], list[str]] | None  # framework retriever: query -> texts
    has_text: bool = True
    ids: list[str] = field(default_factory=_ids)
    texts: list[str] = field(default_factory=_texts)
    metadatas: list[dict] = field(default_factory=_metadatas)


def collection_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- builders -----------------------------------------------------------------------------------


def _llamaindex_nodes(case_ids: list[str], texts: list[str], metas: list[dict]) -> list[Any]:
    from llama_index.core.schema import TextNode

    return [
        TextNode(id_=i, text=t, metadata=dict(m))
        for i, t, m in zip(case_ids, texts, metas, strict=True)
    ]


def _llamaindex_case(
    key: str, vector_store: Any, name: str, metric: str, normalizes: bool, *, bare: bool = False
) -> Case:
    from llama_index.core import StorageContext, VectorStoreIndex

    emb = BagOfWordsEmbedder(DIM)
    ids, texts, metas = _ids(), _texts(), _metadatas()
    kwargs: dict[str, Any] = {"embed_model": emb.as_llamaindex()}
    if vector_store is not None:
        kwargs["storage_context"] = StorageContext.from_defaults(vector_store=vector_store)
    index = VectorStoreIndex(_llamaindex_nodes(ids, texts, metas), **kwargs)

    def retrieve(query: str, k: int) -> list[str]:
        hits = index.as_retriever(similarity_top_k=k).retrieve(query)
        return [h.node.get_content() for h in hits]

    obj = index.vector_store if bare else index
    return Case(key, obj, name, metric, normalizes, emb, retrieve, has_text=not bare)


def _langchain_case(
    key: str,
    build: Callable[..., Any],
    name: str,
    metric: str,
    norm: bool,
    ids: list[str] | None = None,
) -> Case:
    emb = BagOfWordsEmbedder(DIM)
    ids, texts, metas = ids or _ids(), _texts(), _metadatas()
    vs = build(texts, emb.as_langchain(), metas, ids)

    def retrieve(query: str, k: int) -> list[str]:
        return [d.page_content for d in vs.similarity_search(query, k=k)]

    return Case(key, vs, name, metric, norm, emb, retrieve, ids=ids)


def table_name(prefix: str) -> str:
    """A fresh name that SQL, Milvus and LanceDB all take unquoted."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _server_case(key: str, request: pytest.FixtureRequest) -> Case:
    """PostgreSQL + pgvector, Milvus Lite and LanceDB, through both frameworks."""
    if key == "llamaindex-pgvector-hnsw":
        pytest.importorskip("llama_index.vector_stores.postgres")
        from llama_index.vector_stores.postgres import PGVectorStore

        urls = request.getfixturevalue("pg_urls")
        vs = PGVectorStore.from_params(
            connection_string=urls["psycopg2"],
            async_connection_string=urls["asyncpg"],
            table_name=table_name("li"),
            embed_dim=DIM,
            hnsw_kwargs={"hnsw_m": 16, "hnsw_ef_construction": 64, "hnsw_ef_search": 40},
        )
        request.addfinalizer(lambda: vs._engine and vs._engine.dispose())
        return _llamaindex_case(key, vs, "llamaindex-pgvector", "cosine", False)
    if key == "langchain-pgvectorstore-ip":
        pytest.importorskip("langchain_postgres")
        from langchain_postgres import PGVectorStore
        from langchain_postgres.v2.indexes import DistanceStrategy

        engine = request.getfixturevalue("pg_langchain_engine")
        name = table_name("lc")
        engine.init_vectorstore_table(name, DIM)

        def build(texts: Any, emb: Any, metas: Any, ids: Any) -> Any:
            vs = PGVectorStore.create_sync(
                engine, emb, name, distance_strategy=DistanceStrategy.INNER_PRODUCT
            )
            vs.add_texts(texts, metadatas=metas, ids=ids)
            return vs

        return _langchain_case(key, build, "langchain-pgvectorstore", "dot", False)
    if key == "langchain-pgvector-l2":
        pytest.importorskip("langchain_postgres")
        from langchain_postgres import PGVector
        from langchain_postgres.vectorstores import DistanceStrategy as LegacyStrategy

        engine = request.getfixturevalue("pg_engine")
        collection = table_name("lc")

        def build(texts: Any, emb: Any, metas: Any, ids: Any) -> Any:
            vs = PGVector(
                emb,
                connection=engine,
                collection_name=collection,
                distance_strategy=LegacyStrategy.EUCLIDEAN,
            )
            vs.add_texts(texts, metadatas=metas, ids=ids)
            return vs

        # PGVector's ids are the primary key of one table shared by every collection (adding an
        # id another collection holds updates that record): ids of this collection's own.
        ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{collection}/{i}")) for i in range(N_RECORDS)]
        return _langchain_case(key, build, "langchain-pgvector", "l2", False, ids=ids)
    if key in _MILVUS_CASES:
        # Milvus Lite (flat) or a Milvus server with an HNSW index: (fixture, index, metric).
        fixture, hnsw, metric = _MILVUS_CASES[key]
        uri = request.getfixturevalue(fixture)
        hnsw_params = {"M": 16, "efConstruction": 64}
        if key.startswith("llamaindex"):
            pytest.importorskip("llama_index.vector_stores.milvus")
            from llama_index.vector_stores.milvus import MilvusVectorStore

            index: dict[str, Any] = (
                {
                    "index_config": {"index_type": "HNSW", "params": hnsw_params},
                    "similarity_metric": "IP",
                }
                if hnsw
                else {}
            )
            vs = MilvusVectorStore(
                uri=uri,
                collection_name=table_name("li"),
                dim=DIM,
                use_async_client=False,  # an async client needs a running event loop
                **index,
            )
            return _llamaindex_case(key, vs, "llamaindex-milvus", metric, False)
        pytest.importorskip("langchain_milvus")
        from langchain_milvus import Milvus

        params = (
            {"index_type": "HNSW", "metric_type": metric.upper(), "params": hnsw_params}
            if hnsw
            else None
        )

        def build(texts: Any, emb: Any, metas: Any, ids: Any) -> Any:
            return Milvus.from_texts(
                texts,
                emb,
                metadatas=metas,
                ids=ids,
                connection_args={"uri": uri},
                collection_name=table_name("lc"),
                index_params=params,
            )

        return _langchain_case(key, build, "langchain-milvus", metric, False)
    if key == "llamaindex-lancedb-l2":
        pytest.importorskip("llama_index.vector_stores.lancedb")
        from llama_index.vector_stores.lancedb import LanceDBVectorStore

        path = request.getfixturevalue("tmp_path") / "lancedb"
        vs = LanceDBVectorStore(uri=str(path), table_name="li")
        return _llamaindex_case(key, vs, "llamaindex-lancedb", "l2", False)
    if key == "langchain-lancedb-l2":
        pytest.importorskip("lancedb")
        from langchain_community.vectorstores import LanceDB

        path = request.getfixturevalue("tmp_path") / "lancedb"

        def build(texts: Any, emb: Any, metas: Any, ids: Any) -> Any:
            # distance= only picks LangChain's relevance-score function: LanceDB ranks by L2.
            vs = LanceDB(embedding=emb, uri=str(path), table_name="lc", distance="cosine")
            vs.add_texts(texts, metadatas=metas, ids=ids)
            return vs

        return _langchain_case(key, build, "langchain-lancedb", "l2", False)
    raise AssertionError(key)


_MILVUS_CASES = {
    "llamaindex-milvus-ip": ("milvus_uri", False, "dot"),
    "langchain-milvus-l2": ("milvus_uri", False, "l2"),
    "llamaindex-milvus-server-hnsw-ip": ("milvus_server_uri", True, "dot"),
    "langchain-milvus-server-hnsw-cosine": ("milvus_server_uri", True, "cosine"),
}

SERVER_CASES = [
    "llamaindex-pgvector-hnsw",
    "langchain-pgvectorstore-ip",
    "langchain-pgvector-l2",
    "llamaindex-milvus-ip",
    "langchain-milvus-l2",
    "llamaindex-milvus-server-hnsw-ip",
    "langchain-milvus-server-hnsw-cosine",
    "llamaindex-lancedb-l2",
    "langchain-lancedb-l2",
]


def build_case(key: str, request: pytest.FixtureRequest) -> Case:
    if key in SERVER_CASES:
        return _server_case(key, request)
    if key == "llamaindex-simple":
        return _llamaindex_case(key, None, "llamaindex-simple", "cosine", False)
    if key == "llamaindex-simple-bare":
        return _llamaindex_case(key, None, "llamaindex-simple", "cosine", False, bare=True)
    if key.startswith("llamaindex-chroma"):
        from llama_index.vector_stores.chroma import ChromaVectorStore

        client, space, metric = {
            "llamaindex-chroma-ephemeral-cosine": ("chroma_ephemeral", "cosine", "cosine"),
            "llamaindex-chroma-persistent-l2": ("chroma_persistent", None, "l2"),
            "llamaindex-chroma-server-ip": ("chroma_http", "ip", "dot"),
        }[key]
        chroma = request.getfixturevalue(client)
        config = {"configuration": {"hnsw": {"space": space}}} if space else {}
        col = chroma.create_collection(collection_name("li"), **config)
        vs = ChromaVectorStore(chroma_collection=col)
        return _llamaindex_case(key, vs, "llamaindex-chroma", metric, metric == "cosine")
    if key.startswith("llamaindex-qdrant"):
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient, models

        client = QdrantClient(":memory:")
        if key.endswith("dot"):
            dense = models.VectorParams(size=DIM, distance=models.Distance.DOT)
            vs = QdrantVectorStore("li", client=client, dense_config=dense)
            return _llamaindex_case(key, vs, "llamaindex-qdrant", "dot", False)
        vs = QdrantVectorStore("li", client=client)
        return _llamaindex_case(key, vs, "llamaindex-qdrant", "cosine", True)
    if key == "llamaindex-faiss-ip":
        import faiss
        from llama_index.vector_stores.faiss import FaissVectorStore

        vs = FaissVectorStore(faiss_index=faiss.IndexFlatIP(DIM))
        return _llamaindex_case(key, vs, "llamaindex-faiss", "dot", False)
    if key == "llamaindex-faissmap-l2":
        import faiss
        from llama_index.vector_stores.faiss import FaissMapVectorStore

        vs = FaissMapVectorStore(faiss_index=faiss.IndexIDMap2(faiss.IndexFlatL2(DIM)))
        return _llamaindex_case(key, vs, "llamaindex-faiss", "l2", False)
    if key == "langchain-inmemory":
        from langchain_core.vectorstores import InMemoryVectorStore

        def build(texts: Any, emb: Any, metas: Any, ids: Any) -> Any:
            return InMemoryVectorStore.from_texts(texts, emb, metadatas=metas, ids=ids)

        return _langchain_case(key, build, "langchain-inmemory", "cosine", False)
    if key.startswith("langchain-chroma"):
        from langchain_chroma import Chroma

        client, space, metric = {
            "langchain-chroma-ephemeral-l2": ("chroma_ephemeral", None, "l2"),
            "langchain-chroma-persistent-cosine": ("chroma_persistent", "cosine", "cosine"),
            "langchain-chroma-server-cosine": ("chroma_http", "cosine", "cosine"),
        }[key]
        chroma = request.getfixturevalue(client)

        def build(texts: Any, emb: Any, metas: Any, ids: Any) -> Any:
            extra = {"collection_metadata": {"hnsw:space": space}} if space else {}
            return Chroma.from_texts(
                texts,
                emb,
                metadatas=metas,
                ids=ids,
                client=chroma,
                collection_name=collection_name("lc"),
                **extra,
            )

        return _langchain_case(key, build, "langchain-chroma", metric, metric == "cosine")
    if key.startswith("langchain-qdrant"):
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client.models import Distance

        distance = Distance.DOT if key.endswith("dot") else Distance.COSINE

        def build(texts: Any, emb: Any, metas: Any, ids: Any) -> Any:
            return QdrantVectorStore.from_texts(
                texts,
                emb,
                metadatas=metas,
                ids=ids,
                location=":memory:",
                collection_name="lc",
                distance=distance,
            )

        metric = "dot" if key.endswith("dot") else "cosine"
        return _langchain_case(key, build, "langchain-qdrant", metric, metric == "cosine")
    if key.startswith("langchain-faiss"):
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy

        ip = key.endswith("ip")
        strategy = DistanceStrategy.MAX_INNER_PRODUCT if ip else DistanceStrategy.EUCLIDEAN_DISTANCE

        def build(texts: Any, emb: Any, metas: Any, ids: Any) -> Any:
            return FAISS.from_texts(
                texts, emb, metadatas=metas, ids=ids, distance_strategy=strategy
            )

        return _langchain_case(key, build, "langchain-faiss", "dot" if ip else "l2", False)
    raise AssertionError(key)


CASES = [
    "llamaindex-simple",
    "llamaindex-simple-bare",
    "llamaindex-chroma-ephemeral-cosine",
    "llamaindex-chroma-persistent-l2",
    "llamaindex-chroma-server-ip",
    "llamaindex-qdrant-cosine",
    "llamaindex-qdrant-dot",
    "llamaindex-faiss-ip",
    "llamaindex-faissmap-l2",
    "langchain-inmemory",
    "langchain-chroma-ephemeral-l2",
    "langchain-chroma-persistent-cosine",
    "langchain-chroma-server-cosine",
    "langchain-qdrant-cosine",
    "langchain-qdrant-dot",
    "langchain-faiss-l2",
    "langchain-faiss-ip",
    *SERVER_CASES,
]
