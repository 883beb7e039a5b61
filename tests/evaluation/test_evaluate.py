"""evaluate(): agreement with pytrec_eval and LlamaIndex's RetrieverEvaluator, every retriever and
dataset kind, empty retrievals, bounded concurrency, typed errors, compare()."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from beir_files import write_beir_folder

from nudge_rag.errors import ConfigError, DatasetError, NudgeError
from nudge_rag.evaluation import (
    Comparison,
    EvaluationResult,
    JudgedQueries,
    QADataset,
    aevaluate,
    compare,
    evaluate,
    llamaindex_retriever_evaluator,
)
from nudge_rag.testing import BagOfWordsEmbedder

# ------------------------------------------------------------------ helpers


def fixed(runs: dict[str, list[str]]):
    """A callable retriever returning a fixed ranked list per query text."""
    return lambda q: list(runs[q])


def random_case(seed: int, n_queries: int = 60, n_docs: int = 40, max_len: int = 15):
    """Graded judgements (0..3, at least one > 0) and rankings of distinct docs, some empty."""
    rng = np.random.default_rng(seed)
    pairs, runs = [], {}
    for qi in range(n_queries):
        n_judged = int(rng.integers(1, 8))
        judged = rng.choice(n_docs, size=n_judged, replace=False)
        grades = rng.integers(0, 4, size=n_judged)
        grades[0] = max(int(grades[0]), 1)
        text = f"query {qi}"
        pairs.append((text, {f"d{d}": int(g) for d, g in zip(judged, grades, strict=True)}))
        length = 0 if qi % 9 == 0 else int(rng.integers(1, max_len + 1))
        runs[text] = [f"d{d}" for d in rng.permutation(n_docs)[:length]]
    return pairs, runs


# ------------------------------------------------------------------ pytrec_eval


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_graded_ndcg_at_10_agrees_with_pytrec_eval(seed: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    pairs, runs = random_case(seed)
    res = evaluate(fixed(runs), pairs, k=10)

    qrels = {f"q{i}": {d: int(g) for d, g in rel.items()} for i, (_, rel) in enumerate(pairs)}
    run = {
        f"q{i}": {d: float(len(runs[t]) - r) for r, d in enumerate(runs[t])}
        for i, (t, _) in enumerate(pairs)
    }
    cut = {
        f"q{i}": {d: float(10 - r) for r, d in enumerate(runs[t][:10])}
        for i, (t, _) in enumerate(pairs)
    }
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10"}).evaluate(run)
    ref_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    qids = list(res.query_ids)
    assert qids == [f"q{i}" for i in range(len(pairs))]
    np.testing.assert_allclose(res.per_query.ndcg, [ref[q]["ndcg_cut_10"] for q in qids], atol=1e-9)
    np.testing.assert_allclose(res.per_query.recall, [ref[q]["recall_10"] for q in qids], atol=1e-9)
    np.testing.assert_allclose(
        res.per_query.mrr, [ref_rr[q]["recip_rank"] for q in qids], atol=1e-9
    )
    assert res.ndcg == pytest.approx(np.mean([ref[q]["ndcg_cut_10"] for q in qids]), abs=1e-12)
    # graded: the same rankings with binary grades give a different NDCG
    binary = [(t, [d for d, g in rel.items() if g > 0]) for t, rel in pairs]
    assert evaluate(fixed(runs), binary, k=10).ndcg != pytest.approx(res.ndcg, abs=1e-6)
    assert 0 < res.ndcg < 1 and res.n_empty == sum(1 for r in runs.values() if not r) > 0


def test_hand_computed_values_and_result_shape() -> None:
    runs = {"a": ["d2", "d3", "x"], "b": ["x", "y"], "c": []}
    data = [("a", {"d1": 2, "d2": 0, "d3": 1}), ("b", ["y"]), ("c", ["z"])]
    res = evaluate(fixed(runs), data, k=2, name="base")
    # a: DCG = 1/log2(3); IDCG = 2 + 1/log2(3)
    idcg = 2 + 1 / np.log2(3)
    np.testing.assert_allclose(res.per_query.ndcg, [(1 / np.log2(3)) / idcg, 1 / np.log2(3), 0])
    np.testing.assert_allclose(res.per_query.recall, [0.5, 1, 0])
    np.testing.assert_allclose(res.per_query.mrr, [0.5, 0.5, 0])
    np.testing.assert_allclose(res.per_query.hit, [1, 1, 0])
    assert res.mrr == pytest.approx(1 / 3) and res.hit_rate == pytest.approx(2 / 3)
    assert res.query_ids == ("q0", "q1", "q2") and res.k == 2 and res.n_empty == 1
    assert res.retrieved == (("d2", "d3", "x"), ("x", "y"), ())
    assert tuple(res.means) == (res.ndcg, res.recall, res.mrr, res.hit_rate)
    assert res.metrics() == {
        "ndcg@2": res.ndcg,
        "recall@2": 0.5,
        "mrr@2": pytest.approx(1 / 3),
        "hit_rate@2": pytest.approx(2 / 3),
    }
    text = res.summary()
    assert "base: 3 queries, k=2 (1 empty retrievals)" in text
    assert re.search(r"^  MRR@2\s+0\.3333$", text, re.M)
    d = res.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["per_query"]["retrieved"][2] == [] and d["metrics"]["recall@2"] == 0.5
    assert "per_query" not in res.to_dict(per_query=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.k = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        res.per_query.ndcg[0] = 1.0


# ------------------------------------------------------------------ frameworks

N_DOCS = 36
WORDS = [
    "river", "mountain", "forest", "desert", "ocean", "valley", "island", "glacier", "canyon",
    "meadow", "volcano", "lagoon",
]  # fmt: skip


def _texts() -> tuple[dict[str, str], dict[str, str]]:
    """Documents made of a few shared words with random counts, and queries made of two words
    of their answer plus two random ones (so some queries miss). Seed 13 leaves no tie among the
    top 7 scores of any query (checked below), so both frameworks must rank identically."""
    rng = np.random.default_rng(13)
    docs, queries = {}, {}
    for i in range(N_DOCS):
        ws = rng.choice(12, size=5, replace=False)
        counts = rng.integers(1, 8, size=5)
        docs[f"doc{i}"] = " ".join(
            " ".join([WORDS[w]] * c) for w, c in zip(ws, counts, strict=True)
        )
        docs[f"doc{i}"] += f" item{i}"
        other = rng.choice(12, size=2)
        words = [WORDS[ws[0]], WORDS[ws[0]], WORDS[ws[1]], WORDS[other[0]], WORDS[other[1]]]
        queries[f"q{i}"] = " ".join(words)
    return docs, queries


def corpus() -> dict[str, str]:
    return _texts()[0]


def qa_dataset() -> QADataset:
    docs, queries = _texts()
    rel = {
        f"q{i}": [f"doc{i}"] + ([f"doc{(i + 12) % N_DOCS}"] if i % 4 == 0 else [])
        for i in range(N_DOCS)
    }
    return QADataset(queries=queries, corpus=docs, relevant_docs=rel)


def test_test_corpus_has_no_ties() -> None:
    docs, queries = _texts()
    emb = BagOfWordsEmbedder(dim=256)
    scores = (
        emb.embed(list(queries.values())).astype(float)
        @ emb.embed(list(docs.values())).astype(float).T
    )
    top = -np.sort(-scores, axis=1)[:, :7]
    assert np.min(-np.diff(top, axis=1)) > 1e-5


@pytest.fixture(scope="module")
def embedder() -> BagOfWordsEmbedder:
    return BagOfWordsEmbedder(dim=256)


@pytest.fixture(scope="module")
def li_retriever(embedder):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    nodes = [TextNode(id_=i, text=t) for i, t in corpus().items()]
    index = VectorStoreIndex(nodes, embed_model=embedder.as_llamaindex())
    return index.as_retriever(similarity_top_k=5)


@pytest.fixture(scope="module")
def lc_store(embedder):
    pytest.importorskip("langchain_core")
    from langchain_core.vectorstores import InMemoryVectorStore

    docs = corpus()
    return InMemoryVectorStore.from_texts(
        list(docs.values()),
        embedder.as_langchain(),
        ids=list(docs),
        metadatas=[{"source_id": f"src-{i}"} for i in docs],
    )


def llamaindex_reference(retriever, ds: QADataset) -> dict[str, np.ndarray]:
    """LlamaIndex's RetrieverEvaluator called directly, query by query."""
    from llama_index.core.evaluation import RetrieverEvaluator

    ev = RetrieverEvaluator.from_metric_names(["hit_rate", "mrr"], retriever=retriever)

    async def run():
        return [await ev.aevaluate(ds.queries[q], ds.relevant_docs[q]) for q in ds.relevant_docs]

    results = asyncio.run(run())
    return {
        "hit_rate": np.array([r.metric_vals_dict["hit_rate"] for r in results]),
        "mrr": np.array([r.metric_vals_dict["mrr"] for r in results]),
        "retrieved": [tuple(r.retrieved_ids) for r in results],
    }


def test_llamaindex_retriever_agrees_with_retriever_evaluator(li_retriever) -> None:
    ds = qa_dataset()
    ours = evaluate(li_retriever, ds, k=5)
    ref = llamaindex_reference(li_retriever, ds)
    assert list(ours.retrieved) == ref["retrieved"]
    np.testing.assert_allclose(ours.per_query.hit, ref["hit_rate"])
    np.testing.assert_allclose(ours.per_query.mrr, ref["mrr"])
    # the data make the comparison informative: some hits at rank > 1, some misses
    assert 0 < ours.hit_rate < 1 and ours.mrr < ours.hit_rate
    # the bridge gives the same numbers
    bridge = llamaindex_retriever_evaluator(li_retriever, ds, metrics=("hit_rate", "mrr"))
    np.testing.assert_allclose(bridge.per_query["hit_rate"], ref["hit_rate"])
    np.testing.assert_allclose(bridge.per_query["mrr"], ref["mrr"])
    assert bridge.means == {"hit_rate": ours.hit_rate, "mrr": pytest.approx(ours.mrr)}
    assert bridge.n_empty == 0 and bridge.query_ids == ours.query_ids
    assert "hit_rate" in bridge.summary() and json.dumps(bridge.to_dict())


def test_langchain_retriever_agrees_with_llamaindex_and_retriever_evaluator(
    lc_store, li_retriever
) -> None:
    ds = qa_dataset()
    lc = lc_store.as_retriever(search_kwargs={"k": 5})
    ours = evaluate(lc, ds, k=5)
    li = evaluate(li_retriever, ds, k=5)
    # same vectors, same cosine ranking in both frameworks
    assert ours.retrieved == li.retrieved
    assert (ours.ndcg, ours.recall, ours.mrr, ours.hit_rate) == pytest.approx(
        (li.ndcg, li.recall, li.mrr, li.hit_rate)
    )
    # LlamaIndex's RetrieverEvaluator on the LangChain retriever (wrapped by the bridge)
    bridge = llamaindex_retriever_evaluator(lc, ds, metrics=["hit_rate", "mrr", "recall"])
    np.testing.assert_allclose(bridge.per_query["hit_rate"], ours.per_query.hit)
    np.testing.assert_allclose(bridge.per_query["mrr"], ours.per_query.mrr)
    assert bridge.retrieved == ours.retrieved


def test_vector_store_and_index_are_turned_into_retrievers_with_top_k(lc_store, li_retriever):
    ds = qa_dataset()
    from_store = evaluate(lc_store, ds, k=5)
    assert all(len(r) == 5 for r in from_store.retrieved)
    index = li_retriever._index
    from_index = evaluate(index, ds, k=5)
    assert from_index.retrieved == from_store.retrieved


def test_id_key_reads_metadata(lc_store) -> None:
    docs = corpus()
    data = [(docs["doc3"], ["src-doc3"]), (docs["doc7"], ["src-doc7"])]
    lc = lc_store.as_retriever(search_kwargs={"k": 3})
    with_key = evaluate(lc, data, k=3, id_key="source_id")
    assert with_key.mrr == 1.0 and with_key.retrieved[0][0] == "src-doc3"
    assert evaluate(lc, data, k=3).mrr == 0.0  # doc.id is "doc3", not "src-doc3"


def test_finetuner_is_evaluated_through_its_own_retriever(tmp_path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag import NudgeEmbeddingFinetuner

    docs = corpus()
    store = InMemoryVectorStore.from_texts(
        list(docs.values()), BagOfWordsEmbedder(dim=256).as_langchain(), ids=list(docs)
    )
    ft = NudgeEmbeddingFinetuner(store, state_dir=tmp_path / "st")
    res = evaluate(ft, qa_dataset(), k=4)
    ref = evaluate(store.as_retriever(search_kwargs={"k": 4}), qa_dataset(), k=4)
    assert res.retrieved == ref.retrieved and all(len(r) == 4 for r in res.retrieved)


def test_finetuner_over_a_store_without_framework_embeds_through_its_public_method(
    tmp_path,
) -> None:
    """A store with no framework gives a bare adapter as its retriever: evaluate searches it
    with the queries embedded by the finetuner's aembed_queries (no private call)."""
    pytest.importorskip("langchain_core")
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag import NudgeEmbeddingFinetuner
    from nudge_rag.stores import adapter_for

    docs = corpus()
    emb = BagOfWordsEmbedder(dim=256)
    store = InMemoryVectorStore.from_texts(list(docs.values()), emb.as_langchain(), ids=list(docs))
    ft = NudgeEmbeddingFinetuner(adapter_for(store), embed_model=emb, state_dir=tmp_path / "st")
    assert ft.retriever(4) is ft._adapter
    res = evaluate(ft, qa_dataset(), k=4)
    ref = evaluate(store.as_retriever(search_kwargs={"k": 4}), qa_dataset(), k=4)
    assert res.retrieved == ref.retrieved


# ------------------------------------------------------------------ empty retrievals


def test_empty_retrievals_score_zero_and_never_raise() -> None:
    runs = {"a": [], "b": ["d1"], "c": []}
    calls = {"c": None}
    data = [("a", ["d1"]), ("b", ["d1"]), ("c", ["d1"])]
    res = evaluate(lambda q: calls.get(q, runs[q]), data, k=10)
    np.testing.assert_array_equal(res.per_query.ndcg, [0, 1, 0])
    np.testing.assert_array_equal(res.per_query.hit, [0, 1, 0])
    assert res.n_empty == 2 and res.retrieved == ((), ("d1",), ())
    nothing = evaluate(lambda q: [], data, k=10)
    assert nothing.means == (0.0, 0.0, 0.0, 0.0) and nothing.n_empty == 3
    # LlamaIndex raises on an empty retrieval; the bridge scores it 0
    bridge = llamaindex_retriever_evaluator(lambda q: calls.get(q, runs[q]), data)
    np.testing.assert_array_equal(bridge.per_query["hit_rate"], [0, 1, 0])
    np.testing.assert_array_equal(bridge.per_query["mrr"], [0, 1, 0])
    assert bridge.n_empty == 2


def test_bridge_tolerates_an_empty_llamaindex_retriever() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    class Picky(BaseRetriever):
        def _retrieve(self, query_bundle):
            if "nothing" in query_bundle.query_str:
                return []
            return [NodeWithScore(node=TextNode(id_="d1", text="x"), score=1.0)]

    data = [("find nothing", ["d1"]), ("find d1", ["d1"])]
    bridge = llamaindex_retriever_evaluator(Picky(), data, metrics=["hit_rate", "mrr", "ndcg"])
    assert bridge.means == {"hit_rate": 0.5, "mrr": 0.5, "ndcg": 0.5} and bridge.n_empty == 1
    ours = evaluate(Picky(), data, k=1)
    assert ours.hit_rate == 0.5 and ours.n_empty == 1


# ------------------------------------------------------------------ concurrency


def test_async_callable_concurrency_is_bounded_and_order_kept() -> None:
    state = {"now": 0, "max": 0}

    async def slow(q: str) -> list[str]:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.005 * (1 + int(q[5:]) % 3))  # uneven delays
        state["now"] -= 1
        return [q.replace("query", "doc")]

    data = [(f"query{i}", [f"doc{i}"]) for i in range(30)]
    res = evaluate(slow, data, k=1, max_concurrency=3)
    assert state["max"] == 3 and state["now"] == 0  # concurrent, and never above the bound
    assert res.hit_rate == 1.0  # results kept in query order despite uneven delays
    state["max"] = 0
    evaluate(slow, data, k=1, max_concurrency=1)
    assert state["max"] == 1


def test_sync_callable_runs_in_threads_within_the_bound() -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(q: str) -> list[str]:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return ["d"]

    evaluate(slow, [(f"q{i}", ["d"]) for i in range(12)], k=1, max_concurrency=4)
    assert 2 <= state["max"] <= 4


def test_works_inside_a_running_event_loop() -> None:
    async def main():
        inner = evaluate(lambda q: ["d1"], [("q", ["d1"])], k=1)  # a notebook calling evaluate
        outer = await aevaluate(lambda q: ["d1"], [("q", ["d1"])], k=1)
        return inner, outer

    inner, outer = asyncio.run(main())
    assert inner.hit_rate == outer.hit_rate == 1.0


def test_progress_bar_is_opt_in(capsys) -> None:
    pytest.importorskip("tqdm")
    evaluate(lambda q: ["d1"], [("q", ["d1"])] * 3, k=1)
    assert "query" not in capsys.readouterr().err
    evaluate(lambda q: ["d1"], [("q", ["d1"])] * 3, k=1, show_progress=True)
    assert "3/3" in capsys.readouterr().err


# ------------------------------------------------------------------ dataset kinds


def write_beir(root: Path, splits: dict[str, list[tuple[str, str, int]]]) -> Path:
    """Records d0..d3 ("t0".."t3") and queries q0..q2 ("query 0".."query 2")."""
    corpus = {f"d{i}": f"t{i}" for i in range(4)}
    return write_beir_folder(root, corpus, {f"q{i}": f"query {i}" for i in range(3)}, splits)


RUNS = {"query 0": ["d1", "d0"], "query 1": ["d2"], "query 2": ["d3", "d1"]}


def test_every_dataset_kind_loads_to_the_same_result(tmp_path) -> None:
    ds = QADataset(
        queries={"q0": "query 0", "q1": "query 1", "q2": "query 2"},
        corpus={f"d{i}": f"t{i}" for i in range(4)},
        relevant_docs={"q0": ["d0"], "q1": ["d2", "d3"], "q2": ["d1"]},
    )
    path = tmp_path / "val.json"
    ds.save_json(path)
    beir = write_beir(
        tmp_path / "beir",
        {"test": [("q0", "d0", 1), ("q1", "d2", 1), ("q1", "d3", 1), ("q2", "d1", 1)]},
    )
    kinds = {
        "ours": ds,
        "duck-typed (EmbeddingQAFinetuneDataset)": SimpleNamespace(
            queries=ds.queries, corpus=ds.corpus, relevant_docs=ds.relevant_docs
        ),
        "dict": json.loads(path.read_text()),
        "json path str": str(path),
        "json path": path,
        "beir folder": beir,
        "pairs": [("query 0", ["d0"]), ("query 1", ["d2", "d3"]), ("query 2", "d1")],
        "pairs with grades": [
            ("query 0", {"d0": 1}),
            ("query 1", {"d2": 1, "d3": 1}),
            ("query 2", ("d1",)),
        ],
    }
    expected = evaluate(fixed(RUNS), ds, k=2)
    np.testing.assert_allclose(expected.per_query.recall, [1, 0.5, 1])
    for kind, data in kinds.items():
        res = evaluate(fixed(RUNS), data, k=2)
        np.testing.assert_allclose(res.per_query.ndcg, expected.per_query.ndcg, err_msg=kind)
        np.testing.assert_allclose(res.per_query.recall, expected.per_query.recall, err_msg=kind)
        assert len(res.query_ids) == 3, kind


def test_beir_keeps_grades_and_picks_the_split(tmp_path) -> None:
    beir = write_beir(
        tmp_path / "beir",
        {
            "test": [("q0", "d1", 1), ("q0", "d0", 2), ("q1", "d0", 0)],
            "dev": [("q2", "d3", 1)],
        },
    )
    res = evaluate(fixed(RUNS), beir, k=2)  # "test" by default; q1 has no relevant doc: dropped
    assert res.query_ids == ("q0",)
    idcg = 2 + 1 / np.log2(3)
    assert res.ndcg == pytest.approx((1 + 2 / np.log2(3)) / idcg)
    dev = evaluate(fixed(RUNS), beir, k=2, split="dev")
    assert dev.query_ids == ("q2",) and dev.mrr == 1.0
    assert JudgedQueries.from_any(beir, split="dev").relevance == ({"d3": 1.0},)


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("retriever", [object(), 42, "retriever"])
def test_unknown_retriever_type_raises_config_error(retriever) -> None:
    with pytest.raises(ConfigError, match=r"retriever: expected .* received (object|int|str)"):
        evaluate(retriever, [("q", ["d"])])


def test_bare_store_adapter_is_refused(lc_store) -> None:
    from nudge_rag.stores import adapter_for

    with pytest.raises(ConfigError, match="cannot embed queries"):
        evaluate(adapter_for(lc_store), [("q", ["d"])])


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "10"])
def test_bad_k_raises_config_error(k) -> None:
    with pytest.raises(ConfigError, match=rf"k: expected an integer >= 1, received {k!r}"):
        evaluate(lambda q: [], [("q", ["d"])], k=k)


@pytest.mark.parametrize("n", [0, -2, 1.5])
def test_bad_max_concurrency_raises(n) -> None:
    with pytest.raises(ConfigError, match="max_concurrency"):
        evaluate(lambda q: [], [("q", ["d"])], max_concurrency=n)


@pytest.mark.parametrize(
    ("dataset", "pattern"),
    [
        ({"queries": {"q": "x"}}, r"missing \['relevant_docs'\]"),
        ({"relevant_docs": {"q": ["d"]}}, r"missing \['queries'\]"),
        ({"queries": {"q": "x"}, "relevant_docs": {"r": ["d"]}}, "names query 'r'"),
        ({"queries": ["x"], "relevant_docs": {"q": ["d"]}}, "dicts keyed by query id"),
        ([("q", ["d"]), "just a string"], r"dataset\[1\]: expected a \(query text, relevant ids\)"),
        ([("q", ["d"], 3)], r"dataset\[0\]"),
        ([("q", 5.5)], r"dataset\[0\]\[1\]: expected relevant ids"),
        ([("q", {"d": "high"})], "numeric relevance grades"),
        ([("q", {"d": 0})], "at least one query with a relevant id"),
        ([], "at least one query"),
        (12, "dataset: expected judged queries"),
    ],
)
def test_bad_datasets_raise_dataset_error(dataset, pattern) -> None:
    with pytest.raises(DatasetError, match=pattern):
        evaluate(lambda q: [], dataset)


def test_bad_dataset_paths(tmp_path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        evaluate(lambda q: [], tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"queries": {}}))
    with pytest.raises(DatasetError, match="missing"):
        evaluate(lambda q: [], bad)
    beir = write_beir(tmp_path / "b", {"train": [("q0", "d0", 1)], "dev": [("q1", "d1", 1)]})
    with pytest.raises(DatasetError, match=r"split: expected .* \['dev', 'train'\]"):
        evaluate(lambda q: [], beir)
    with pytest.raises(DatasetError, match="qrels file not found"):
        evaluate(lambda q: [], beir, split="test")


def test_retrieved_items_without_ids_raise_naming_id_key() -> None:
    with pytest.raises(ConfigError, match="pass id_key="):
        evaluate(lambda q: [SimpleNamespace(text="no id")], [("q", ["d"])])
    with pytest.raises(ConfigError, match="metadata has no 'doc_id'"):
        evaluate(lambda q: [{"metadata": {}}], [("q", ["d"])], id_key="doc_id")
    with pytest.raises(ConfigError, match="ranked list"):
        evaluate(lambda q: "d1", [("q", ["d"])])


def test_retriever_errors_propagate() -> None:
    def broken(q: str) -> list[str]:
        raise RuntimeError("store offline")

    with pytest.raises(RuntimeError, match="store offline"):
        evaluate(broken, [("q", ["d"])])


def test_bridge_rejects_unknown_metric() -> None:
    pytest.importorskip("llama_index.core")
    with pytest.raises(
        ConfigError, match=r"metrics: expected names from \[.*'hit_rate'.*\], received \['hits'\]"
    ):
        llamaindex_retriever_evaluator(lambda q: ["d"], [("q", ["d"])], metrics=["hits"])


def test_errors_are_in_the_tree() -> None:
    assert issubclass(ConfigError, NudgeError) and issubclass(ConfigError, ValueError)
    assert issubclass(DatasetError, NudgeError) and issubclass(DatasetError, ValueError)


# ------------------------------------------------------------------ compare


def test_compare_counts_wins_losses_ties_by_query_id() -> None:
    data = [("a", ["d1"]), ("b", ["d1"]), ("c", ["d1"]), ("d", ["d1"])]
    before = evaluate(
        fixed({"a": ["x", "d1"], "b": ["d1"], "c": [], "d": ["x", "d1"]}), data, k=2, name="before"
    )
    after = evaluate(
        fixed({"a": ["d1"], "b": ["x", "d1"], "c": ["d1"], "d": ["x", "d1"]}),
        data,
        k=2,
        name="nudge",
    )
    cmp = compare(before, after)
    assert isinstance(cmp, Comparison)
    assert cmp.mrr.wins == 2 and cmp.mrr.losses == 1 and cmp.mrr.ties == 1
    assert cmp.mrr.before == pytest.approx(0.5) and cmp.mrr.after == pytest.approx(0.75)
    assert cmp.mrr.delta == pytest.approx(0.25)
    assert (cmp.hit_rate.wins, cmp.hit_rate.losses, cmp.hit_rate.ties) == (1, 0, 3)
    assert cmp["ndcg"] is cmp.ndcg and cmp.recall.after == 1.0
    table = cmp.table()
    assert "nudge" in table and "+0.2500" in table and "MRR@2" in table
    assert json.loads(json.dumps(cmp.to_dict()))["metrics"][2]["metric"] == "mrr"
    # order of queries does not matter: matched by id
    shuffled = dataclasses.replace(
        after,
        query_ids=after.query_ids[::-1],
        per_query=type(after.per_query)(*(a[::-1] for a in after.per_query)),
    )
    assert compare(before, shuffled).rows == cmp.rows


def test_compare_refuses_different_k_or_queries() -> None:
    data = [("a", ["d1"]), ("b", ["d1"])]
    r2 = evaluate(lambda q: ["d1"], data, k=2)
    with pytest.raises(ConfigError, match=r"same k as before \(2\), received k=3"):
        compare(r2, evaluate(lambda q: ["d1"], data, k=3))
    with pytest.raises(ConfigError, match="same queries"):
        compare(r2, evaluate(lambda q: ["d1"], data[:1], k=2))
    with pytest.raises(ConfigError, match="before: expected an EvaluationResult"):
        compare({"ndcg": 1}, r2)  # type: ignore[arg-type]
    assert isinstance(r2, EvaluationResult)
