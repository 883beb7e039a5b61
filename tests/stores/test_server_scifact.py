"""SciFact through the server stores: PostgreSQL + pgvector and Milvus Lite, each through
LlamaIndex and LangChain, filled with the cached all-MiniLM-L6-v2 vectors (never re-embedded).

The finetuner (NUDGE-N, the rest at its defaults), given the paper split's training +
validation queries, must give the same test NDCG@10 (within 0.5 point) as it gives on LangChain's
``InMemoryVectorStore`` over the same vectors (computed here, not hard-coded), both with
``unmoved="scan"`` (every vector read) and ``unmoved="search"`` (the store's own search). The
stores are searched exactly (no ANN index on PostgreSQL; Milvus Lite searches flat), so both
modes see the same best unmoved scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from store_cases import table_name

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.evaluation import ndcg_at_k

pytestmark = pytest.mark.slow

K = 10
TOLERANCE = 0.005  # half a point of NDCG@10
MODES = ("scan", "search")
# NUDGE-N with the rest at its defaults (0.868 in memory): what the stores must reproduce.
FINETUNER: dict[str, Any] = {"method": "nudge-n"}


class CachedMiniLM:
    """all-MiniLM-L6-v2 through the disk cache (``LocalEmbedder``), without its ``model``
    attribute: the pipeline names the model from ``model`` before ``model_id``, and reading
    ``LocalEmbedder.model`` loads sentence-transformers (a minute on a busy CI machine) even
    when every vector comes from the cache."""

    def __init__(self) -> None:
        from nudge_rag.embedding import LocalEmbedder

        self._inner = LocalEmbedder(show_progress=False)
        self.model_id = self._inner.model_id

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return self._inner.embed_documents(texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._inner.embed_queries(texts)


class SciFact:
    """The corpus with its cached vectors, the paper split's queries, and the in-memory result."""

    def __init__(self, shared_data: Any) -> None:
        from nudge_rag.evaluation.datasets import load_beir, paper_split
        from nudge_rag.experiment import prepare_beir

        self.embedder = CachedMiniLM()
        exp = prepare_beir(shared_data / "scifact", self.embedder, show_progress=False)
        data = load_beir(shared_data / "scifact")
        self.ids: list[str] = list(exp.doc_ids)
        self.texts: list[str] = [data.corpus[d] for d in self.ids]
        self.vectors: np.ndarray = np.asarray(exp.doc_emb, dtype=np.float32)
        tr, va, te = paper_split(data.qrels, ("train", "dev", "test"))
        self.pairs = [
            (data.queries[q], {d: float(g) for d, g in j.items()}) for q, j in {**tr, **va}.items()
        ]
        self.test = [(data.queries[q], {d: float(g) for d, g in j.items()}) for q, j in te.items()]
        self.reference = float("nan")

    def ndcg(self, retrieve: Callable[[str], list[str]]) -> float:
        return float(np.mean([ndcg_at_k(retrieve(q), rel, K) for q, rel in self.test]))

    def ndcg_cosine(self, ids: list[str], vectors: np.ndarray) -> float:
        """Test NDCG@10 ranking ``vectors`` by cosine exactly (what InMemoryVectorStore does,
        there one query at a time at ~0.5 s each)."""
        q = np.asarray(self.embedder.embed_queries([t for t, _ in self.test]), np.float64)
        x = np.asarray(vectors, np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        top = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :K]
        return float(
            np.mean(
                [
                    ndcg_at_k([ids[j] for j in row], rel, K)
                    for row, (_, rel) in zip(top, self.test, strict=True)
                ]
            )
        )


@pytest.fixture(scope="module")
def scifact(shared_data: Any, tmp_path_factory: pytest.TempPathFactory) -> SciFact:
    """SciFact, and the finetuner's test NDCG@10 on LangChain's InMemoryVectorStore."""
    if not (shared_data / "scifact").is_dir():
        pytest.skip(f"SciFact not found in {shared_data}")
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag.integrations.langchain import as_langchain_embeddings

    sf = SciFact(shared_data)
    store = InMemoryVectorStore(as_langchain_embeddings(sf.embedder))
    for rid, text, vec in zip(sf.ids, sf.texts, sf.vectors, strict=True):
        # The store's own layout, filled with the cached vectors (add_texts would re-embed).
        store.store[rid] = {"id": rid, "vector": vec.tolist(), "text": text, "metadata": {}}
    ft = NudgeEmbeddingFinetuner(store, state_dir=tmp_path_factory.mktemp("inmemory"), **FINETUNER)
    ft.finetune(sf.pairs, similarity_top_k=K)
    sf.reference = sf.ndcg_cosine(sf.ids, np.array([store.store[i]["vector"] for i in sf.ids]))
    print(f"\nSciFact test NDCG@10, in memory: {sf.reference:.4f} ({ft.report.summary()})")
    return sf


def run_modes(
    sf: SciFact,
    store: Any,
    ids_of: Callable[[Any, str], list[str]],
    tmp_path: Any,
    label: str,
) -> None:
    """Fine-tune ``store`` once per mode (reverting in between) and check test NDCG@10."""
    got: dict[str, float] = {}
    for mode in MODES:
        ft = NudgeEmbeddingFinetuner(store, unmoved=mode, state_dir=tmp_path / mode, **FINETUNER)
        tuned = ft.finetune(sf.pairs, similarity_top_k=K)
        assert ft.report is not None and ft.report.unmoved == mode
        got[mode] = sf.ndcg(lambda q, r=tuned: ids_of(r, q))
        print(f"{label} unmoved={mode}: test NDCG@10 {got[mode]:.4f} ({ft.report.summary()})")
        assert ft.revert().ok
    print(
        f"{label}: in memory {sf.reference:.4f}, "
        + ", ".join(f"{m} {v:.4f}" for m, v in got.items())
    )
    for mode, value in got.items():
        assert abs(value - sf.reference) <= TOLERANCE, (label, mode, value, sf.reference)


def llamaindex_ids(retriever: Any, query: str) -> list[str]:
    return [n.node.node_id for n in retriever.retrieve(query)]


def langchain_ids(retriever: Any, query: str) -> list[str]:
    # langchain_milvus leaves Document.id empty and puts the primary key in the metadata.
    return [d.id if d.id is not None else d.metadata["pk"] for d in retriever.invoke(query)]


def llamaindex_index(sf: SciFact, vector_store: Any) -> Any:
    """A VectorStoreIndex over ``vector_store``, filled with nodes that carry their vectors."""
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode

    from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

    nodes = [
        TextNode(id_=rid, text=text, embedding=vec.tolist())
        for rid, text, vec in zip(sf.ids, sf.texts, sf.vectors, strict=True)
    ]
    return VectorStoreIndex(
        nodes,
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=as_llamaindex_embedding(sf.embedder),
    )


def test_llamaindex_pgvector(scifact: SciFact, pg_urls: dict[str, str], request, tmp_path):
    pytest.importorskip("llama_index.vector_stores.postgres")
    from llama_index.vector_stores.postgres import PGVectorStore

    vs = PGVectorStore.from_params(
        connection_string=pg_urls["psycopg2"],
        async_connection_string=pg_urls["asyncpg"],
        table_name=table_name("scifact_li"),
        embed_dim=scifact.vectors.shape[1],
    )
    request.addfinalizer(lambda: vs._engine and vs._engine.dispose())
    index = llamaindex_index(scifact, vs)
    run_modes(scifact, index, llamaindex_ids, tmp_path, "LlamaIndex PGVectorStore")


def test_langchain_pgvectorstore(
    scifact: SciFact, pg_langchain_engine: Any, pg_engine: Any, tmp_path
):
    from langchain_postgres import Column, PGVectorStore
    from sqlalchemy import text

    from nudge_rag.integrations.langchain import as_langchain_embeddings

    name = table_name("scifact_lc")
    # SciFact's ids are numbers, not UUIDs (the default id column's type): a text id column.
    pg_langchain_engine.init_vectorstore_table(
        name, scifact.vectors.shape[1], id_column=Column("langchain_id", "TEXT")
    )
    # The framework's table, filled in one statement (add_embeddings inserts row by row: over a
    # minute here); each float32 as its shortest round-trip decimal, read back exactly.
    vecs = ["[" + ",".join(map(repr, v.tolist())) + "]" for v in scifact.vectors]
    with pg_engine.begin() as conn:
        conn.execute(
            text(
                f'INSERT INTO "public"."{name}" (langchain_id, content, embedding, '
                "langchain_metadata) SELECT i, c, CAST(v AS vector), CAST('{}' AS json) "
                "FROM unnest(CAST(:ids AS text[]), CAST(:texts AS text[]), "
                "CAST(:vecs AS text[])) AS u(i, c, v)"
            ),
            {"ids": scifact.ids, "texts": scifact.texts, "vecs": vecs},
        )
    store = PGVectorStore.create_sync(
        pg_langchain_engine, as_langchain_embeddings(scifact.embedder), name
    )
    run_modes(scifact, store, langchain_ids, tmp_path, "LangChain PGVectorStore")


def test_llamaindex_milvus(scifact: SciFact, milvus_uri: str, tmp_path):
    pytest.importorskip("llama_index.vector_stores.milvus")
    from llama_index.vector_stores.milvus import MilvusVectorStore

    vs = MilvusVectorStore(
        uri=milvus_uri,
        collection_name=table_name("scifact_li"),
        dim=scifact.vectors.shape[1],
        use_async_client=False,  # an async client needs a running event loop
    )
    index = llamaindex_index(scifact, vs)
    run_modes(scifact, index, llamaindex_ids, tmp_path, "LlamaIndex MilvusVectorStore")


def test_langchain_milvus(scifact: SciFact, milvus_uri: str, tmp_path):
    pytest.importorskip("langchain_milvus")
    from langchain_milvus import Milvus

    from nudge_rag.integrations.langchain import as_langchain_embeddings

    store = Milvus(
        embedding_function=as_langchain_embeddings(scifact.embedder),
        connection_args={"uri": milvus_uri},
        collection_name=table_name("scifact_lc"),
        auto_id=False,
    )
    # Milvus Lite takes an insert in a time that grows with the square of its size: 200 at a time.
    store.add_embeddings(scifact.texts, scifact.vectors.tolist(), ids=scifact.ids, batch_size=200)
    run_modes(scifact, store, langchain_ids, tmp_path, "LangChain Milvus")
