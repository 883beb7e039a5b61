"""End to end on real data: SciFact in Chroma, through LlamaIndex and through LangChain.

The finetuner, given the paper split's training + validation queries (it makes its own validation
split from them), must keep at least 90% of the NDCG@10 gain the core shows for NUDGE-N on the
same split, measured on the SciFact test queries through the retriever it returns.
"""

from __future__ import annotations

import numpy as np
import pytest

from nudge_rag import NudgeEmbeddingFinetuner, NudgeN
from nudge_rag.evaluation import ndcg_at_k

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scifact(shared_data):
    from nudge_rag.evaluation.datasets import load_beir
    from nudge_rag.experiment import evaluate_embeddings, prepare_beir

    exp = prepare_beir(shared_data / "scifact", show_progress=False)
    data = load_beir(shared_data / "scifact")
    base = evaluate_embeddings(exp.doc_emb, exp.test).ndcg.mean()
    core = NudgeN().fit(exp.doc_emb, exp.train, exp.val)
    core_gain = evaluate_embeddings(core.embeddings, exp.test).ndcg.mean() - base
    return exp, data, base, core_gain


def split_pairs(exp, data):
    """(query text, {record id: grade}) for the train+val and the test queries of the split."""
    from nudge_rag.evaluation.datasets import paper_split

    tr, va, te = paper_split(data.qrels, ("train", "dev", "test"))
    pairs = [
        (data.queries[q], {d: float(g) for d, g in j.items()}) for q, j in {**tr, **va}.items()
    ]
    test = [(data.queries[q], {d: float(g) for d, g in j.items()}) for q, j in te.items()]
    return pairs, test


def mean_ndcg(retrieve, test) -> float:
    return float(np.mean([ndcg_at_k(retrieve(q), rel, 10) for q, rel in test]))


def test_llamaindex_chroma_keeps_the_core_gain(scifact, tmp_path):
    import chromadb
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from nudge_rag.embedding import LocalEmbedder
    from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

    exp, data, base, core_gain = scifact
    client = chromadb.EphemeralClient()
    collection = client.create_collection("scifact-li")
    vs = ChromaVectorStore(chroma_collection=collection)
    nodes = [
        TextNode(id_=d, text=data.corpus[d], embedding=exp.doc_emb[i].tolist())
        for i, d in enumerate(exp.doc_ids)
    ]
    embed = as_llamaindex_embedding(LocalEmbedder())
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=vs), embed_model=embed
    )
    pairs, test = split_pairs(exp, data)
    retriever = index.as_retriever(similarity_top_k=10)
    before = mean_ndcg(lambda q: [n.node.node_id for n in retriever.retrieve(q)], test)
    assert before == pytest.approx(base, abs=0.01)  # HNSW is approximate
    ft = NudgeEmbeddingFinetuner(
        index, method="nudge-n", state_dir=tmp_path / "st", similarity_top_k=10
    )  # the store path must keep the core NUDGE-N gain
    tuned = ft.finetune(pairs)
    after = mean_ndcg(lambda q: [n.node.node_id for n in tuned.retrieve(q)], test)
    assert after - before >= 0.9 * core_gain, (before, after, core_gain, ft.report.summary())
    ft.revert()
    # Vectors come back exactly (tests/stores); the HNSW graph Chroma rebuilt around the updates
    # differs, so approximate search may differ slightly.
    restored = mean_ndcg(lambda q: [n.node.node_id for n in retriever.retrieve(q)], test)
    assert restored == pytest.approx(before, abs=0.01)


def test_langchain_chroma_keeps_the_core_gain(scifact, tmp_path):
    import chromadb
    from langchain_chroma import Chroma

    from nudge_rag.embedding import LocalEmbedder
    from nudge_rag.integrations.langchain import as_langchain_embeddings

    exp, data, base, core_gain = scifact
    client = chromadb.EphemeralClient()
    store = Chroma(
        client=client,
        collection_name="scifact-lc",
        embedding_function=as_langchain_embeddings(LocalEmbedder()),
        collection_metadata={"hnsw:space": "cosine"},
    )
    store.add_texts([data.corpus[d] for d in exp.doc_ids], ids=list(exp.doc_ids))  # cached vectors
    pairs, test = split_pairs(exp, data)
    retriever = store.as_retriever(search_kwargs={"k": 10})
    before = mean_ndcg(lambda q: [d.id for d in retriever.invoke(q)], test)
    assert before == pytest.approx(base, abs=0.01)  # HNSW is approximate
    ft = NudgeEmbeddingFinetuner(
        store, method="nudge-n", state_dir=tmp_path / "st", similarity_top_k=10
    )  # the store path must keep the core NUDGE-N gain
    tuned = ft.finetune(pairs)
    after = mean_ndcg(lambda q: [d.id for d in tuned.invoke(q)], test)
    assert after - before >= 0.9 * core_gain, (before, after, core_gain, ft.report.summary())
    ft.revert()
    restored = mean_ndcg(lambda q: [d.id for d in retriever.invoke(q)], test)
    assert restored == pytest.approx(before, abs=0.01)  # HNSW graph, see above
