"""Tests for nudge_rag.evaluation.metrics: hand-computed cases, pytrec_eval agreement, bad input."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from nudge_rag.errors import AnswerError, ConfigError, NonFiniteError, ShapeError
from nudge_rag.evaluation import (
    MetricMeans,
    answers_to_csr,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    topk_rows,
)
from nudge_rag.evaluation import metrics as metrics_module

PER_QUERY = [ndcg_at_k, recall_at_k, mrr_at_k, hit_rate_at_k, precision_at_k]
L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)


# ------------------------------------------------------------------ hand-computed per-query cases


def test_ndcg_graded_hand_computed() -> None:
    rel = {"a": 2, "b": 0, "c": 1}
    # ranks: b (0), c (1), x (unjudged). DCG@3 = 1/log2(3); IDCG@3 = 2/log2(2) + 1/log2(3).
    expected = (1 / L3) / (2 / L2 + 1 / L3)
    assert ndcg_at_k(["b", "c", "x"], rel, k=3) == pytest.approx(expected, abs=1e-12)
    # k=1: nothing relevant at rank 1.
    assert ndcg_at_k(["b", "c", "x"], rel, k=1) == 0.0
    # Ideal order scores 1.
    assert ndcg_at_k(["a", "c"], rel, k=2) == pytest.approx(1.0)
    # Swapped order: DCG = 1/log2(2) + 2/log2(3).
    expected_swapped = (1 / L2 + 2 / L3) / (2 / L2 + 1 / L3)
    assert ndcg_at_k(["c", "a"], rel, k=2) == pytest.approx(expected_swapped, abs=1e-12)


def test_ndcg_idcg_counts_unretrieved_relevant_and_is_cut_at_k() -> None:
    rel = {1: 1, 2: 1, 3: 1}
    # k=2, one relevant at rank 2; IDCG@2 = 1 + 1/log2(3) (only two of the three relevant fit).
    assert ndcg_at_k([9, 1], rel, k=2) == pytest.approx((1 / L3) / (1 + 1 / L3), abs=1e-12)


def test_negative_and_zero_grades_earn_nothing() -> None:
    rel = {"a": -1, "b": 0, "c": 2}
    assert ndcg_at_k(["a", "b", "c"], rel, k=3) == pytest.approx((2 / L4) / 2, abs=1e-12)
    assert recall_at_k(["a", "b"], rel, k=3) == 0.0
    assert recall_at_k(["a", "b", "c"], rel, k=3) == 1.0
    assert mrr_at_k(["a", "b", "c"], rel, k=3) == pytest.approx(1 / 3)


def test_recall_mrr_hit_precision_hand_computed() -> None:
    rel = {"a": 1, "b": 1, "c": 1, "d": 0}
    ranking = ["x", "d", "b", "y", "a"]
    assert recall_at_k(ranking, rel, k=3) == pytest.approx(1 / 3)
    assert recall_at_k(ranking, rel, k=5) == pytest.approx(2 / 3)
    assert mrr_at_k(ranking, rel, k=2) == 0.0
    assert mrr_at_k(ranking, rel, k=3) == pytest.approx(1 / 3)
    assert hit_rate_at_k(ranking, rel, k=2) == 0.0
    assert hit_rate_at_k(ranking, rel, k=3) == 1.0
    assert precision_at_k(ranking, rel, k=5) == pytest.approx(2 / 5)
    # Precision divides by k even when fewer were retrieved (trec_eval P_k).
    assert precision_at_k(["a"], rel, k=4) == pytest.approx(1 / 4)


def test_duplicates_count_only_first_occurrence() -> None:
    rel = {"a": 2, "b": 1}
    # "a" twice: the second copy keeps its slot (rank 2) but earns nothing.
    assert recall_at_k(["a", "a", "b"], rel, k=3) == 1.0
    assert precision_at_k(["a", "a", "b"], rel, k=3) == pytest.approx(2 / 3)
    expected = (2 / L2 + 1 / L4) / (2 / L2 + 1 / L3)
    assert ndcg_at_k(["a", "a", "b"], rel, k=3) == pytest.approx(expected, abs=1e-12)
    assert recall_at_k(["a", "a"], {"a": 1, "z": 1}, k=2) == 0.5


@pytest.mark.parametrize("fn", PER_QUERY)
def test_empty_ranking_and_no_relevant_score_zero(fn) -> None:
    assert fn([], {"a": 1}, k=5) == 0.0
    assert fn(["a", "b"], {}, k=5) == 0.0
    assert fn(["a", "b"], {"a": 0, "b": -2}, k=5) == 0.0


@pytest.mark.parametrize("fn", PER_QUERY)
@pytest.mark.parametrize("bad_k", [0, -3, 1.5, True, "10", None])
def test_per_query_bad_k_raises_config_error(fn, bad_k) -> None:
    with pytest.raises(ConfigError, match="k: expected an integer >= 1"):
        fn(["a"], {"a": 1}, k=bad_k)


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], {"a": 1}, k=0)


# ------------------------------------------------------------------ batched, hand-computed


def test_ranking_metrics_hand_computed() -> None:
    ranked = np.array([[3, 1, 0], [-1, -1, -1], [2, 2, 5], [7, 8, -1]])
    indptr, rows, gains = answers_to_csr([{1: 2.0, 0: 1.0}, [4], {2: 1.0, 5: 0.0}, []])
    m = ranking_metrics(ranked, indptr, rows, gains, k=3)
    ndcg0 = (2 / L3 + 1 / L4) / (2 / L2 + 1 / L3)
    np.testing.assert_allclose(m.ndcg, [ndcg0, 0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(m.recall, [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(m.mrr, [0.5, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(m.hit, [1.0, 0.0, 1.0, 0.0])
    assert all(a.dtype == np.float64 and a.shape == (4,) for a in m)
    means = m.mean()
    assert isinstance(means, MetricMeans)
    assert means.ndcg == pytest.approx((ndcg0 + 1.0) / 4)
    assert means.recall == pytest.approx(0.5)
    assert means.mrr == pytest.approx(1.5 / 4)
    assert means.hit == pytest.approx(0.5)


def test_ranking_metrics_k_defaults_to_width_and_cuts_columns() -> None:
    ranked = np.array([[9, 8, 1]])
    csr = answers_to_csr([[1]])
    assert ranking_metrics(ranked, *csr).recall[0] == 1.0
    assert ranking_metrics(ranked, *csr, k=2).recall[0] == 0.0
    # k wider than the matrix: missing positions are padding, IDCG still uses k.
    csr2 = answers_to_csr([[9, 5]])
    m = ranking_metrics(np.array([[9]]), *csr2, k=3)
    assert m.ndcg[0] == pytest.approx(1.0 / (1.0 + 1.0 / L3))
    assert m.recall[0] == 0.5


def test_ranking_metrics_zero_queries() -> None:
    m = ranking_metrics(np.zeros((0, 5), dtype=np.int64), *answers_to_csr([]), k=5)
    assert m.ndcg.shape == (0,)
    with pytest.raises(ShapeError, match="zero queries"):
        m.mean()


# ------------------------------------------------------------------ pytrec_eval agreement


def _random_case(seed: int, n_queries: int = 40, n_docs: int = 30, max_len: int = 15):
    """Graded judgements (0/1/2) and rankings of distinct docs of random length (0 included)."""
    rng = np.random.default_rng(seed)
    qrels: list[dict[int, float]] = []
    runs: list[list[int]] = []
    for qi in range(n_queries):
        n_judged = int(rng.integers(1, 8))
        judged = rng.choice(n_docs, size=n_judged, replace=False)
        grades = rng.integers(0, 3, size=n_judged)
        if qi % 7 == 0:
            grades[:] = 0  # no relevant doc at all
        qrels.append({int(d): float(g) for d, g in zip(judged, grades, strict=True)})
        length = 0 if qi % 5 == 0 else int(rng.integers(1, max_len + 1))
        runs.append([int(d) for d in rng.permutation(n_docs)[:length]])
    return qrels, runs


def _pytrec(qrels, runs, k: int, truncate_run_at: int | None = None) -> dict:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrel_d = {f"q{i}": {f"d{d}": int(g) for d, g in q.items()} for i, q in enumerate(qrels)}
    run_d = {}
    for i, run in enumerate(runs):
        run = run if truncate_run_at is None else run[:truncate_run_at]
        # Strictly decreasing distinct scores, so trec_eval's ranking is exactly this order.
        run_d[f"q{i}"] = {f"d{d}": float(len(run) - r) for r, d in enumerate(run)}
    ev = pytrec_eval.RelevanceEvaluator(
        qrel_d, {f"ndcg_cut.{k}", f"recall.{k}", f"P.{k}", "recip_rank"}
    )
    res = ev.evaluate(run_d)
    return {i: res[f"q{i}"] for i in range(len(qrels))}


def _to_matrix(runs: list[list[int]], width: int) -> np.ndarray:
    out = np.full((len(runs), width), -1, dtype=np.int64)
    for i, run in enumerate(runs):
        run = run[:width]
        out[i, : len(run)] = run
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 3, 5, 10, 20])
def test_agrees_with_pytrec_eval(seed: int, k: int) -> None:
    qrels, runs = _random_case(seed)
    ref = _pytrec(qrels, runs, k)
    ref_cut = _pytrec(qrels, runs, k, truncate_run_at=k)  # recip_rank has no cutoff
    for i in range(len(qrels)):
        assert ndcg_at_k(runs[i], qrels[i], k) == pytest.approx(ref[i][f"ndcg_cut_{k}"], abs=1e-6)
        assert recall_at_k(runs[i], qrels[i], k) == pytest.approx(ref[i][f"recall_{k}"], abs=1e-6)
        assert precision_at_k(runs[i], qrels[i], k) == pytest.approx(ref[i][f"P_{k}"], abs=1e-6)
        assert mrr_at_k(runs[i], qrels[i], k) == pytest.approx(ref_cut[i]["recip_rank"], abs=1e-6)
        assert hit_rate_at_k(runs[i], qrels[i], k) == float(ref[i][f"recall_{k}"] > 0)

    m = ranking_metrics(_to_matrix(runs, k), *answers_to_csr(qrels), k=k)
    np.testing.assert_allclose(m.ndcg, [ref[i][f"ndcg_cut_{k}"] for i in ref], atol=1e-6)
    np.testing.assert_allclose(m.recall, [ref[i][f"recall_{k}"] for i in ref], atol=1e-6)
    np.testing.assert_allclose(m.mrr, [ref_cut[i]["recip_rank"] for i in ref], atol=1e-6)
    np.testing.assert_allclose(m.hit, [float(ref[i][f"recall_{k}"] > 0) for i in ref])
    # The random data must exercise the interesting cases, not just zeros.
    assert m.ndcg.max() > 0 and 0 < m.hit.mean() < 1


def test_pytrec_eval_ndcg_cut_10_default_k() -> None:
    qrels, runs = _random_case(11, max_len=25)
    ref = _pytrec(qrels, runs, 10)
    ours = [ndcg_at_k(r, q) for r, q in zip(runs, qrels, strict=True)]
    np.testing.assert_allclose(ours, [ref[i]["ndcg_cut_10"] for i in ref], atol=1e-6)


@pytest.mark.parametrize("seed", [5, 6, 7])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_batched_matches_per_query_with_duplicates_and_padding(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n_queries, n_docs = 60, 12
    qrels = [
        {
            int(d): float(rng.integers(-1, 3))
            for d in rng.choice(n_docs, int(rng.integers(0, 6)), replace=False)
        }
        for _ in range(n_queries)
    ]
    ranked = rng.integers(-1, n_docs, size=(n_queries, k + 3))  # duplicates and holes
    ranked[::6] = -1  # some empty retrievals
    m = ranking_metrics(ranked, *answers_to_csr(qrels), k=k)
    for i in range(n_queries):
        run = [int(d) for d in ranked[i, :k] if d >= 0]
        # Padding inside a row means "nothing at that slot"; keep slots with a sentinel.
        slots = [int(d) if d >= 0 else ("pad", j) for j, d in enumerate(ranked[i, :k])]
        assert m.ndcg[i] == pytest.approx(ndcg_at_k(slots, qrels[i], k), abs=1e-12)
        assert m.recall[i] == pytest.approx(recall_at_k(slots, qrels[i], k), abs=1e-12)
        assert m.mrr[i] == pytest.approx(mrr_at_k(slots, qrels[i], k), abs=1e-12)
        assert m.hit[i] == hit_rate_at_k(run, qrels[i], k)
    assert m.hit.sum() > 0


# ------------------------------------------------------------------ topk_rows


def _reference_topk(scores: np.ndarray, k: int) -> np.ndarray:
    n, n_rec = scores.shape
    out = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        order = sorted(range(n_rec), key=lambda j: (-scores[i, j], j))[:k]
        out[i, : len(order)] = order
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 5, 9, 10, 14])
def test_topk_rows_matches_sorted_reference_with_ties(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(25, 10)).astype(np.float32)  # many ties
    got = topk_rows(scores, k)
    assert got.dtype == np.int64 and got.shape == (25, k)
    np.testing.assert_array_equal(got, _reference_topk(scores, k))


def test_topk_rows_hand_example_and_padding() -> None:
    scores = np.array([[0.2, 0.5, 0.5, 0.1], [1.0, -np.inf, 3.0, 3.0]])
    np.testing.assert_array_equal(topk_rows(scores, 2), [[1, 2], [2, 3]])
    np.testing.assert_array_equal(
        topk_rows(scores, 6), [[1, 2, 0, 3, -1, -1], [2, 3, 0, 1, -1, -1]]
    )
    np.testing.assert_array_equal(topk_rows(np.array([[1, 5, 5]]), 1), [[1]])  # integer scores
    assert topk_rows(np.zeros((0, 4)), 3).shape == (0, 3)


def test_topk_rows_feeds_ranking_metrics() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]])
    m = ranking_metrics(topk_rows(scores, 2), *answers_to_csr([[2], {1: 2.0, 2: 1.0}]), k=2)
    np.testing.assert_allclose(m.mrr, [0.5, 0.5])
    np.testing.assert_allclose(m.ndcg, [1 / L3, (2 / L3) / (2 + 1 / L3)], atol=1e-12)


def test_topk_rows_bad_input() -> None:
    with pytest.raises(ConfigError, match="k: expected an integer >= 1"):
        topk_rows(np.zeros((2, 3)), 0)
    with pytest.raises(ShapeError, match="2-D"):
        topk_rows(np.zeros(3), 1)
    with pytest.raises(NonFiniteError, match="NaN"):
        topk_rows(np.array([[0.0, np.nan]]), 1)


# ------------------------------------------------------------------ answers_to_csr


def test_answers_to_csr_values() -> None:
    indptr, rows, gains = answers_to_csr([{3: 2.0, 1: 1}, [0, 2, 0], [], np.array([7])])
    np.testing.assert_array_equal(indptr, [0, 2, 4, 4, 5])
    np.testing.assert_array_equal(rows, [3, 1, 0, 2, 7])
    np.testing.assert_array_equal(gains, [2.0, 1.0, 1.0, 1.0, 1.0])
    assert indptr.dtype == np.int64 and rows.dtype == np.int64 and gains.dtype == np.float64


@pytest.mark.parametrize(
    ("answers", "error", "match"),
    [
        ([[-1]], AnswerError, r"answers\[0\].*integers >= 0"),
        ([[1], [1.5]], AnswerError, r"answers\[1\]"),
        (["abc"], AnswerError, "mapping of row -> grade"),
        ([5], AnswerError, "got int"),
        ([{1: float("nan")}], NonFiniteError, "finite"),
    ],
)
def test_answers_to_csr_bad_input(answers, error, match) -> None:
    with pytest.raises(error, match=match):
        answers_to_csr(answers)


# ------------------------------------------------------------------ ranking_metrics bad input


def test_ranking_metrics_bad_k() -> None:
    with pytest.raises(ConfigError, match="k: expected an integer >= 1, received 0"):
        ranking_metrics(np.zeros((1, 2), dtype=int), *answers_to_csr([[0]]), k=0)


@pytest.mark.parametrize(
    ("indptr", "rows", "gains", "match"),
    [
        ([0, 1], [0, 1], [1.0, 1.0], r"indptr must have shape \(n_queries \+ 1,\) = \(3,\)"),
        ([0, 1, 3], [0, 1], [1.0, 1.0], "end at len"),
        ([0, 2, 1], [0, 1], [1.0, 1.0], "never decrease"),
        ([1, 1, 2], [0, 1], [1.0, 1.0], "start at 0"),
        ([0, 1, 2], [0, 1], [1.0], "gains must be 1-D with the shape of rows"),
        ([0, 1, 2], [[0], [1]], [1.0, 1.0], "rows must be a 1-D integer array"),
        ([0.0, 1.0, 2.0], [0, 1], [1.0, 1.0], "indptr must hold integers"),
    ],
)
def test_ranking_metrics_mismatched_csr_raises_shape_error(indptr, rows, gains, match) -> None:
    ranked = np.array([[0, 1], [1, 0]])
    with pytest.raises(ShapeError, match=match):
        ranking_metrics(ranked, np.asarray(indptr), np.asarray(rows), np.asarray(gains), k=2)


def test_ranking_metrics_bad_ranked_and_answers() -> None:
    csr = answers_to_csr([[0]])
    with pytest.raises(ShapeError, match="2-D"):
        ranking_metrics(np.array([0, 1]), *csr, k=2)
    with pytest.raises(ShapeError, match="integer row indices"):
        ranking_metrics(np.array([[0.0, 1.0]]), *csr, k=2)
    with pytest.raises(ShapeError, match="-1 for padding, got -2"):
        ranking_metrics(np.array([[0, -2]]), *csr, k=2)
    with pytest.raises(AnswerError, match="query 0 lists row 3 twice"):
        ranking_metrics(
            np.array([[0, 1]]), np.array([0, 2]), np.array([3, 3]), np.array([1.0, 1.0]), k=2
        )
    with pytest.raises(AnswerError, match=">= 0"):
        ranking_metrics(np.array([[0, 1]]), np.array([0, 1]), np.array([-4]), np.array([1.0]))
    with pytest.raises(NonFiniteError):
        ranking_metrics(np.array([[0, 1]]), np.array([0, 1]), np.array([0]), np.array([np.inf]))


# ------------------------------------------------------------------ docstring examples


def test_docstring_examples_run() -> None:
    result = doctest.testmod(metrics_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5
    assert result.failed == 0
