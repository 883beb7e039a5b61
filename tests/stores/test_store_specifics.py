"""What is particular to one store: metric configurations, refusals, paging at scale, dtypes."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from store_cases import collection_name

from nudge_rag.errors import StoreError, ZeroVectorError
from nudge_rag.stores import adapter_for
from nudge_rag.testing import BagOfWordsEmbedder

# -- Chroma ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("create_kwargs", "metric"),
    [
        ({}, "l2"),  # Chroma's default space
        ({"configuration": {"hnsw": {"space": "cosine"}}}, "cosine"),
        ({"configuration": {"hnsw": {"space": "ip"}}}, "dot"),
        ({"configuration": {"hnsw": {"space": "l2"}}}, "l2"),
        ({"metadata": {"hnsw:space": "ip"}}, "dot"),  # the pre-1.0 way
        ({"metadata": {"hnsw:space": "cosine"}}, "cosine"),
    ],
)
def test_chroma_metric_comes_from_the_collection(
    chroma_ephemeral: Any, create_kwargs: dict, metric: str
) -> None:
    col = chroma_ephemeral.create_collection(collection_name("metric"), **create_kwargs)
    col.add(ids=["a"], embeddings=[[1.0, 0.0]])
    adapter = adapter_for(col)
    assert adapter.name == "chroma"
    assert adapter.metric == metric
    assert adapter.normalizes_on_write is (metric == "cosine")


def test_a_raw_collection_on_a_chroma_server(chroma_http: Any) -> None:
    col = chroma_http.create_collection(collection_name("raw"))
    vectors = np.random.default_rng(3).standard_normal((30, 5)).astype(np.float32)
    col.add(
        ids=[f"r{i:02d}" for i in range(30)],
        embeddings=vectors,
        documents=[f"text {i}" for i in range(30)],
        metadatas=[{"i": i} for i in range(30)],
    )
    adapter = adapter_for(col)
    assert (adapter.name, adapter.metric) == ("chroma", "l2")
    pages = list(adapter.iter_pages(8))
    assert [len(p.ids) for p in pages] == [8, 8, 8, 6]
    ids = [i for p in pages for i in p.ids]
    assert sorted(ids) == [f"r{i:02d}" for i in range(30)]
    got = np.concatenate([p.embeddings for p in pages])
    # Over HTTP the vectors arrive as JSON decimals: cast to float32 they are exactly as stored.
    assert got.dtype == np.float32
    assert np.array_equal(got[np.argsort(ids)], vectors)
    assert [p.metadatas[0] for p in pages] == [{"i": 0}, {"i": 8}, {"i": 16}, {"i": 24}]


def test_chroma_cosine_does_not_keep_vectors_bit_for_bit(chroma_ephemeral: Any) -> None:
    # The reason normalizes_on_write is True for Chroma's cosine space (measured on 1.5).
    col = chroma_ephemeral.create_collection(
        collection_name("cos"), configuration={"hnsw": {"space": "cosine"}}
    )
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    col.add(ids=[str(i) for i in range(50)], embeddings=vectors)
    back = np.concatenate([p.embeddings for p in adapter_for(col).iter_pages(50)])
    assert not np.array_equal(back, vectors)
    np.testing.assert_allclose(back, vectors, rtol=0, atol=1e-6)


def test_empty_chroma_collection(chroma_ephemeral: Any) -> None:
    adapter = adapter_for(chroma_ephemeral.create_collection(collection_name("empty")))
    assert adapter.count() == 0
    assert list(adapter.iter_pages(5)) == []
    with pytest.raises(StoreError, match="empty"):
        adapter.dim()


# -- Qdrant ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distance", "metric"), [("COSINE", "cosine"), ("DOT", "dot"), ("EUCLID", "l2")]
)
def test_qdrant_metric_comes_from_the_collection(distance: str, metric: str) -> None:
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client.models import Distance

    vs = QdrantVectorStore.from_texts(
        ["alpha beta", "gamma delta", "beta gamma"],
        BagOfWordsEmbedder(16).as_langchain(),
        location=":memory:",
        collection_name="m",
        distance=getattr(Distance, distance),
    )
    adapter = adapter_for(vs)
    assert adapter.metric == metric
    assert adapter.normalizes_on_write is (metric == "cosine")
    q = BagOfWordsEmbedder(16).embed(["gamma delta"])[0]
    assert vs.similarity_search("gamma delta", k=1)[0].page_content == "gamma delta"
    top_id, top_score = adapter.search(q, 3)[0]
    assert adapter.get([top_id]).texts == ["gamma delta"]
    if metric == "l2":
        assert top_score == pytest.approx(0.0, abs=1e-6)  # minus the distance


def test_qdrant_manhattan_is_refused() -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    client.create_collection(
        "man", vectors_config=models.VectorParams(size=4, distance=models.Distance.MANHATTAN)
    )
    from nudge_rag.stores._qdrant import QdrantAdapter

    with pytest.raises(StoreError, match="Manhattan"):
        QdrantAdapter(client, "man")


def test_qdrant_cosine_stores_the_unit_vector() -> None:
    from langchain_qdrant import QdrantVectorStore

    vs = QdrantVectorStore.from_texts(
        ["alpha", "beta"], BagOfWordsEmbedder(8).as_langchain(), location=":memory:"
    )
    adapter = adapter_for(vs)
    first = adapter.get([next(adapter.iter_pages()).ids[0]])
    adapter.write_vectors(first.ids, np.full((1, 8), 3.0, dtype=np.float32))
    np.testing.assert_allclose(
        adapter.get(first.ids).embeddings, np.full((1, 8), 8**-0.5), atol=1e-7
    )
    with pytest.raises(ZeroVectorError):  # no direction: cosine cannot rank it
        adapter.write_vectors(first.ids, np.zeros((1, 8), dtype=np.float32))


def test_qdrant_pages_past_ten_thousand_points_with_int_ids() -> None:
    # LlamaIndex's QdrantVectorStore.get_nodes() stops at 9,999 points; scrolling does not.
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    n, d = 10_050, 4
    client = QdrantClient(":memory:")
    client.create_collection(
        "big", vectors_config=models.VectorParams(size=d, distance=models.Distance.DOT)
    )
    vectors = np.random.default_rng(5).standard_normal((n, d)).astype(np.float32)
    client.upload_collection(
        "big",
        vectors=vectors,
        ids=list(range(n)),
        payload=[{"page_content": f"p{i}", "metadata": {"i": i}} for i in range(n)],
    )
    vs = QdrantVectorStore(
        client, "big", BagOfWordsEmbedder(d).as_langchain(), distance=models.Distance.DOT
    )
    adapter = adapter_for(vs)
    assert adapter.count() == n
    ids: list[str] = []
    for page in adapter.iter_pages(1000, with_documents=False):
        assert np.array_equal(page.embeddings, vectors[[int(i) for i in page.ids]])
        ids.extend(page.ids)
    assert ids == [str(i) for i in range(n)]
    adapter.write_vectors(["10049", "7"], np.ones((2, d), dtype=np.float32))
    page = adapter.get(["7", "10049", "8"])
    assert page.texts == ["p7", "p10049", "p8"]
    assert page.metadatas == [{"i": 7}, {"i": 10049}, {"i": 8}]
    assert np.array_equal(page.embeddings[:2], np.ones((2, d), dtype=np.float32))
    with pytest.raises(StoreError, match="not-a-point-id"):
        adapter.get(["not-a-point-id"])


def test_qdrant_named_vectors_pick_the_frameworks_dense_vector() -> None:
    from qdrant_client import QdrantClient, models

    from nudge_rag.stores._qdrant import QdrantAdapter

    client = QdrantClient(":memory:")
    client.create_collection(
        "named",
        vectors_config={
            "text-dense": models.VectorParams(size=3, distance=models.Distance.DOT),
            "other": models.VectorParams(size=2, distance=models.Distance.EUCLID),
        },
    )
    pid = str(uuid.uuid4())
    client.upsert(
        "named",
        points=[models.PointStruct(id=pid, vector={"text-dense": [1, 2, 3], "other": [4, 5]})],
    )
    with pytest.raises(StoreError, match="say which"):
        QdrantAdapter(client, "named")
    adapter = QdrantAdapter(client, "named", vector_name="text-dense")
    assert (adapter.metric, adapter.dim()) == ("dot", 3)
    adapter.write_vectors([pid], np.array([[3.0, 2.0, 1.0]], dtype=np.float32))
    point = client.retrieve("named", [pid], with_vectors=True)[0]
    assert point.vector == {"text-dense": [3.0, 2.0, 1.0], "other": [4.0, 5.0]}


# -- FAISS ----------------------------------------------------------------------------------


def _ivf(d: int) -> Any:
    import faiss

    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, 2)
    index.train(np.random.default_rng(0).standard_normal((64, d)).astype(np.float32))
    return index


def test_faiss_ivf_is_refused_saying_why() -> None:
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS

    emb = BagOfWordsEmbedder(8).as_langchain()
    vs = FAISS(emb, _ivf(8), InMemoryDocstore(), {})
    vs.add_texts(["one two", "three four"])
    with pytest.raises(StoreError, match=r"IndexIVFFlat.*flat") as info:
        adapter_for(vs)
    assert "centroid" in str(info.value)


@pytest.mark.parametrize("kind", ["hnsw", "pq", "ivf-in-idmap"])
def test_other_faiss_indexes_are_refused(kind: str) -> None:
    import faiss
    from llama_index.vector_stores.faiss import FaissMapVectorStore, FaissVectorStore

    if kind == "hnsw":
        vs: Any = FaissVectorStore(faiss_index=faiss.IndexHNSWFlat(8, 16))
    elif kind == "pq":
        vs = FaissVectorStore(faiss_index=faiss.IndexPQ(8, 2, 4))
    else:
        vs = FaissMapVectorStore(faiss_index=faiss.IndexIDMap2(_ivf(8)))
    with pytest.raises(StoreError, match="cannot be written in place"):
        adapter_for(vs)


def test_faiss_l2_norm_cache_is_kept_true() -> None:
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS

    index = faiss.IndexFlatL2(4)
    vs = FAISS(BagOfWordsEmbedder(4).as_langchain(), index, InMemoryDocstore(), {})
    vs.add_texts(["a", "b", "c"], ids=["a", "b", "c"])
    index.sync_l2norms()  # the optional norm cache IndexFlatL2 uses in search
    adapter = adapter_for(vs)
    target = np.array([[5.0, -1.0, 2.0, 0.5]], dtype=np.float32)
    adapter.write_vectors(["b"], target)
    assert adapter.search(target[0], 1) == [("b", 0.0)]


def test_empty_faiss_store() -> None:
    import faiss
    from llama_index.vector_stores.faiss import FaissVectorStore

    adapter = adapter_for(FaissVectorStore(faiss_index=faiss.IndexFlatIP(6)))
    assert (adapter.count(), adapter.dim(), adapter.metric) == (0, 6, "dot")
    assert list(adapter.iter_pages()) == []
    assert adapter.search(np.ones(6, dtype=np.float32), 3) == []


# -- the pure-Python stores -----------------------------------------------------------------


def test_inmemory_stores_keep_float64_values_float32_cannot_hold() -> None:
    from langchain_core.vectorstores import InMemoryVectorStore

    vs = InMemoryVectorStore.from_texts(
        ["a b", "c d", "e f"], BagOfWordsEmbedder(4).as_langchain(), ids=["a", "c", "e"]
    )
    adapter = adapter_for(vs)
    assert next(adapter.iter_pages()).embeddings.dtype == np.float32
    precise = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float64)
    adapter.write_vectors(["c"], precise)
    assert vs.store["c"]["vector"] == [0.1, 0.2, 0.3, 0.4]
    pages = list(adapter.iter_pages(2))
    assert pages[0].embeddings.dtype == np.float64  # the page holding "c"
    assert pages[1].embeddings.dtype == np.float32
    assert np.array_equal(adapter.get(["c"]).embeddings, precise)


def test_empty_inmemory_store() -> None:
    from langchain_core.vectorstores import InMemoryVectorStore

    adapter = adapter_for(InMemoryVectorStore(BagOfWordsEmbedder(4).as_langchain()))
    assert adapter.count() == 0
    assert list(adapter.iter_pages()) == []
    with pytest.raises(StoreError, match="empty"):
        adapter.dim()
    assert adapter.get([]).ids == []
