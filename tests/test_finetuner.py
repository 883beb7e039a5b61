"""NudgeEmbeddingFinetuner on the frameworks' in-memory stores: safety, state, errors.

The per-store matrix (Chroma, Qdrant, FAISS, ...) is in tests/stores/test_finetuner_stores.py.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.errors import (
    AnswerError,
    ConfigError,
    DatasetError,
    DimensionMismatchError,
    MetricError,
    UnsupportedStoreError,
    WriteBackError,
)
from nudge_rag.testing import BagOfWordsEmbedder

N_DOCS = 60


def texts() -> list[str]:
    return [f"document about topic{i} with words alpha{i % 7} beta{i % 5}" for i in range(N_DOCS)]


def training_pairs(
    n_docs: int = 20, per_doc: int = 2, shift: int = 1
) -> list[tuple[str, list[str]]]:
    """Queries that share words with a *different* document than their answer, so NUDGE has to
    move the answer toward them to rank it first."""
    pairs = []
    for i in range(n_docs * per_doc):
        d = i % n_docs
        pairs.append(
            (
                f"question alpha{(d + shift) % 7} beta{(d + 2 * shift) % 5} topic{d} v{i // n_docs}",
                [f"d{d}"],
            )
        )
    return pairs


@pytest.fixture
def lc_store():
    from langchain_core.vectorstores import InMemoryVectorStore

    emb = BagOfWordsEmbedder(dim=64).as_langchain()
    metas = [{"n": i, "tag": f"t{i % 3}"} for i in range(N_DOCS)]
    return InMemoryVectorStore.from_texts(
        texts(), emb, metadatas=metas, ids=[f"d{i}" for i in range(N_DOCS)]
    )


def snapshot(store) -> dict[str, tuple[list[float], str, dict]]:
    return {k: (list(v["vector"]), v["text"], dict(v["metadata"])) for k, v in store.store.items()}


def test_finetune_moves_exactly_the_reported_records_and_reverts_bit_for_bit(lc_store, tmp_path):
    before = snapshot(lc_store)
    ft = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st", val_fraction=0.3)
    retriever = ft.finetune(training_pairs(), similarity_top_k=3)
    rep = ft.report
    assert rep.written and rep.gamma > 0 and rep.n_moved > 0
    assert rep.n_records == N_DOCS and rep.n_val > 0
    assert rep.after.ndcg > rep.before.ndcg
    after = snapshot(lc_store)
    assert after.keys() == before.keys()
    changed = sorted(k for k in before if before[k][0] != after[k][0])
    assert changed == sorted(rep.moved_ids)
    for k in before:  # texts and metadata untouched
        assert after[k][1:] == before[k][1:]
    # the returned retriever is LangChain's own, with k honoured, over the moved vectors
    from langchain_core.retrievers import BaseRetriever

    assert isinstance(retriever, BaseRetriever)
    query, answer = training_pairs()[1]
    got = [d.id for d in retriever.invoke(query)]
    assert len(got) == 3 and got[0] == answer[0]
    back = ft.revert()
    assert back.n_restored == rep.n_moved and back.max_abs_diff == 0.0
    assert snapshot(lc_store) == before


def test_revert_works_after_a_restart(lc_store, tmp_path):
    before = snapshot(lc_store)
    NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st", val_fraction=0.3).finetune(
        training_pairs()
    )
    assert snapshot(lc_store) != before
    # a new finetuner object (as after a process restart) finds the originals on disk
    rep = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st").revert()
    assert rep.n_restored > 0
    assert snapshot(lc_store) == before
    assert NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st").revert().n_restored == 0


def test_second_finetune_starts_from_the_originals(lc_store, tmp_path):
    from langchain_core.vectorstores import InMemoryVectorStore

    before = snapshot(lc_store)
    first = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st", val_fraction=0.3)
    first.finetune(training_pairs(n_docs=20))
    first_moved = set(first.report.moved_ids)
    second_pairs = training_pairs(n_docs=10, shift=2)
    first.finetune(second_pairs)
    # the same second fine-tune on a fresh copy of the original store
    fresh = InMemoryVectorStore(embedding=BagOfWordsEmbedder(dim=64).as_langchain())
    fresh.store = {
        k: {"id": k, "vector": list(v[0]), "text": v[1], "metadata": dict(v[2])}
        for k, v in before.items()
    }
    NudgeEmbeddingFinetuner(fresh, state_dir=tmp_path / "fresh", val_fraction=0.3).finetune(
        second_pairs
    )
    now, want = snapshot(lc_store), snapshot(fresh)
    for k in before:
        np.testing.assert_array_equal(now[k][0], want[k][0])
    # records moved only by the first run are back at their originals
    only_first = first_moved - set(first.report.moved_ids)
    assert only_first  # the second run trains on 10 of the first run's 20 records
    for k in only_first:
        assert now[k][0] == before[k][0]
    first.revert()
    assert snapshot(lc_store) == before


@pytest.mark.parametrize("rollback_works", [True, False])
def test_write_failure_half_way_loses_nothing(lc_store, tmp_path, rollback_works):
    before = snapshot(lc_store)
    ft = NudgeEmbeddingFinetuner(
        lc_store, state_dir=tmp_path / "st", val_fraction=0.3, write_batch_size=3
    )
    real = ft._adapter._write_batch
    calls = {"n": 0}

    def flaky(ids, vectors):
        calls["n"] += 1
        if calls["n"] == 3 or (not rollback_works and calls["n"] > 3):
            raise ConnectionError("store went away")
        real(ids, vectors)

    ft._adapter._write_batch = flaky
    with pytest.raises(WriteBackError, match="store went away"):
        ft.finetune(training_pairs())
    if rollback_works:
        assert snapshot(lc_store) == before
    else:
        assert snapshot(lc_store) != before  # two batches landed, the rollback failed
    ft._adapter._write_batch = real  # the store is back
    ft.revert()
    assert snapshot(lc_store) == before


def test_nudge_m_is_refused_on_a_cosine_store(lc_store):
    with pytest.raises(MetricError, match="nudge-n"):
        NudgeEmbeddingFinetuner(lc_store, method="nudge-m")


def test_gamma_zero_writes_nothing(lc_store, tmp_path):
    before = snapshot(lc_store)
    ft = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st", gamma=0.0)
    ft.finetune(training_pairs())
    assert not ft.report.written and ft.report.n_moved == 0
    assert snapshot(lc_store) == before


def test_fixed_gamma_skips_validation(lc_store, tmp_path):
    ft = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st", gamma=0.2)
    ft.finetune(training_pairs())
    assert ft.report.n_val == 0 and ft.report.curve is None and ft.report.gamma == 0.2
    assert ft.report.n_moved == 20


def test_bad_inputs_raise_typed_errors(lc_store, tmp_path):
    ft = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st", gamma=0.1)
    with pytest.raises(DatasetError, match=r"train_queries: expected at least one query"):
        ft.finetune([])
    with pytest.raises(
        DatasetError, match=r"train_queries\[0\]: expected a \(query text, relevant ids"
    ):
        ft.finetune([("only text",)])
    with pytest.raises(AnswerError, match="not in the langchain-inmemory store"):
        ft.finetune([("q about topic1", ["no-such-id"])])
    with pytest.raises(UnsupportedStoreError, match="Supported stores"):
        NudgeEmbeddingFinetuner(object())
    with pytest.raises(ConfigError, match="method"):
        NudgeEmbeddingFinetuner(lc_store, method="nudge-x")
    wrong = NudgeEmbeddingFinetuner(
        lc_store,
        state_dir=tmp_path / "st2",
        gamma=0.1,
        embed_model=BagOfWordsEmbedder(dim=32).as_langchain(),
    )
    with pytest.raises(DimensionMismatchError, match="width 64 but the embedding model gives 32"):
        wrong.finetune(training_pairs())


def test_dataset_objects_are_accepted(lc_store, tmp_path):
    from nudge_rag.evaluation import QADataset

    pairs = training_pairs()
    ds = QADataset(
        queries={f"q{i}": t for i, (t, _) in enumerate(pairs)},
        corpus={f"d{i}": t for i, t in enumerate(texts())},
        relevant_docs={f"q{i}": ids for i, (_, ids) in enumerate(pairs)},
    )
    ds.save_json(tmp_path / "train.json")
    a = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "a", val_fraction=0.3)
    a.finetune(ds)
    moved_a = sorted(a.report.moved_ids)
    a.revert()
    b = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "b", val_fraction=0.3)
    b.finetune(str(tmp_path / "train.json"))
    assert sorted(b.report.moved_ids) == moved_a and moved_a


def test_afinetune_and_finetune_inside_a_running_loop(lc_store, tmp_path):
    async def main():
        ft = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st", val_fraction=0.3)
        r1 = await ft.afinetune(training_pairs(), similarity_top_k=2)
        # sync call from inside a loop, as in Jupyter
        r2 = ft.finetune(training_pairs(), similarity_top_k=2)
        return ft, r1, r2

    ft, r1, r2 = asyncio.run(main())
    assert ft.report.n_moved > 0
    assert len(r1.invoke("topic3")) == 2 and len(r2.invoke("topic3")) == 2


def test_llamaindex_index_gets_its_own_retriever(tmp_path):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import TextNode

    emb = BagOfWordsEmbedder(dim=64).as_llamaindex()
    nodes = [TextNode(text=t, id_=f"d{i}", metadata={"n": i}) for i, t in enumerate(texts())]
    index = VectorStoreIndex(nodes, embed_model=emb)
    vs = index.vector_store
    before = {k: list(v) for k, v in vs.data.embedding_dict.items()}
    ft = NudgeEmbeddingFinetuner(
        index, state_dir=tmp_path / "st", val_fraction=0.3, similarity_top_k=4
    )
    retriever = ft.finetune(training_pairs())
    assert isinstance(retriever, BaseRetriever)
    query, answer = training_pairs()[3]
    got = retriever.retrieve(query)
    assert len(got) == 4 and got[0].node.node_id == answer[0]
    assert got[0].node.metadata == {"n": int(answer[0][1:])}
    changed = sorted(k for k in before if before[k] != list(vs.data.embedding_dict[k]))
    assert changed == sorted(ft.report.moved_ids)
    ft.revert()
    assert {k: list(v) for k, v in vs.data.embedding_dict.items()} == before


def test_finetune_without_queries_generates_them_with_the_llm(lc_store, tmp_path):
    """A scripted async LLM writes questions from each chunk; finetune() trains on them."""
    import re

    calls = []

    async def llm(prompt: str) -> str:
        calls.append(prompt)
        m = re.search(r"topic(\d+)", prompt)
        d = int(m.group(1))
        return (
            f'["which note covers alpha{(d + 1) % 7} beta{(d + 2) % 5} and topic{d}?", '
            f'"where is topic{d} discussed with alpha{(d + 1) % 7}?"]'
        )

    before = snapshot(lc_store)
    # A sample of 20 of the 60 chunks is too small to measure what the 40 others lose: refused
    # before any LLM call (with method='nudge-n' nothing would bound that loss: refused too).
    for method in ("auto", "nudge-n"):
        with pytest.raises(ConfigError, match="max_chunks=20"):
            NudgeEmbeddingFinetuner(
                lc_store, llm=llm, state_dir=tmp_path / "st", max_chunks=20, method=method
            ).finetune()
    assert calls == [] and snapshot(lc_store) == before

    ft = NudgeEmbeddingFinetuner(
        lc_store,
        llm=llm,
        state_dir=tmp_path / "st",
        max_chunks=N_DOCS,  # a sample of all: no sampling
        query_cache=tmp_path / "q.jsonl",
    )
    ft.finetune()
    assert len(calls) == N_DOCS  # one call per chunk
    ds = ft.generated
    assert len(ds.queries) == 2 * N_DOCS and len(ds.relevant_docs) == 2 * N_DOCS
    assert ft.report.n_train + ft.report.n_val == 2 * N_DOCS
    # a second run resumes from the cache: no new LLM call
    NudgeEmbeddingFinetuner(
        lc_store,
        llm=llm,
        state_dir=tmp_path / "st",
        query_cache=tmp_path / "q.jsonl",
    ).finetune()
    assert len(calls) == N_DOCS


def test_finetune_without_queries_or_llm_uses_the_offline_generator(lc_store, tmp_path):
    before = snapshot(lc_store)
    ft = NudgeEmbeddingFinetuner(lc_store, state_dir=tmp_path / "st")
    retriever = ft.finetune(similarity_top_k=2)
    assert len(ft.generated.queries) > 0
    assert set(ft.generated.corpus) == set(before)
    assert retriever is not None
    assert ft.report.after is None or ft.report.after.ndcg >= ft.report.before.ndcg
    ft.revert()
    assert snapshot(lc_store) == before
