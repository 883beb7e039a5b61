"""Learning from use: ft.record / import_feedback / update, and the retrieval handlers of both
frameworks (real LangChain and LlamaIndex retrievers, no LLM needed)."""

from __future__ import annotations

import numpy as np
import pytest
from topics import N, questions, texts

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.errors import ConfigError
from nudge_rag.testing import BagOfWordsEmbedder


def vectors(store) -> dict[str, list[float]]:
    return {k: list(v["vector"]) for k, v in store.store.items()}


def test_record_then_update_refits_from_the_originals(lc_topics):
    original = vectors(lc_topics)
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="faq", gamma=0.2)
    with pytest.raises(ConfigError, match="no confirmed record yet"):
        ft.update()
    for q, ids in questions()[:16]:
        ft.record(q, ids, source="chat")
    ft.update()
    first = ft.report
    assert first is not None and first.n_train == 16 and first.n_moved == 16
    assert first.n_written == 16
    for q, ids in questions()[16:]:
        ft.record(q, ids)
    ft.record(*questions()[0])  # a repeat collapses
    assert len(ft.feedback) == 32
    ft.update()
    second = ft.report
    assert second is not None and second.n_train == 32
    assert second.adopted_ids == []  # started from the originals, not from moved vectors
    # the refit equals a fit from scratch on the same 32 confirmations
    fresh_store = type(lc_topics).from_texts(
        texts(), BagOfWordsEmbedder(dim=64).as_langchain(), ids=[f"d{i}" for i in range(N)]
    )
    NudgeEmbeddingFinetuner(fresh_store, store_id="fresh", gamma=0.2).finetune(questions())
    assert vectors(lc_topics) == vectors(fresh_store)
    ft.revert()
    assert vectors(lc_topics) == original


def test_an_update_with_nothing_new_writes_nothing(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="faq2", gamma=0.2)
    ft.import_feedback(questions())
    ft.update()
    assert ft.report is not None and ft.report.n_written == ft.report.n_moved > 0
    ft.update()  # same feedback, same γ: every record already holds its vector
    assert ft.report.n_moved > 0 and ft.report.n_written == 0


def test_the_feedback_log_survives_a_restart(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="faq3")
    ft.record("where is topic3?", ["d3"], grade=2.0)
    again = NudgeEmbeddingFinetuner(lc_topics, store_id="faq3")
    assert again.feedback.training_pairs() == [("where is topic3?", {"d3": 2.0})]
    other = NudgeEmbeddingFinetuner(lc_topics, store_id="another")
    assert len(other.feedback) == 0  # one log per store


def test_langchain_handler_logs_what_the_retriever_showed(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="faq4", gamma=0.2)
    handler = ft.feedback_handler()
    retriever = lc_topics.as_retriever(search_kwargs={"k": 3})
    docs = retriever.invoke("question alpha2 topic1", config={"callbacks": [handler]})
    shown = [d.id for d in docs]
    entries = ft.feedback.entries()
    assert len(entries) == 1
    assert entries[0].query == "question alpha2 topic1" and list(entries[0].shown) == shown
    assert entries[0].source == "langchain"
    assert ft.feedback.training_pairs() == []  # impressions alone teach nothing
    ft.record("question alpha2 topic1", [shown[-1]], shown=shown)
    assert ft.feedback.training_pairs() == [("question alpha2 topic1", {shown[-1]: 1.0})]


def test_llamaindex_handler_logs_every_retrieval():
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.schema import TextNode

    emb = BagOfWordsEmbedder(dim=64)
    nodes = [TextNode(id_=f"d{i}", text=t) for i, t in enumerate(texts())]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(), embed_model=emb.as_llamaindex()
    )
    ft = NudgeEmbeddingFinetuner(index, store_id="li-faq", gamma=0.2)
    handler = ft.feedback_handler()
    try:
        got = index.as_retriever(similarity_top_k=3).retrieve("question alpha2 topic1")
    finally:
        get_dispatcher().event_handlers.remove(handler)
    entries = ft.feedback.entries()
    assert len(entries) == 1
    assert list(entries[0].shown) == [n.node.node_id for n in got]
    for q, ids in questions():
        ft.record(q, ids)
    ft.update()
    assert ft.report is not None and ft.report.n_moved > 0
    moved = ft.report.moved_ids[0]
    assert not np.allclose(
        index.vector_store.data.embedding_dict[moved], emb.embed_one(texts()[int(moved[1:])])
    )
