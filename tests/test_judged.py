"""JudgedQueries: every accepted shape reads to the same value, and every bad input raises one
typed error naming the argument and the item."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from beir_files import write_beir_folder

from nudge_rag.core import QuerySet
from nudge_rag.errors import (
    AnswerError,
    ConfigError,
    DatasetError,
    NudgeInputError,
    ShapeError,
)
from nudge_rag.judged import JudgedQueries, QADataset, as_training_pairs, parse_relevance

QUERIES = {"a": "query a", "b": "query b", "c": "query c"}
RELEVANT = {"a": ["d0"], "b": ["d2", "d3"], "c": ["d1"]}
CORPUS = {f"d{i}": f"text {i}" for i in range(4)}


def write_beir(root: Path, splits: dict[str, list[tuple[str, str, int]]]) -> Path:
    return write_beir_folder(root, CORPUS, QUERIES, splits)


def expected() -> JudgedQueries:
    return JudgedQueries(
        ["a", "b", "c"],
        [{"d0": 1.0}, {"d2": 1.0, "d3": 1.0}, {"d1": 1.0}],
        texts=["query a", "query b", "query c"],
        corpus=CORPUS,
    )


# ------------------------------------------------------------------ every shape, one value


def test_every_shape_reads_to_the_same_queries(tmp_path: Path) -> None:
    want = expected()
    path = tmp_path / "qa.json"
    want.save_json(path)
    beir = write_beir(
        tmp_path / "beir",
        {"test": [("a", "d0", 1), ("b", "d2", 1), ("b", "d3", 1), ("c", "d1", 1)]},
    )
    shapes = {
        "dict": {"queries": QUERIES, "relevant_docs": RELEVANT, "corpus": CORPUS},
        "object (EmbeddingQAFinetuneDataset)": SimpleNamespace(
            queries=QUERIES, relevant_docs=RELEVANT, corpus=CORPUS, mode="text"
        ),
        "QADataset": QADataset(queries=QUERIES, corpus=CORPUS, relevant_docs=RELEVANT),
        "json path str": str(path),
        "json path": path,
        "beir folder": beir,
    }
    for kind, obj in shapes.items():
        got = JudgedQueries.from_any(obj)
        assert got == want, kind
        assert got.query_ids == ("a", "b", "c") and got.corpus == CORPUS, kind
    assert JudgedQueries.from_any(want) is want  # an existing value as it is


def test_pairs_of_every_kind() -> None:
    got = JudgedQueries.from_any(
        [
            ("query a", ["d0"]),
            ("query b", ("d2", "d3")),
            ("query c", "d1"),
            ("query d", 7),
            ("query e", {"d1": 2, "d2": 0.5, "d3": 0}),
            ["query f", ["d0", "d0"]],
        ]
    )
    assert got.query_ids == ("q0", "q1", "q2", "q3", "q4", "q5")
    assert got.texts == ("query a", "query b", "query c", "query d", "query e", "query f")
    assert [dict(r) for r in got.relevance] == [
        {"d0": 1.0},
        {"d2": 1.0, "d3": 1.0},
        {"d1": 1.0},
        {"7": 1.0},
        {"d1": 2.0, "d2": 0.5},  # grade 0: not relevant
        {"d0": 1.0},
    ]
    assert got.corpus == {} and got.vectors is None
    assert got.to_pairs()[4] == ("query e", {"d1": 2.0, "d2": 0.5})
    assert as_training_pairs([("q", "d")]) == [("q", {"d": 1.0})]


def test_order_follows_relevant_docs_and_unjudged_queries_are_left_out() -> None:
    got = JudgedQueries.from_any(
        {"queries": {"x": "unjudged", **QUERIES}, "relevant_docs": {"c": ["d1"], "a": ["d0"]}}
    )
    assert got.query_ids == ("c", "a") and got.queries == {"c": "query c", "a": "query a"}


def test_queries_without_a_relevant_record_are_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="nudge_rag.judged"):
        got = JudgedQueries.from_any([("kept", ["d1"]), ("empty", []), ("zero", {"d2": 0})])
    assert got.query_ids == ("q0",)
    assert "dropped 2 of 3 queries" in caplog.text


def test_beir_keeps_grades_and_picks_the_split(tmp_path: Path) -> None:
    beir = write_beir(
        tmp_path / "beir",
        {"test": [("a", "d1", 1), ("a", "d0", 2), ("b", "d0", 0)], "dev": [("c", "d3", 1)]},
    )
    test = JudgedQueries.from_any(beir)  # "test" by default; b has no relevant record
    assert test.query_ids == ("a",) and test.relevance == ({"d1": 1.0, "d0": 2.0},)
    assert JudgedQueries.from_any(beir, split="dev").relevance == ({"d3": 1.0},)
    only = write_beir(tmp_path / "one", {"train": [("b", "d2", 1)]})
    assert JudgedQueries.from_beir(only).query_ids == ("b",)  # the only split


# ------------------------------------------------------------------ the value


def test_views_parts_and_derived_forms() -> None:
    jq = expected()
    assert len(jq) == 3 and repr(jq) == "JudgedQueries(n=3, records=4, graded=False, corpus=4)"
    assert jq.queries == QUERIES and jq.relevant_docs == RELEVANT
    assert jq.judgements() == {"a": {"d0": 1.0}, "b": {"d2": 1.0, "d3": 1.0}, "c": {"d1": 1.0}}
    assert jq.relevant_ids() == ["d0", "d2", "d3", "d1"]
    sub = jq.subset([2, 0])
    assert sub.query_ids == ("c", "a") and sub.texts == ("query c", "query a")
    assert sub.corpus == CORPUS and type(sub) is JudgedQueries

    vecs = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
    with_v = jq.with_vectors(vecs)
    assert with_v.vectors is not None and not with_v.vectors.flags.writeable
    assert with_v != jq and with_v == jq.with_vectors(vecs.copy())
    qs = with_v.to_query_set(["d3", "d2", "d1", "d0"])
    assert isinstance(qs, QuerySet) and len(qs) == 3
    assert qs.answers() == [{3: 1.0}, {1: 1.0, 0: 1.0}, {2: 1.0}]
    np.testing.assert_array_equal(qs.embeddings, vecs)
    assert jq.to_query_set({"d0": 0, "d1": 1, "d2": 2, "d3": 3}, vecs).answers()[0] == {0: 1.0}
    np.testing.assert_array_equal(with_v.subset([1]).vectors, vecs[[1]])


def test_texts_may_be_missing_when_vectors_are_there() -> None:
    jq = JudgedQueries(["x"], [["d1"]], vectors=np.ones((1, 3)))
    assert jq.texts is None and "texts=None" in repr(jq) and "vectors=(1, 3)" in repr(jq)
    assert jq.to_query_set(["d1"]).answer_rows(0).tolist() == [0]
    with pytest.raises(ConfigError, match="no texts"):
        jq.to_pairs()
    with pytest.raises(ConfigError, match="no texts"):
        _ = jq.queries


def test_immutable() -> None:
    jq = expected()
    with pytest.raises(AttributeError, match="immutable"):
        jq.query_ids = ("z",)  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del jq.texts
    with pytest.raises(TypeError):
        jq.relevance[0]["d9"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        jq.corpus["d9"] = "new"  # type: ignore[index]
    with pytest.raises(TypeError):
        hash(jq)


def test_json_round_trip_is_llamaindex_shaped_atomic_and_keeps_grades(tmp_path: Path) -> None:
    jq = JudgedQueries.from_any({"queries": QUERIES, "relevant_docs": {"a": {"d0": 2, "d1": 1}}})
    path = jq.save_json(tmp_path / "g.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["queries"] == {"a": "query a"} and data["relevant_docs"] == {"a": ["d0", "d1"]}
    assert data["corpus"] == {} and data["grades"] == {"a": {"d0": 2.0, "d1": 1.0}}
    assert JudgedQueries.from_json(path) == jq
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]  # no temporary file left
    binary = expected()
    binary.save_json(tmp_path / "b.json")
    assert "grades" not in json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    qa = QADataset.from_json(tmp_path / "b.json")
    assert isinstance(qa, QADataset) and qa == binary


def test_qadataset_keeps_its_constructor() -> None:
    ds = QADataset(QUERIES, CORPUS, RELEVANT, mode="text")  # positional, as before
    assert ds.mode == "text" and ds.corpus == CORPUS and ds.relevant_docs["b"] == ["d2", "d3"]
    assert isinstance(ds, JudgedQueries) and len(QADataset({}, {}, {})) == 0


# ------------------------------------------------------------------ every error


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        (12, r"dataset: expected judged queries: .* received int"),
        (None, r"dataset: expected judged queries: .* received NoneType"),
        (b"bytes", r"dataset: expected judged queries: .* received bytes"),
        ({"queries": {"q": "x"}}, r"dataset: expected keys .* missing \['relevant_docs'\]"),
        ({"relevant_docs": {"q": ["d"]}}, r"missing \['queries'\]"),
        (
            {"queries": ["x"], "relevant_docs": {"q": ["d"]}},
            "dicts keyed by query id, received list",
        ),
        (
            {"queries": {"q": "x"}, "relevant_docs": {"r": ["d"]}},
            "names query 'r', which is not in queries",
        ),
        (
            {"queries": {"q": 3}, "relevant_docs": {"q": ["d"]}},
            r"dataset.queries\['q'\]: expected the query text as a str",
        ),
        (
            {"queries": {"q": "x"}, "relevant_docs": {"q": ["d"]}, "corpus": {"e": "t"}},
            "names record 'd', which is not in corpus",
        ),
        (
            {"queries": {"q": "x"}, "relevant_docs": {"q": ["d"]}, "corpus": {"d": 1}},
            "expected corpus as record id -> text",
        ),
        (
            {"queries": {"q": "x"}, "relevant_docs": {"q": ["d"]}, "corpus": ["d"]},
            "expected corpus to be a dict keyed by id, received list",
        ),
        (
            {"queries": {1: "x", "1": "y"}, "relevant_docs": {1: ["d"], "1": ["e"]}},
            "distinct query ids, received '1'",
        ),
        (
            [("q", ["d"]), "just a string"],
            r"dataset\[1\]: expected a \(query text, relevant ids\) pair",
        ),
        ([("q", ["d"], 3)], r"dataset\[0\]: expected a \(query text"),
        ([("only text",)], r"dataset\[0\]: expected a \(query text"),
        ([(3, ["d"])], r"dataset\[0\]: expected a \(query text"),
        ([("q", 5.5)], r"dataset\[0\]\[1\]: expected relevant ids as a list .* received float"),
        ([("q", None)], r"dataset\[0\]\[1\]: expected relevant ids .* received NoneType"),
        ([("q", [1.5])], r"dataset\[0\]\[1\]: expected record ids as str or int, received float"),
        ([("q", {None: 1})], "expected record ids as str or int, received NoneType"),
        ([("q", {"d": "high"})], r"expected numeric relevance grades, received 'high' for id 'd'"),
        ([("q", {"d": float("nan")})], "expected finite relevance grades"),
        ([("q", {"d": float("inf")})], "expected finite relevance grades"),
        (
            [("q", {"d": 0})],
            r"at least one query with a relevant id \(grade > 0\), received 1 query",
        ),
        ([], "at least one query with a relevant id .* received 0 queries"),
        (QADataset({}, {}, {}), "at least one query with a relevant id, received 0 queries"),
    ],
)
def test_bad_inputs_raise_dataset_error_naming_the_argument(obj: object, pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern):
        JudgedQueries.from_any(obj, name="dataset")


def test_bad_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"--queries: .*missing\.json' does not exist"):
        JudgedQueries.from_any(tmp_path / "missing.json", name="--queries")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="is not valid JSON"):
        JudgedQueries.from_any(bad)
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(DatasetError, match="cannot be read as UTF-8 text"):
        JudgedQueries.from_any(bad)
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"JSON object .* received a JSON list"):
        JudgedQueries.from_any(bad)
    bad.write_text(json.dumps({"queries": {}}), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"missing \['relevant_docs'\]"):
        JudgedQueries.from_any(bad)
    bad.write_text(
        json.dumps({"queries": {"q": "x"}, "relevant_docs": {"q": []}}), encoding="utf-8"
    )
    with pytest.raises(DatasetError, match="at least one query"):
        JudgedQueries.from_any(bad)
    assert len(JudgedQueries.from_json(bad)) == 0  # reading alone does not ask for any
    beir = write_beir(tmp_path / "b", {"train": [("a", "d0", 1)], "dev": [("b", "d1", 1)]})
    with pytest.raises(DatasetError, match=r"split: expected .* \['dev', 'train'\]"):
        JudgedQueries.from_any(beir)
    with pytest.raises(DatasetError, match="qrels file not found"):
        JudgedQueries.from_any(beir, split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        JudgedQueries.from_any(tmp_path / "empty")


def test_constructor_checks_its_parts() -> None:
    with pytest.raises(DatasetError, match="one entry per query"):
        JudgedQueries(["a", "b"], [["d"]])
    with pytest.raises(DatasetError, match="texts with one entry per query"):
        JudgedQueries(["a"], [["d"]], texts=["x", "y"])
    with pytest.raises(DatasetError, match="query 'a' has no relevant record"):
        JudgedQueries(["a"], [{"d": 0}])
    with pytest.raises(DatasetError, match="distinct query ids, received 'a'"):
        JudgedQueries(["a", "a"], [["d"], ["e"]])
    with pytest.raises(DatasetError, match="query ids as str or int, received float"):
        JudgedQueries([1.5], [["d"]])
    with pytest.raises(DatasetError, match="query_ids as a sequence"):
        JudgedQueries("ab", [["d"], ["e"]])
    with pytest.raises(ShapeError, match="one row per query"):
        JudgedQueries(["a"], [["d"]], vectors=np.ones((2, 3)))
    with pytest.raises(ShapeError, match="floating-point"):
        JudgedQueries(["a"], [["d"]], vectors=np.ones((1, 3), dtype=int))
    jq = JudgedQueries(["a"], [["d"]], texts=["x"])
    with pytest.raises(ConfigError, match="no vectors"):
        jq.to_query_set(["d"])
    with pytest.raises(AnswerError, match="query 'a' names record 'd', which has no row"):
        jq.to_query_set(["e"], np.ones((1, 2)))


def test_parse_relevance_is_the_one_grade_parser() -> None:
    assert parse_relevance("d", "w") == {"d": 1.0}
    assert parse_relevance(np.int64(4), "w") == {"4": 1.0}
    assert parse_relevance({"d": 1, "e": -1, "f": np.float32(0.5)}, "w") == {"d": 1.0, "f": 0.5}
    assert parse_relevance(["d", "d", 3], "w") == {"d": 1.0, "3": 1.0}
    with pytest.raises(DatasetError, match=r"^w: expected relevant ids"):
        parse_relevance(1.0, "w")
    with pytest.raises(DatasetError, match=r"^w: expected numeric relevance grades"):
        parse_relevance({"d": None}, "w")


def test_errors_are_bad_input_in_the_tree() -> None:
    assert issubclass(DatasetError, NudgeInputError) and issubclass(DatasetError, ValueError)
