"""QuerySet validation: every malformed input gets its own typed error naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from nudge_rag import QuerySet
from nudge_rag.errors import (
    AnswerError,
    DimensionMismatchError,
    NonFiniteError,
    NudgeInputError,
    ShapeError,
    ZeroVectorError,
)

Q = np.eye(3, 4, dtype=np.float32)


def test_binary_and_graded_answers():
    qs = QuerySet(Q, [[0], [1, 2], {3: 2.0, 4: 0.0, 5: 1.0}])
    assert len(qs) == 3 and qs.dim == 4
    assert qs.answer_rows(1).tolist() == [1, 2]
    assert qs.answer_rows(2).tolist() == [3, 5]  # grade 0 is "not relevant"
    assert qs.answer_gains(2).tolist() == [2.0, 1.0]
    assert qs.answers() == [{0: 1.0}, {1: 1.0, 2: 1.0}, {3: 2.0, 5: 1.0}]


def test_inputs_are_copied_not_frozen():
    q = Q.copy()
    qs = QuerySet(q, [[0], [1], [2]])
    q[0, 0] = 9.0  # the caller's array stays theirs
    assert q.flags.writeable and qs.embeddings[0, 0] == 1.0
    assert not qs.embeddings.flags.writeable


def test_float64_is_kept_as_float32():
    assert QuerySet(Q.astype(np.float64), [[0], [1], [2]]).embeddings.dtype == np.float32


def test_subset_and_concat():
    qs = QuerySet(Q, [[0], [1, 2], {3: 2.0}])
    sub = qs.subset([2, 0])
    assert sub.answers() == [{3: 2.0}, {0: 1.0}]
    np.testing.assert_array_equal(sub.embeddings, Q[[2, 0]])
    both = QuerySet.concat(sub, qs)
    assert len(both) == 5 and both.answers()[2:] == qs.answers()


@pytest.mark.parametrize(
    ("emb", "answers", "kw", "error", "match"),
    [
        (np.ones(4, np.float32), [[0]], {}, ShapeError, "2-D"),
        (np.ones((2, 4), np.int64), [[0], [1]], {}, ShapeError, "floating-point"),
        (np.ones((2, 0), np.float32), [[0], [1]], {}, ShapeError, "width 0"),
        (Q, [[0], [1]], {}, ShapeError, "3 query vectors but 2 answer entries"),
        (Q, [[0], [], [1]], {}, AnswerError, "query 1 has no answer"),
        (Q, [[0], {1: 0.0}, [1]], {}, AnswerError, "query 1 has no answer"),
        (Q, [[0], [-1], [1]], {}, AnswerError, "rows must be >= 0"),
        (Q, [[0], ["a"], [1]], {}, AnswerError, "rows must be integers"),
        (Q, [[0], [1.5], [1]], {}, AnswerError, "rows must be integers"),
        (Q, [[0], [True], [1]], {}, AnswerError, "rows must be integers"),
        (Q, [[0], {1: "x"}, [1]], {}, AnswerError, "must be a number"),
        (Q, [[0], {1: float("nan")}, [1]], {}, AnswerError, "must be finite"),
        (Q, [[0], 7, [1]], {}, AnswerError, "list of record rows"),
        (Q, "abc", {}, AnswerError, "one entry per query"),
        (
            Q,
            [[0], [1], [9]],
            {"n_records": 5},
            AnswerError,
            "query 2 names record row 9, but there are only 5",
        ),
        (
            Q,
            [[0], [1], [2]],
            {"dim": 8},
            DimensionMismatchError,
            "width 4 but record vectors have width 8",
        ),
    ],
)
def test_bad_input_raises_typed_error(emb, answers, kw, error, match):
    with pytest.raises(error, match=match):
        QuerySet(emb, answers, **kw)


def test_non_finite_and_zero_vectors_name_the_query():
    bad = Q.copy()
    bad[1, 2] = np.inf
    with pytest.raises(NonFiniteError, match="query 1"):
        QuerySet(bad, [[0], [1], [2]])
    bad = Q.copy()
    bad[2] = 0
    with pytest.raises(ZeroVectorError, match="query 2"):
        QuerySet(bad, [[0], [1], [2]])


def test_errors_are_value_errors_too():
    with pytest.raises(ValueError):
        QuerySet(Q, [[0]])
    assert issubclass(ShapeError, NudgeInputError)


@pytest.mark.parametrize(
    "answers",
    [
        [[2, 1, 2], (0,), [1, 1]],  # all plain lists: the vectorised path
        [[2, 1, 2], (0,), np.array([1, 1])],  # an array entry: the per-query path
        [[2, 1, 2], {0: 1.0}, [1, 1]],  # a mapping entry: the checked path
    ],
)
def test_duplicate_rows_are_dropped_keeping_first_appearance(answers):
    q = QuerySet(np.eye(3, dtype=np.float32), answers)
    assert q.rows.tolist() == [2, 1, 0, 1]
    assert q.indptr.tolist() == [0, 2, 3, 4]
    assert q.gains.tolist() == [1.0] * 4


def test_graded_dicts_fast_path_equals_the_checked_path():
    from collections import OrderedDict

    emb = np.eye(3, dtype=np.float32)
    plain = [{2: 1.0, 1: 0.0, 0: 2}, {0: 1}, {1: 3.5}]
    mixed = [OrderedDict(plain[0]), *plain[1:]]  # one non-dict mapping: the checked path
    fast, checked = QuerySet(emb, plain), QuerySet(emb, mixed)
    assert fast.rows.tolist() == checked.rows.tolist() == [2, 0, 0, 1]
    assert fast.gains.tolist() == checked.gains.tolist() == [1.0, 2.0, 1.0, 3.5]
    assert fast.indptr.tolist() == checked.indptr.tolist() == [0, 2, 3, 4]
