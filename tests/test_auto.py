"""``method="auto"`` (the default): the choice between NUDGE-N, a query-side adaptor, both and
nothing, the sentinel rule that protects records no question points to, and the adaptor path
through both frameworks' own retrievers (kept with the state, dropped by ``revert()``).

The data are synthetic and built so that the right answer is known:

* *distorted*: every question is its chunk's vector seen through one fixed linear distortion
  (plus noise). A second question about a trained chunk ("sister") is a new draw: NUDGE, which
  moves the chunk toward the first question, cannot help it; a query-side linear map can.
* *style*: every question carries one shared "question style" direction. Training questions
  cover only part of the store: NUDGE moves the covered chunks toward that direction, and
  questions about the other chunks then find covered chunks first. The sentinel rule must see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.core import QuerySet
from nudge_rag.core.choose import (
    MIN_SENTINELS,
    Pool,
    PoolAccumulator,
    choose,
    hold_out,
)
from nudge_rag.errors import ConfigError

K = 10


class TableEmbedder:
    """Texts to fixed vectors (documents and queries alike)."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.model_id = "table"

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Data:
    def __init__(
        self, docs: np.ndarray, questions: list[tuple[np.ndarray, int]], prefix: str = "d"
    ) -> None:
        self.ids = [f"{prefix}{i}" for i in range(len(docs))]
        self.texts = [f"chunk {i}" for i in range(len(docs))]
        self.docs = docs.astype(np.float32)
        self.q_texts = [f"question {j} about chunk {r}" for j, (_, r) in enumerate(questions)]
        self.q_vecs = np.stack([v for v, _ in questions]).astype(np.float32)
        self.q_doc = [r for _, r in questions]
        table = dict(zip(self.texts, self.docs, strict=True))
        table.update(zip(self.q_texts, self.q_vecs, strict=True))
        self.embedder = TableEmbedder(table)

    def pairs(self, js: Sequence[int]) -> list[tuple[str, list[str]]]:
        return [(self.q_texts[j], [self.ids[self.q_doc[j]]]) for j in js]

    def ndcg(self, retrieve: Any, js: Sequence[int]) -> float:
        """Mean NDCG@10 (one relevant chunk) of questions ``js`` through ``retrieve``."""
        out = []
        for j in js:
            got = retrieve(self.q_texts[j])[:K]
            want = self.ids[self.q_doc[j]]
            out.append(1.0 / np.log2(got.index(want) + 2) if want in got else 0.0)
        return float(np.mean(out))

    def exact(self, js: Sequence[int]) -> float:
        """The same with exact search over the original vectors (no fine-tuning)."""
        d = _unit(self.docs)
        top = np.argsort(-(self.q_vecs[list(js)] @ d.T), axis=1, kind="stable")[:, :K]
        out = []
        for j, row in zip(js, top, strict=True):
            hit = np.flatnonzero(row == self.q_doc[j])
            out.append(1.0 / np.log2(hit[0] + 2) if hit.size else 0.0)
        return float(np.mean(out))


def distorted(n: int = 240, d: int = 24, seed: int = 0) -> tuple[Data, list[int], list[int]]:
    """Two questions per chunk through one linear distortion; returns (data, train, test):
    the first question of every chunk trains, and the second of one chunk in eight; the other
    second questions test."""
    rng = np.random.default_rng(seed)
    docs = _unit(rng.normal(size=(n, d)))
    a = np.eye(d) + 3.0 * rng.normal(size=(d, d)) / np.sqrt(d)
    questions = []
    for r in range(n):
        for _ in range(2):
            questions.append((_unit(a @ docs[r] + 0.5 * rng.normal(size=d) / np.sqrt(d)), r))
    both = set(rng.choice(n, n // 8, replace=False).tolist())
    train = [2 * r for r in range(n)] + [2 * r + 1 for r in sorted(both)]
    test = [2 * r + 1 for r in range(n) if r not in both]
    return Data(docs, questions), train, test


def styled(
    n_a: int = 300, n_b: int = 150, d: int = 24, seed: int = 0
) -> tuple[Data, list[int], list[int]]:
    """Chunks A (with training questions) and B (none); every question = its chunk + a shared
    style direction + noise. Returns (data, A's questions, B's questions)."""
    rng = np.random.default_rng(seed)
    docs = _unit(rng.normal(size=(n_a + n_b, d)))
    style = _unit(rng.normal(size=d))
    questions = []
    for r in range(n_a + n_b):
        for _ in range(2):
            noise = 0.6 * rng.normal(size=d) / np.sqrt(d)
            questions.append((_unit(docs[r] + 0.9 * style + noise), r))
    a_qs = [j for j, (_, r) in enumerate(questions) if r < n_a]
    b_qs = [j for j, (_, r) in enumerate(questions) if r >= n_a]
    return Data(docs, questions), a_qs, b_qs


def langchain_store(data: Data) -> Any:
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag.integrations.langchain import as_langchain_embeddings

    store = InMemoryVectorStore(as_langchain_embeddings(data.embedder))
    store.add_texts(data.texts, ids=data.ids)
    return store


def llamaindex_index(data: Data) -> Any:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

    nodes = [
        TextNode(id_=i, text=t, embedding=[float(x) for x in v])
        for i, t, v in zip(data.ids, data.texts, data.docs, strict=True)
    ]
    ctx = StorageContext.from_defaults(vector_store=SimpleVectorStore())
    return VectorStoreIndex(
        nodes, storage_context=ctx, embed_model=as_llamaindex_embedding(data.embedder)
    )


def lc_ids(retriever: Any) -> Any:
    return lambda text: [d.id for d in retriever.invoke(text)]


def li_ids(retriever: Any) -> Any:
    return lambda text: [n.node.node_id for n in retriever.retrieve(text)]


# ---------------------------------------------------------------------------------------------
# The held-out split and the pool (core)
# ---------------------------------------------------------------------------------------------
def test_hold_out_takes_sentinels_only_when_records_lack_questions() -> None:
    data, a_qs, _ = styled()
    qs = QuerySet(data.q_vecs[a_qs], [[data.q_doc[j]] for j in a_qs])
    none = hold_out(qs, uncovered_share=0.0)
    assert len(none.sentinels) == 0 and none.sentinel_rows.size == 0
    assert len(none.train) + len(none.val) == len(qs)

    h = hold_out(qs, uncovered_share=0.33)
    sent = set(h.sentinel_rows.tolist())
    assert len(sent) == round(0.1 * 300)
    assert len(h.sentinels) >= MIN_SENTINELS
    # every sentinel question is about sentinel records only; training never names one
    assert all(set(h.sentinels.answer_rows(j).tolist()) <= sent for j in range(len(h.sentinels)))
    assert not sent & set(h.train.rows.tolist())
    # validation questions are covered: each of their records keeps a training question
    assert set(h.val.rows.tolist()) <= set(h.train.rows.tolist())
    assert len(h.train) + len(h.val) + len(h.sentinels) == len(qs)


def test_hold_out_names_too_few_sentinels() -> None:
    data, a_qs, _ = styled(n_a=60)
    qs = QuerySet(data.q_vecs[a_qs], [[data.q_doc[j]] for j in a_qs])
    h = hold_out(qs, uncovered_share=0.5)  # 6 sentinel records: 12 questions < 20
    assert len(h.sentinels) == 0 and h.sentinel_rows.size == 0
    assert "12 held-out question(s)" in h.note


def test_pool_keeps_each_querys_best_records_across_pages() -> None:
    rng = np.random.default_rng(3)
    recs = _unit(rng.normal(size=(500, 8))).astype(np.float32)
    q = _unit(rng.normal(size=(7, 8))).astype(np.float32)
    acc = PoolAccumulator(q, 16)
    for s in range(0, 500, 64):
        acc.update(recs[s : s + 64])
    pool = acc.result()
    got = np.sort(pool.scores(q), axis=1)[:, ::-1]
    want = np.sort(q @ recs.T, axis=1)[:, ::-1][:, :16]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # a query's pool scored with another vector: the same records, rescored
    q2 = _unit(q + 0.1)
    np.testing.assert_allclose(
        np.sort(pool.scores(q2), axis=1),
        np.sort(np.einsum("hd,hpd->hp", q2, pool.vectors), axis=1),
        rtol=1e-6,
    )


def _pool_for(data: Data, held: QuerySet, fitted: np.ndarray) -> Pool:
    others = np.setdiff1d(np.arange(len(data.docs)), fitted)
    acc = PoolAccumulator(held.embeddings, 64)
    acc.update(_unit(data.docs[others]))
    return acc.result()


def test_sentinel_rule_rejects_nudge_that_costs_untrained_records() -> None:
    data, a_qs, _ = styled()
    fitted = np.arange(300)
    qs = QuerySet(data.q_vecs[a_qs], [[data.q_doc[j]] for j in a_qs])
    h = hold_out(qs, uncovered_share=1 / 3)
    pool = _pool_for(data, h.held, fitted)
    recs = _unit(data.docs[fitted])
    free = choose(recs, h, pool, adaptor=False, max_sentinel_loss=9.0)
    bound = choose(recs, h, pool, adaptor=False)
    assert free.chosen.kind == "nudge-n"  # validation alone wants NUDGE ...
    loss, se = free.chosen.sentinel_loss(free.baseline)
    assert loss - se > 0.005  # ... which costs the sentinels more than the bound
    assert bound.sentinel_rule
    if bound.chosen.kind != "none":
        b_loss, b_se = bound.chosen.sentinel_loss(bound.baseline)
        assert b_loss - b_se <= 0.005 + 1e-12
        assert bound.chosen.gamma < free.chosen.gamma
    assert "would cost the held-out questions about untrained records" in bound.note


# ---------------------------------------------------------------------------------------------
# Through the finetuner
# ---------------------------------------------------------------------------------------------
def test_auto_protects_records_no_question_points_to(tmp_path: Any) -> None:
    """Train on A's questions only: B's questions must not lose more than the bound (+ noise),
    where plain NUDGE-N loses much more."""
    data, a_qs, b_qs = styled()
    base_b = data.exact(b_qs)
    rng = np.random.default_rng(0)
    train = sorted(rng.permutation(a_qs)[: len(a_qs)].tolist())

    plain_store = langchain_store(data)
    plain = NudgeEmbeddingFinetuner(plain_store, method="nudge-n", state_dir=tmp_path / "n")
    r = plain.finetune(data.pairs(train), similarity_top_k=K)
    nudge_b = data.ndcg(lc_ids(r), b_qs)

    store = langchain_store(data)
    ft = NudgeEmbeddingFinetuner(store, state_dir=tmp_path / "auto")
    r = ft.finetune(data.pairs(train), similarity_top_k=K)
    auto_b = data.ndcg(lc_ids(r), b_qs)
    rep = ft.report
    assert rep is not None and rep.method == "auto" and rep.chosen
    assert rep.sentinel_loss  # the rule was measured
    assert nudge_b < base_b - 0.02  # the harm is real
    assert auto_b >= base_b - 0.01, (rep.summary(), base_b, auto_b, nudge_b)


@pytest.mark.parametrize("framework", ["langchain", "llamaindex"])
def test_auto_adaptor_helps_sister_questions_in_the_frameworks_retriever(
    framework: str, tmp_path: Any
) -> None:
    data, train, test = distorted()
    if framework == "langchain":
        store = langchain_store(data)
        ids_of = lc_ids
        plain = lambda: store.as_retriever(search_kwargs={"k": K})  # noqa: E731
    else:
        store = llamaindex_index(data)
        ids_of = li_ids
        plain = lambda: store.as_retriever(similarity_top_k=K)  # noqa: E731
    before_vectors = {i: v.copy() for i, v in zip(data.ids, data.docs, strict=True)}
    base = data.ndcg(ids_of(plain()), test)
    assert base == pytest.approx(data.exact(test), abs=1e-9)

    ft = NudgeEmbeddingFinetuner(store, state_dir=tmp_path / "state")
    retriever = ft.finetune(data.pairs(train), similarity_top_k=K)
    rep = ft.report
    assert rep is not None and rep.adaptor and rep.chosen.startswith("adaptor"), rep.summary()
    if framework == "langchain":
        from langchain_core.vectorstores import VectorStoreRetriever

        assert isinstance(retriever, VectorStoreRetriever)
        assert retriever.vectorstore is not store  # a copy that embeds through the adaptor
    else:
        from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever

        assert isinstance(retriever, VectorIndexRetriever)
    tuned = data.ndcg(ids_of(retriever), test)
    assert tuned > base + 0.03, (rep.summary(), base, tuned)
    # the store's own retriever is untouched by the adaptor; a new finetuner on the same state
    # (a restart) hands back the adapted retriever again
    if rep.n_moved == 0:
        assert data.ndcg(ids_of(plain()), test) == pytest.approx(base, abs=1e-12)
    again = NudgeEmbeddingFinetuner(store, state_dir=tmp_path / "state")
    adaptor = again.adaptor()
    assert adaptor is not None
    assert data.ndcg(ids_of(again.retriever(K)), test) == pytest.approx(tuned, abs=1e-12)

    back = again.revert()
    assert back.adaptor_dropped and back.ok
    assert again.adaptor() is None
    assert data.ndcg(ids_of(again.retriever(K)), test) == pytest.approx(base, abs=1e-12)
    from nudge_rag.stores import adapter_for

    page = adapter_for(store).get(data.ids)
    for i, v in zip(page.ids, page.embeddings, strict=True):
        np.testing.assert_array_equal(np.asarray(v, np.float32), before_vectors[i])


def test_auto_with_few_questions_is_plain_nudge(tmp_path: Any) -> None:
    """Below the adaptor's minimum and with every record covered, auto chooses among NUDGE-N's
    γ values and nothing, and never keeps an adaptor."""
    data, train, _test = distorted(n=40)
    store = langchain_store(data)
    ft = NudgeEmbeddingFinetuner(store, state_dir=tmp_path / "s")
    ft.finetune(data.pairs(train), similarity_top_k=K)
    rep = ft.report
    assert rep is not None and not rep.adaptor and ft.adaptor() is None
    assert set(rep.candidates) <= {"nothing"} | {
        n for n in rep.candidates if n.startswith("NUDGE-N")
    }


def test_update_refits_with_nudge_and_replaces_the_adaptor(tmp_path: Any) -> None:
    """Feedback refits are NUDGE-N (robust to wrong confirmations): an adaptor an earlier
    finetune() chose is dropped by the refit, and the report says NUDGE-N ran."""
    data, train, _ = distorted()
    store = langchain_store(data)
    ft = NudgeEmbeddingFinetuner(store, state_dir=tmp_path / "s")
    ft.finetune(data.pairs(train), similarity_top_k=K)
    assert ft.report is not None and ft.report.adaptor and ft.adaptor() is not None
    for text, ids in data.pairs(train):
        ft.record(text, ids)
    retriever = ft.update(similarity_top_k=K)
    rep = ft.report
    assert rep is not None and rep.method == "nudge-n" and not rep.adaptor and not rep.chosen
    assert ft.adaptor() is None
    assert retriever is not None and retriever.vectorstore is store  # no adapted copy
    with pytest.raises(ConfigError, match="method"):
        ft.finetune(data.pairs(train), method="nudge-m")  # the store was not checked for it


def test_a_damaged_adaptor_is_an_error_not_another_retriever(tmp_path: Any) -> None:
    from nudge_rag.errors import StateError
    from nudge_rag.session import ADAPTOR_FILE
    from nudge_rag.state import FinetuneState

    data, train, _ = distorted()
    store = langchain_store(data)
    ft = NudgeEmbeddingFinetuner(store, state_dir=tmp_path / "s")
    ft.finetune(data.pairs(train), similarity_top_k=K)
    assert ft.report is not None and ft.report.adaptor
    state = FinetuneState.load(tmp_path / "s")
    assert state is not None and state.has(ADAPTOR_FILE)
    path = state.generation / ADAPTOR_FILE
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # one bit pattern of the weight changed
    path.write_bytes(bytes(blob))
    with pytest.raises(StateError, match=r"adaptor\.npy does not match its digest"):
        ft.adaptor()
    with pytest.raises(StateError, match="digest"):
        ft.retriever(K)
