"""Property tests: whatever an LLM answers, parsing and cleaning stay bounded and typed.

Inputs: arbitrary text, text assembled from the pieces that broke the old regexes (runs of
spaces after "Q", bullets, quotes, fences, brackets, bold markers), bytes decoded with
``surrogateescape`` (lone surrogates), and 1 MB answers. Example counts are kept small so the
module runs in a few seconds; the linear-time claim itself is shown by
``benchmarks/bench_parsing.py``, not by a timed test.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nudge_rag.errors import NudgeError
from nudge_rag.querygen.parsing import (
    MAX_QUESTION_CHARS,
    clean_questions,
    near_duplicate,
    normalize_question,
    parse_questions,
)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis folder in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BIG = settings(SETTINGS, max_examples=8)

CONTEXT = "NUDGE moves the stored record embeddings toward the training queries they answer."

PIECES = [
    "Q",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "- ",
    "* ",
    "• ",
    "1. ",
    "(2) ",
    "Q3: ",
    "Question 4.",
    "a) ",
    '"',
    "'",
    "“",
    "”",
    "`",
    "```",
    "```json\n",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "\\",
    '\\"',
    "**",
    '"questions": ',
    "Here are 3 questions:",
    "What does NUDGE move?",
    "Why are record vectors moved?",
    "How is gamma chosen",
    "?",
    "\ud800",
    "\udcff",
    "ﷺ",  # one char that NFKC expands to 18
    "\u00a0",
]

#: Text built from degenerate pieces, each repeated up to 300 times.
degenerate = st.lists(
    st.tuples(st.sampled_from(PIECES), st.integers(1, 300)), min_size=1, max_size=12
).map(lambda parts: "".join(p * k for p, k in parts))

#: Bytes garbage as a lenient decoder would hand it over: lone surrogates for bad bytes.
garbage = st.binary(max_size=2000).map(lambda b: b.decode("utf-8", "surrogateescape"))

#: About 1 MB: one degenerate piece (or a short mix) repeated.
megabyte = st.lists(st.sampled_from(PIECES), min_size=1, max_size=4).map(
    lambda ps: "".join(ps) * (1_000_000 // len("".join(ps)) + 1)
)


def check_parsed(qs: list[str]) -> None:
    assert isinstance(qs, list)
    for q in qs:
        assert isinstance(q, str) and q
        assert len(q) <= MAX_QUESTION_CHARS
        q.encode("utf-8")  # no lone surrogate survives


def check_cleaned(kept: list[str], n: int | None = None) -> None:
    check_parsed(kept)
    keys = [normalize_question(q) for q in kept]
    assert len(set(keys)) == len(keys)  # unique, even up to case and punctuation
    assert all(keys)
    if n is not None:
        assert len(kept) <= n


def roundtrip(text: str, n: int | None = None) -> list[str]:
    try:
        parsed = parse_questions(text)
    except NudgeError:  # the only kind of error allowed (it is never raised for a str)
        raise AssertionError("parse_questions raised on text") from None
    check_parsed(parsed)
    kept = clean_questions(parsed, context=CONTEXT, n=n)
    check_cleaned(kept, n)
    # cleaning is idempotent: generation re-cleans cached questions with the same settings
    assert clean_questions(kept, context=CONTEXT, n=n) == kept
    return kept


@SETTINGS
@given(st.text(max_size=2000))
def test_arbitrary_text(text: str) -> None:
    roundtrip(text)


@SETTINGS
@given(degenerate, st.sampled_from([None, 2]))
def test_degenerate_pieces(text: str, n: int | None) -> None:
    roundtrip(text, n)


@SETTINGS
@given(garbage)
def test_bytes_garbage_with_lone_surrogates(text: str) -> None:
    roundtrip(text)


@SETTINGS
@given(st.lists(st.text(max_size=200) | degenerate, max_size=8))
def test_json_lists_of_anything(items: list[str]) -> None:
    for text in (json.dumps(items), json.dumps(items, ensure_ascii=False)[:-3]):  # also cut off
        roundtrip(text)


@BIG
@given(megabyte)
def test_one_megabyte_answers(text: str) -> None:
    assert len(text) >= 1_000_000
    roundtrip(text, n=2)
    # cleaning alone, handed the raw lines or the whole answer as one "question"
    check_cleaned(clean_questions([*text.split("\n")[:2000], text], context=CONTEXT, n=5), 5)


@SETTINGS
@given(st.text(max_size=600), st.text(max_size=600))
def test_near_duplicate_is_symmetric_and_reflexive(a: str, b: str) -> None:
    assert near_duplicate(a, b) == near_duplicate(b, a)
    assert near_duplicate(a, a)


def test_questions_over_the_cap_are_dropped_and_counted() -> None:
    long_q = "What is " + "very " * 200 + "long?"
    drops: dict[str, int] = {}
    got = parse_questions(f"1. {long_q}\n2. What does NUDGE move?", drops=drops)
    assert got == ["What does NUDGE move?"] and drops == {"too_long": 1}
    drops = {}
    kept = clean_questions([long_q, "What does NUDGE move?"], drops=drops)
    assert kept == ["What does NUDGE move?"] and drops == {"too_long": 1}
    # a 1 MB answer is cut to the cap first: no 1 MB question, the cut last line is dropped
    assert parse_questions("What is " + "x" * 1_000_000 + "?") == []
    assert parse_questions("What is " + "x" * 1_000, max_question_chars=None) == [
        "What is " + "x" * 1_000
    ]


def test_clean_counts_every_drop_by_reason() -> None:
    drops: dict[str, int] = {}
    qs = [
        "What does NUDGE move?",
        "what does nudge move",  # duplicate
        "What exactly does NUDGE move?",  # near-duplicate
        "Why?",  # too short
        "NUDGE moves the stored record embeddings toward the training queries they answer?",
        "How is gamma chosen on validation?",
        "Which store does it write to?",  # beyond n=2
    ]
    kept = clean_questions(qs, context=CONTEXT, n=2, drops=drops)
    assert kept == ["What does NUDGE move?", "How is gamma chosen on validation?"]
    assert drops == {"duplicate": 1, "near_duplicate": 1, "too_short": 1, "copy": 1, "extra": 1}


def test_near_duplicates_by_characters_as_before() -> None:
    # typos and inflections, which the old SequenceMatcher rule caught and word sets miss
    assert near_duplicate("What is the dose of statins?", "What is the doses of statin?")
    assert near_duplicate("nontoxic head lice treatment", "nontoxic head lice treatmant")
    assert not near_duplicate("What is the dose of statins?", "Who funded the statin trial?")
    assert not near_duplicate("Which gene regulates insulin?", "Which gene regulates leptin?")


def test_lone_surrogates_become_replacement_characters() -> None:
    assert parse_questions('["What is \\ud800 here?"]') == ["What is \ufffd here?"]
    assert parse_questions("1. What is \udcff here?") == ["What is \ufffd here?"]
    assert parse_questions('["What is \\ud83d\\ude00 here?"]') == ["What is 😀 here?"]


def test_json_nested_too_deep_is_read_as_prose() -> None:
    assert parse_questions("[" * 100_000) == []
    assert parse_questions('{"questions": ' * 50_000) == []
