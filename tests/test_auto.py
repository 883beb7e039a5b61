"""``method="auto"`` (the default): the choice between NUDGE-N, a query-side adaptor, both and
nothing over several folds (a more complex candidate must win by more than the noise), the bound
that protects records no question points to (measured on pseudo-questions about those records),
and the adaptor path through both frameworks' own retrievers (kept with the state, dropped by
``revert()``).

The data are synthetic and built so that the right answer is known:

* *distorted*: every question is its chunk's vector seen through one fixed linear distortion
  (plus noise). A second question about a trained chunk ("sister") is a new draw: NUDGE, which
  moves the chunk toward the first question, cannot help it; a query-side linear map can.
* *style*: every question carries one shared "question style" direction. Training questions
  cover only part of the store: NUDGE moves the covered chunks toward that direction, and
  questions about the other chunks then find covered chunks first. The bound must see it.
* *echo*: every chunk has three near-copies of one question: NUDGE-N, which moves the chunk
  toward them, wins; *exact*: every question is its chunk's own vector, already ranked first:
  nothing can win.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.core import QuerySet
from nudge_rag.core.choose import (
    N_FOLDS,
    Choice,
    Folds,
    PoolAccumulator,
    choose,
    make_folds,
)
from nudge_rag.errors import ConfigError

K = 10


def tag(i: int) -> str:
    """A word naming chunk ``i`` (the offline generator keeps it: it is the most salient)."""
    return "zeta" + "".join(chr(97 + int(x)) for x in str(i))


TAG = re.compile(r"zeta([a-j]+)")


class TableEmbedder:
    """Texts to fixed vectors (documents and queries alike); a text naming a chunk's tag (a
    pseudo-question the finetuner wrote from the chunk's words) gets ``probe[chunk]``."""

    def __init__(self, table: dict[str, np.ndarray], probe: np.ndarray | None = None) -> None:
        self.table = table
        self.probe = probe
        self.model_id = "table"
        self.asked: list[str] = []

    def vector(self, text: str) -> np.ndarray:
        if text in self.table:
            return self.table[text]
        m = TAG.search(text)
        assert m is not None and self.probe is not None, text
        self.asked.append(text)
        return self.probe[int("".join(str(ord(ch) - 97) for ch in m.group(1)))]

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Data:
    def __init__(
        self,
        docs: np.ndarray,
        questions: list[tuple[np.ndarray, int]],
        prefix: str = "d",
        probe: np.ndarray | None = None,
    ) -> None:
        self.ids = [f"{prefix}{i}" for i in range(len(docs))]
        self.texts = [f"Chunk {i} explains {tag(i)} thoroughly." for i in range(len(docs))]
        self.docs = docs.astype(np.float32)
        self.q_texts = [f"question {j} about chunk {r}" for j, (_, r) in enumerate(questions)]
        self.q_vecs = np.stack([v for v, _ in questions]).astype(np.float32)
        self.q_doc = [r for _, r in questions]
        table = dict(zip(self.texts, self.docs, strict=True))
        table.update(zip(self.q_texts, self.q_vecs, strict=True))
        self.embedder = TableEmbedder(table, probe)

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


def distorted(
    n: int = 240, d: int = 24, seed: int = 0, noise: float = 0.5
) -> tuple[Data, list[int], list[int]]:
    """Two questions per chunk through one linear distortion; returns (data, train, test):
    the first question of every chunk trains, and the second of one chunk in eight; the other
    second questions test."""
    rng = np.random.default_rng(seed)
    docs = _unit(rng.normal(size=(n, d)))
    a = np.eye(d) + 3.0 * rng.normal(size=(d, d)) / np.sqrt(d)
    questions = []
    for r in range(n):
        for _ in range(2):
            questions.append((_unit(a @ docs[r] + noise * rng.normal(size=d) / np.sqrt(d)), r))
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
    # what a question written from a chunk's words looks like here: a third draw
    probe = _unit(docs + 0.9 * style + 0.6 * rng.normal(size=docs.shape) / np.sqrt(d))
    a_qs = [j for j, (_, r) in enumerate(questions) if r < n_a]
    b_qs = [j for j, (_, r) in enumerate(questions) if r >= n_a]
    return Data(docs, questions, probe=probe), a_qs, b_qs


def echo(n: int = 150, d: int = 24, seed: int = 0) -> tuple[Data, list[int], list[int]]:
    """Every chunk has four near-copies of one question (far from the chunk itself): three
    train, one tests. NUDGE-N moves the chunk toward them, and wins."""
    rng = np.random.default_rng(seed)
    docs = _unit(rng.normal(size=(n, d)))
    questions = []
    for r in range(n):
        centre = _unit(docs[r] + 1.2 * _unit(rng.normal(size=d)))
        for _ in range(4):
            questions.append((_unit(centre + 0.05 * rng.normal(size=d)), r))
    train = [j for j in range(len(questions)) if j % 4 != 3]
    test = [j for j in range(len(questions)) if j % 4 == 3]
    return Data(docs, questions), train, test


def exact(n: int = 150, d: int = 24, seed: int = 0) -> tuple[Data, list[int]]:
    """Every question (three per chunk) is its chunk's own vector: already ranked first."""
    rng = np.random.default_rng(seed)
    docs = _unit(rng.normal(size=(n, d)))
    questions = [(docs[r], r) for r in range(n) for _ in range(3)]
    return Data(docs, questions), list(range(len(questions)))


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
# The folds, the pool and the pick (core)
# ---------------------------------------------------------------------------------------------
def core_choice(
    data: Data,
    js: Sequence[int],
    *,
    probe_rows: Sequence[int] = (),
    seed: int = 0,
    adaptor: bool = True,
    **kw: Any,
) -> tuple[Choice, Folds]:
    """:func:`choose` as the finetuner runs it: questions ``js`` answer the fitted records (their
    chunks, then the chunks of ``probe_rows``, which get one probe each); every other chunk is in
    the pool."""
    fitted = sorted({data.q_doc[j] for j in js})
    extra = [r for r in probe_rows if r not in set(fitted)]
    rows = fitted + extra
    pos = {r: i for i, r in enumerate(rows)}
    qs = QuerySet(data.q_vecs[list(js)], [[pos[data.q_doc[j]]] for j in js], n_records=len(rows))
    probes = None
    if extra:
        assert data.embedder.probe is not None
        probes = QuerySet(
            data.embedder.probe[extra].astype(np.float32),
            [[pos[r]] for r in extra],
            n_records=len(rows),
        )
    folds = make_folds(
        qs, probes=probes, untrained_share=1 - len(fitted) / len(data.docs), seed=seed
    )
    others = np.setdiff1d(np.arange(len(data.docs)), rows)
    acc = PoolAccumulator(folds.held.embeddings, 40)
    acc.update(_unit(data.docs[others]))
    return choose(_unit(data.docs[rows]), folds, acc.result(), adaptor=adaptor, **kw), folds


def test_folds_are_covered_splits_seeded_from_the_seed() -> None:
    data, train, _ = echo()
    qs = QuerySet(data.q_vecs[train], [[data.q_doc[j]] for j in train])
    a = make_folds(qs, seed=3)
    b = make_folds(qs, seed=3)
    assert len(a.splits) == N_FOLDS
    for (ta, va), (_tb, vb) in zip(a.splits, b.splits, strict=True):
        np.testing.assert_array_equal(va, vb)  # the same seed, the same folds
        assert va.size == round(0.2 * len(qs)) and ta.size + va.size == len(qs)
        # covered: every record a validation question answers keeps a training question
        assert set(qs.subset(va).rows.tolist()) <= set(qs.subset(ta).rows.tolist())
    assert not np.array_equal(a.splits[0][1], a.splits[1][1])  # the folds differ
    assert a.held_idx.tolist() == sorted(set(np.concatenate([v for _, v in a.splits]).tolist()))
    assert len(a.probes) == 0 and not a.probe_rule


def test_too_few_probes_are_named() -> None:
    data, a_qs, _ = styled()
    qs = QuerySet(data.q_vecs[a_qs], [[data.q_doc[j]] for j in a_qs])
    f = make_folds(qs, untrained_share=0.33)
    assert not f.probe_rule
    assert "only 0 pseudo-question(s)" in f.note


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
    # some of the questions only
    np.testing.assert_allclose(pool.scores(q2[[1, 4]], np.array([1, 4])), pool.scores(q2)[[1, 4]])


def test_nudge_wins_when_questions_repeat() -> None:
    data, train, _ = echo()
    ch, _ = core_choice(data, train)
    assert ch.chosen.kind == "nudge-n", [s.describe() for s in ch.steps]
    assert ch.chosen.gamma > 0 and ch.chosen.val_ndcg > 0.95
    # it won over nothing by far more than the noise, on the mean of every fold
    assert ch.steps[0].taken and ch.margin > 0.05 and ch.margin > 5 * ch.noise
    assert ch.chosen.val_ndcg == pytest.approx(ch.baseline.val_ndcg + ch.margin)
    assert ch.n_folds == N_FOLDS


def test_adaptor_wins_on_distorted_questions() -> None:
    """Sister questions through a shared distortion with heavy noise: NUDGE-N moves each chunk
    toward one noisy draw; the adaptor learns the distortion and, with NUDGE-N on the adapted
    questions, wins over NUDGE-N alone by more than the noise."""
    data, train, _ = distorted(n=320, noise=2.0)
    ch, _ = core_choice(data, train)
    assert ch.chosen.kind == "adaptor+nudge-n", [s.describe() for s in ch.steps]
    assert ch.steps[0].taken and ch.steps[0].challenger.startswith("NUDGE-N")
    last = ch.steps[-1]
    assert last.taken and last.challenger == ch.chosen.name and last.incumbent.startswith("NUDGE")
    assert ch.margin == last.margin and ch.margin > 0.04 and ch.margin > 2 * ch.noise
    assert len(ch.chosen.weights) == 1  # the adaptor is trained on the first fold


def test_nothing_wins_when_every_question_already_finds_its_chunk() -> None:
    data, train = exact()
    ch, _ = core_choice(data, train)
    assert ch.baseline.val_ndcg == pytest.approx(1.0)
    assert ch.chosen.kind == "none" and ch.margin == 0.0
    assert all(not s.taken for s in ch.steps)


def test_the_bound_rejects_nudge_that_costs_untrained_records() -> None:
    """Train on A's questions only; probes about B say what B loses, and the bound holds."""
    data, a_qs, b_qs = styled()
    b_rows = sorted({data.q_doc[j] for j in b_qs})
    free, _ = core_choice(data, a_qs, probe_rows=b_rows, adaptor=False, max_untrained_loss=9.0)
    bound, folds = core_choice(data, a_qs, probe_rows=b_rows, adaptor=False)
    assert folds.probe_rule and len(folds.probes) == len(b_rows) == 150
    assert bound.untrained_share == pytest.approx(1 / 3)
    # validation alone wants NUDGE, which would cost B's records more than a point
    assert free.chosen.kind == "nudge-n"
    loss, _ = free.chosen.sentinel_loss(free.baseline)
    assert loss > 0.01
    # with the bound: what is applied keeps B's estimated loss within 0.5 point
    change, se = bound.untrained
    assert change >= -0.005 - 1e-12 and se >= 0.0
    assert bound.chosen.kind == "none" or bound.chosen.gamma < free.chosen.gamma
    assert "would cost questions about untrained records" in bound.note


def test_two_seeds_pick_the_same_candidate_when_one_dominates() -> None:
    for data, train in (echo()[:2], distorted(n=320, noise=2.0)[:2]):
        picks = [core_choice(data, train, seed=s)[0].chosen for s in (0, 1)]
        assert picks[0].kind == picks[1].kind, [p.name for p in picks]
        if picks[0].kind == "nudge-n":
            assert abs(picks[0].gamma - picks[1].gamma) <= 0.1


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
    assert rep.sentinel_loss  # the bound was measured ...
    # ... on one pseudo-question per untrained chunk, written from its own words
    assert rep.n_probes == 150 and len(data.embedder.asked) == 150
    assert rep.untrained_share == pytest.approx(150 / 450) and rep.untrained_bound
    assert nudge_b < base_b - 0.02  # the harm is real
    assert auto_b >= base_b - 0.01, (rep.summary(), base_b, auto_b, nudge_b)
    # the estimate is honest: not more optimistic than what B's real questions measure by
    assert rep.untrained_change is not None and rep.untrained_se is not None
    # more than a point plus the noise of 150 probes
    tol = 0.01 + 2 * rep.untrained_se
    assert rep.untrained_change <= (auto_b - base_b) + tol, (rep.summary(), auto_b - base_b)
    assert "records no question points to" in rep.summary()


@pytest.mark.parametrize("framework", ["langchain", "llamaindex"])
def test_auto_adaptor_helps_sister_questions_in_the_frameworks_retriever(
    framework: str, tmp_path: Any
) -> None:
    data, train, test = distorted(n=320, noise=2.0)
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
    data, train, _ = distorted(n=320, noise=2.0)
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

    data, train, _ = distorted(n=320, noise=2.0)
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
