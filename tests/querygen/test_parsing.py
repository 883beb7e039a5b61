from __future__ import annotations

import pytest

from nudge_rag.errors import ConfigError
from nudge_rag.querygen.parsing import (
    clean_questions,
    longest_common_words,
    near_duplicate,
    parse_questions,
)
from nudge_rag.querygen.prompts import DEFAULT_PROMPT, check_prompt, render_prompt

A, B, C = "What does NUDGE move?", "Why are record vectors moved?", "How is gamma chosen?"

PARSE_CASES = [
    ("json list", f'["{A}", "{B}"]', [A, B]),
    ("json fenced", f'```json\n["{A}", "{B}"]\n```', [A, B]),
    ("json fence no language", f'```\n["{A}"]\n```', [A]),
    ("json then prose", f'["{A}", "{B}"]\nThese questions cover the main facts.', [A, B]),
    ("preamble then json", f'Sure! Here are 2 questions:\n["{A}", "{B}"]', [A, B]),
    ("json objects", f'[{{"question": "{A}"}}, {{"question": "{B}"}}]', [A, B]),
    ("json dict of list", f'{{"questions": ["{A}", "{B}"]}}', [A, B]),
    ("truncated json", f'["{A}", "{B}", "How is gam', [A, B]),
    ("truncated json in fence", f'```json\n["{A}", "Why are rec', [A]),
    ("numbered dot", f"1. {A}\n2. {B}\n3. {C}", [A, B, C]),
    ("numbered paren", f"1) {A}\n2) {B}", [A, B]),
    ("numbered in parens", f"(1) {A}\n(2) {B}", [A, B]),
    ("q labels", f"Q1: {A}\nQ2: {B}", [A, B]),
    ("question labels", f"Question 1: {A}\nQuestion 2: {B}", [A, B]),
    ("dash bullets", f"- {A}\n- {B}", [A, B]),
    ("star bullets", f"* {A}\n* {B}", [A, B]),
    ("unicode bullets", f"• {A}\n• {B}", [A, B]),
    ("bold numbered", f"1. **{A}**\n2. **{B}**", [A, B]),
    ("quoted lines", f'1. "{A}"\n2. "{B}"', [A, B]),
    ("preamble numbered", f"Here are 3 questions:\n\n1. {A}\n2. {B}\n3. {C}", [A, B, C]),
    (
        "preamble and outro",
        f"Sure, here you go:\n1. {A}\n2. {B}\nLet me know if you need more.",
        [A, B],
    ),
    ("plain lines", f"{A}\n{B}", [A, B]),
    ("plain lines with preamble", f"Here are two questions:\n{A}\n{B}", [A, B]),
    ("truncated last line", f"1. {A}\n2. {B}\n3. How is gam", [A, B]),
    ("crlf", f"1. {A}\r\n2. {B}\r\n", [A, B]),
    ("empty", "", []),
    ("whitespace", "  \n\t ", []),
    ("none", None, []),
    ("empty json", "[]", []),
    ("only preamble", "Here are the questions:", []),
]


@pytest.mark.parametrize(
    ("answer", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse_questions(answer: str | None, expected: list[str]) -> None:
    assert parse_questions(answer) == expected


CHUNK = (
    "NUDGE moves the stored record embeddings toward the training queries they answer, within "
    "a bound gamma chosen on validation queries, and leaves the embedding model untouched."
)

CLEAN_CASES = [
    ("exact duplicate", [A, A, B], {}, [A, B]),
    ("case and punctuation duplicate", [A, "what does nudge move", B], {}, [A, B]),
    ("near duplicate", [A, "What exactly does NUDGE move?", B], {}, [A, B]),
    (
        "near duplicate kept when off",
        [A, "What does NUDGE move then?"],
        {"near_threshold": None},
        [A, "What does NUDGE move then?"],
    ),
    ("too short", ["Why?", "What NUDGE?", A], {}, [A]),
    (
        "verbatim copy",
        ["NUDGE moves the stored record embeddings toward the training queries they answer?", A],
        {},
        [A],
    ),
    (
        "short copy of a phrase is fine",
        ["Which bound is chosen on validation queries?", A],
        {},
        ["Which bound is chosen on validation queries?", A],
    ),
    ("at most n", [A, B, C], {"n": 2}, [A, B]),
]


@pytest.mark.parametrize(
    ("qs", "kw", "expected"), [c[1:] for c in CLEAN_CASES], ids=[c[0] for c in CLEAN_CASES]
)
def test_clean_questions(qs: list[str], kw: dict, expected: list[str]) -> None:
    assert clean_questions(qs, context=CHUNK, **kw) == expected


def test_near_duplicate_and_copy_length() -> None:
    assert near_duplicate("What is the dose of statins?", "what is the dose of statins")
    assert not near_duplicate("What is the dose of statins?", "Who funded the statin trial?")
    assert longest_common_words("does NUDGE move the stored record embeddings?", CHUNK) == 4
    assert longest_common_words("", CHUNK) == 0


def test_prompt_checks() -> None:
    assert check_prompt(DEFAULT_PROMPT) == DEFAULT_PROMPT
    with pytest.raises(ConfigError, match=r"\{n\}"):
        check_prompt("Write questions about {context}")
    with pytest.raises(ConfigError, match=r"\{context\}"):
        check_prompt("Write {n} questions")
    with pytest.raises(ConfigError, match="unknown"):
        check_prompt("Write {n} questions about {contxt} {context}")
    # other braces (a JSON example) are fine, and braces inside the chunk are left alone
    t = check_prompt('{n} questions on {context} as {"questions": [...]}')
    assert render_prompt(t, "a {n} b", 3) == '3 questions on a {n} b as {"questions": [...]}'
