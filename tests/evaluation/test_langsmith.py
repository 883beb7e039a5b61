"""langsmith_evaluator: the (run, example) -> {"key", "score"} shape, on hand-computed cases."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from nudge_rag.errors import ConfigError, DatasetError
from nudge_rag.evaluation import langsmith_evaluator


def run_of(outputs):
    return SimpleNamespace(outputs=outputs)


def example_of(outputs):
    return SimpleNamespace(outputs=outputs)


LOG2_3 = math.log2(3)


@pytest.mark.parametrize(
    ("metric", "k", "expected"),
    [
        # ranking d3, d1, d2 against grades {d1: 2, d2: 1, d9: 1}
        ("ndcg", 3, (2 / LOG2_3 + 1 / 2) / (2 + 1 / LOG2_3 + 1 / 2)),
        ("ndcg", 1, 0.0),
        ("recall", 2, 1 / 3),
        ("recall", 3, 2 / 3),
        ("mrr", 3, 0.5),
        ("mrr", 1, 0.0),
        ("hit_rate", 2, 1.0),
        ("hit_rate", 1, 0.0),
        ("precision", 3, 2 / 3),
    ],
)
def test_hand_computed_scores(metric, k, expected) -> None:
    ev = langsmith_evaluator(metric, k=k)
    out = ev(
        run_of({"documents": ["d3", "d1", "d2"]}),
        example_of({"relevant_ids": {"d1": 2, "d2": 1, "d9": 1}}),
    )
    assert out == {"key": f"{metric}@{k}", "score": pytest.approx(expected, abs=1e-12)}
    assert isinstance(out["score"], float)


def test_documents_in_every_shape_give_the_same_score() -> None:
    from langchain_core.documents import Document
    from langchain_core.load import dumpd

    docs = [Document(page_content="x", id="d3"), Document(page_content="y", id="d1")]
    shapes = {
        "Document objects": docs,
        "Document dicts": [d.model_dump() for d in docs],
        "serialised (lc)": [dumpd(d) for d in docs],
        "ids": ["d3", "d1"],
        "(id, score) pairs": [("d3", 0.9), ("d1", 0.8)],
    }
    ev = langsmith_evaluator("mrr", k=5)
    for name, value in shapes.items():
        assert (
            ev(run_of({"documents": value}), example_of({"relevant_ids": ["d1"]}))["score"] == 0.5
        ), name


def test_llamaindex_nodes_are_read_too() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    nodes = [NodeWithScore(node=TextNode(id_=i, text=""), score=1.0) for i in ("a", "b")]
    ev = langsmith_evaluator("mrr", k=2)
    assert ev(run_of({"documents": nodes}), example_of({"relevant_ids": "b"}))["score"] == 0.5


def test_output_locations() -> None:
    ex = example_of({"relevant_ids": ["d1"]})
    hit = langsmith_evaluator("hit_rate", k=1)
    assert hit(run_of(["d1"]), ex)["score"] == 1.0  # outputs are the list itself
    assert hit(run_of({"answer": "text", "context": ["d1"]}), ex)["score"] == 1.0  # first list
    custom = langsmith_evaluator("hit_rate", k=1, output_key="docs")
    assert custom(run_of({"documents": ["x"], "docs": ["d1"]}), ex)["score"] == 1.0
    # "documents" wins over other lists
    assert hit(run_of({"other": ["d1"], "documents": ["x"]}), ex)["score"] == 0.0
    # dict runs / examples (e.g. read back from an export)
    assert (
        hit({"outputs": {"documents": ["d1"]}}, {"outputs": {"relevant_ids": ["d1"]}})["score"]
        == 1.0
    )
    ref = langsmith_evaluator("recall", k=2, reference_key="gold")
    assert ref(run_of(["d1", "d2"]), example_of({"gold": ["d2", "d7"]})) == {
        "key": "recall@2",
        "score": 0.5,
    }


def test_id_key_reads_metadata() -> None:
    from langchain_core.documents import Document

    docs = [Document(page_content="x", id="uuid-1", metadata={"source": "a.txt"})]
    ex = example_of({"relevant_ids": ["a.txt"]})
    assert (
        langsmith_evaluator("ndcg", id_key="source")(run_of({"documents": docs}), ex)["score"]
        == 1.0
    )
    assert langsmith_evaluator("ndcg")(run_of({"documents": docs}), ex)["score"] == 0.0


@pytest.mark.parametrize("outputs", [{"documents": []}, {"documents": None}, None, []])
def test_empty_retrieval_scores_zero(outputs) -> None:
    ev = langsmith_evaluator("ndcg", k=10)
    assert ev(run_of(outputs), example_of({"relevant_ids": ["d1"]})) == {
        "key": "ndcg@10",
        "score": 0.0,
    }


def test_bad_inputs_raise_typed_errors() -> None:
    with pytest.raises(ConfigError, match=r"metric: expected one of .* received 'map'"):
        langsmith_evaluator("map")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k: expected an integer >= 1, received 0"):
        langsmith_evaluator("ndcg", k=0)
    ev = langsmith_evaluator("ndcg")
    with pytest.raises(DatasetError, match=r"expected key 'relevant_ids' .* found \['gold'\]"):
        ev(run_of(["d1"]), example_of({"gold": ["d1"]}))
    with pytest.raises(
        DatasetError,
        match=r"run.outputs: expected a list of retrieved documents .* found keys \['answer'\]",
    ):
        ev(run_of({"answer": "text"}), example_of({"relevant_ids": ["d1"]}))
    with pytest.raises(DatasetError, match=r"expected key 'docs' \(output_key\)"):
        langsmith_evaluator(output_key="docs")(
            run_of({"documents": []}), example_of({"relevant_ids": ["d"]})
        )
    with pytest.raises(ConfigError, match=r"run: expected an object with \.outputs"):
        ev(42, example_of({"relevant_ids": ["d1"]}))
    with pytest.raises(ConfigError, match="pass id_key="):
        ev(run_of({"documents": [{"page_content": "no id"}]}), example_of({"relevant_ids": ["d1"]}))


def test_named_for_langsmith() -> None:
    ev = langsmith_evaluator("recall", k=5)
    assert ev.__name__ == "nudge_rag_recall_at_5"


def test_accepted_by_langsmith_run_evaluator(monkeypatch) -> None:
    """LangSmith's own wrapper (used by evaluate()) takes it and reports key and score."""
    pytest.importorskip("langsmith")
    import datetime
    import uuid

    from langsmith.evaluation.evaluator import run_evaluator
    from langsmith.schemas import Example, Run

    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    now = datetime.datetime.now(datetime.timezone.utc)
    run = Run(
        id=uuid.uuid4(), name="retrieve", start_time=now, run_type="retriever",
        inputs={"question": "x"}, outputs={"documents": ["a", "b"]}, trace_id=uuid.uuid4(),
    )  # fmt: skip
    example = Example(
        id=uuid.uuid4(), inputs={"question": "x"}, outputs={"relevant_ids": ["b"]},
        dataset_id=uuid.uuid4(), created_at=now,
    )  # fmt: skip
    result = run_evaluator(langsmith_evaluator("mrr", k=3)).evaluate_run(run, example)
    assert result.key == "mrr@3" and result.score == 0.5
