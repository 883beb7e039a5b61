"""The relevance judge of ``update(judge=...)``: plain callables and scripted fake LLMs (right,
wrong, malformed, refusing, slow), caching in the feedback log, budget, resume, trust.

No real LLM and no wall clock: concurrency is driven by events, a "slow" LLM waits on an event
that is never set (its timeout is what ends it).
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time

import numpy as np
import pytest
from topics import N, questions

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.errors import ConfigError, LLMRequestError, UnusableAnswerError
from nudge_rag.feedback import FeedbackEntry, FeedbackLog
from nudge_rag.judge import (
    Candidate,
    JudgeOptions,
    as_judge,
    candidate_digest,
    judge_prompt,
    parse_judgement,
    training_pairs,
)

OPTS = JudgeOptions(min_overlap=4, max_concurrency=4, timeout=5.0)


def truth() -> dict[str, str]:
    return {q: ids[0] for q, ids in questions()}


def vectors(store) -> dict[str, list[float]]:
    return {k: list(v["vector"]) for k, v in store.store.items()}


def seed_log(ft: NudgeEmbeddingFinetuner, n_confirmed: int = 8) -> None:
    """Users confirm the answer of the first ``n_confirmed`` questions; the others were only
    shown a record that does not answer them (d39 answers no question)."""
    for k, (q, ids) in enumerate(questions()):
        if k < n_confirmed:
            ft.record(q, ids, shown=[ids[0], "d39"])
        else:
            ft.record(q, [], shown=["d39"])


def oracle(query: str, candidates: list[Candidate]) -> list[str]:
    want = truth()[query]
    return [c.id for c in candidates if c.id == want]


# ------------------------------------------------------------------ parsing an LLM's answer
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("7", 6),
        ("[3]", 2),
        ("Passage 2", 1),
        ('{"answer": 4}', 3),
        ("The answer is passage 5.", 4),
        ("none", None),
        ("None of the passages answers it.", None),
        ("No passage answers this; passage 3 comes closest", None),
        ("**1**", 0),
    ],
)
def test_parse_judgement_reads_what_llms_answer(answer, expected):
    assert parse_judgement(answer, 9) == expected


@pytest.mark.parametrize("answer", ["", "I am not sure.", "passage 12", "0", None, b"3"])
def test_parse_judgement_refuses_what_names_no_passage(answer):
    with pytest.raises(UnusableAnswerError):
        parse_judgement(answer, 9)


def test_parse_judgement_is_linear_and_cuts_huge_answers():
    t = time.perf_counter()
    with pytest.raises(UnusableAnswerError):  # cut before the number: it is never read
        parse_judgement("x" * 5_000_000 + " 3", 9)
    with pytest.raises(UnusableAnswerError):
        parse_judgement("9" * 2_000_000, 9)  # one long digit run: no number of at most 7 digits
    with pytest.raises(UnusableAnswerError):
        parse_judgement("no\t" * 300_000, 9)
    assert parse_judgement("\ud800 passage 2", 9) == 1  # a lone surrogate is harmless
    assert time.perf_counter() - t < 30  # generous: linear regexes take milliseconds


def test_prompt_numbers_the_passages_and_cuts_them():
    cands = [Candidate("a", "first text"), Candidate("b", "x " * 1000)]
    p = judge_prompt("what is it?", cands, passage_chars=50)
    assert "Question: what is it?" in p and "[1] first text" in p
    assert re.search(r"\[2\] (x ){10,}", p) and len(p) < 1000 and "none" in p


def test_as_judge_tells_functions_from_llms():
    cands = [Candidate("a", "alpha"), Candidate("b", "beta")]

    async def afn(query, candidates):
        return ["b", "not-a-candidate"]

    assert asyncio.run(as_judge(lambda q, c: "a")("q", cands)) == ["a"]
    assert asyncio.run(as_judge(afn)("q", cands)) == ["b"]
    assert asyncio.run(as_judge(lambda prompt: "2")("q", cands)) == ["b"]  # an LLM
    assert asyncio.run(as_judge(lambda prompt: "none")("q", cands)) == []
    with pytest.raises(ConfigError, match="judge must be"):
        as_judge(42)


def test_judge_options_are_checked():
    with pytest.raises(ConfigError, match="min_agreement"):
        JudgeOptions(min_agreement=2.0)
    with pytest.raises(ConfigError, match="max_calls"):
        JudgeOptions(max_calls=-1)
    with pytest.raises(ConfigError):
        JudgeOptions(candidates=0)


# ------------------------------------------------------------------ the log as the cache
def test_judge_entries_round_trip_and_never_collapse_with_users(tmp_path):
    log = FeedbackLog(tmp_path / "fb.jsonl", fsync=False)
    log.record("q", ["d1"], source="chat")
    log.record("q", ["d1"], source="judge", shown=["d1", "d2"], candidates="abc")
    log.record("q", [], source="judge", shown=["d3"], candidates="def")
    log.record("q", [], shown=["d9"])  # a user impression, not the judge's "none"
    again = FeedbackLog(tmp_path / "fb.jsonl", fsync=False)
    entries = again.entries()
    assert len(entries) == 4
    assert [e.candidates for e in entries] == ["", "abc", "def", ""]
    assert entries[0].source == "chat" and entries[1].source == "judge"
    e = entries[2]
    assert FeedbackEntry.from_json(e.to_json()) == e and e.ids == {} and e.shown == ("d3",)


def test_update_asks_every_logged_query_once_and_trains_on_the_answers(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="judge1", gamma=0.2)
    seed_log(ft)
    calls: list[str] = []

    def judge(query, candidates):
        calls.append(query)
        assert len(candidates) == N  # k = 100 reaches every record of this small store
        assert all(isinstance(c.text, str) and c.text for c in candidates)
        return oracle(query, candidates)

    ft.update(judge=judge, judge_options=OPTS)
    rep = ft.report
    assert rep is not None and rep.judge is not None
    j = rep.judge
    assert j.n_queries == 32 and j.n_judged == 32 and j.n_calls == 32 and len(calls) == 32
    assert j.n_labels == 32 and j.n_none == 0
    assert j.trusted and j.agreement == 1.0 and j.n_overlap == 8
    assert j.n_used == 24  # the unconfirmed queries; the confirmed ones agree
    assert rep.n_train == 32  # users' 8 + the judge's 24
    judged = [e for e in ft.feedback if e.candidates]
    assert len(judged) == 32 and {e.source for e in judged} == {"judge"}
    assert all(e.candidates == candidate_digest(e.query, list(e.shown)) for e in judged)
    assert "judge: 32 of 32 queries judged" in rep.summary()
    # A second update asks nothing: every answer is in the log (the cache).
    calls.clear()
    ft.update(judge=judge, judge_options=OPTS)
    assert calls == [] and ft.report is not None and ft.report.judge is not None
    assert ft.report.judge.n_calls == 0 and ft.report.judge.n_cached == 32
    assert ft.report.n_train == 32
    # Another replica (a new finetuner on the same log) shares the judgements.
    other = NudgeEmbeddingFinetuner(lc_topics, store_id="judge1", gamma=0.2)
    other.update(judge=judge, judge_options=OPTS)
    assert calls == [] and other.report is not None and other.report.n_train == 32


def test_judge_labels_equal_full_judgements(lc_topics):
    """Users' 8 confirmations + a perfect judge fit exactly what 32 full judgements fit."""
    from langchain_core.vectorstores import InMemoryVectorStore
    from topics import texts

    from nudge_rag.testing import BagOfWordsEmbedder

    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="judge2", gamma=0.2)
    seed_log(ft)
    ft.update(judge=oracle, judge_options=OPTS)
    fresh = InMemoryVectorStore.from_texts(
        texts(), BagOfWordsEmbedder(dim=64).as_langchain(), ids=[f"d{i}" for i in range(N)]
    )
    order = [e.query for e in ft.feedback if not e.candidates]
    NudgeEmbeddingFinetuner(fresh, store_id="fresh2", gamma=0.2).finetune(
        [(q, [truth()[q]]) for q in order]
    )
    assert vectors(lc_topics) == vectors(fresh)


def test_a_random_judge_is_not_trusted_and_changes_nothing(lc_topics):
    users_only = NudgeEmbeddingFinetuner(lc_topics, store_id="judge3", gamma=0.2)
    seed_log(users_only)
    users_only.update()
    want = vectors(lc_topics)
    users_only.revert()
    rng = random.Random(0)

    def noise(query, candidates):
        return [rng.choice(candidates).id]

    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="judge3b", gamma=0.2)
    seed_log(ft)
    ft.update(judge=noise, judge_options=OPTS)
    rep = ft.report
    assert rep is not None and rep.judge is not None
    assert rep.judge.n_judged == 32 and not rep.judge.trusted
    assert rep.judge.agreement is not None and rep.judge.agreement < OPTS.min_agreement
    assert rep.n_train == 8 and "not trusted" in rep.judge.summary()
    assert vectors(lc_topics) == want


def test_users_outrank_the_judge():
    """A judge label on a record the user was shown and passed over is dropped; users'
    confirmations stay whatever the judge says."""
    e = [
        FeedbackEntry("q1", {"a": 1.0}, 0.0, "chat", ("a", "b")),
        FeedbackEntry("q1", {"b": 1.0}, 1.0, "judge", ("a", "b", "c"), candidates="x"),
        FeedbackEntry("q2", {}, 2.0, "chat", ("c",)),
        FeedbackEntry("q2", {"c": 1.0}, 3.0, "judge", ("c", "d"), candidates="y"),
        FeedbackEntry("q3", {}, 4.0, "chat", ("c",)),
        FeedbackEntry("q3", {"d": 1.0}, 5.0, "judge", ("c", "d"), candidates="z"),
        FeedbackEntry("q4", {"e": 1.0}, 6.0, "chat", ("e",)),
        FeedbackEntry("q4", {}, 7.0, "judge", ("e", "f"), candidates="w"),
    ]
    pairs, trust = training_pairs(e, JudgeOptions(min_agreement=0.0))
    assert pairs == [("q1", {"a": 1.0}), ("q3", {"d": 1.0}), ("q4", {"e": 1.0})]
    assert trust.n_contradicting == 2 and trust.n_used == 1
    assert trust.n_overlap == 2 and trust.agreement == 0.0
    strict, t2 = training_pairs(e, JudgeOptions(min_overlap=0))
    assert not t2.trusted and strict == [("q1", {"a": 1.0}), ("q4", {"e": 1.0})]


def test_the_budget_caps_calls_and_the_rest_waits(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="judge4", gamma=0.2)
    seed_log(ft)
    asked: list[str] = []

    def judge(query, candidates):
        asked.append(query)
        return oracle(query, candidates)

    ft.update(judge=judge, judge_budget=5, judge_options=OPTS)
    assert ft.report is not None and ft.report.judge is not None
    j = ft.report.judge
    assert j.n_calls == 5 and j.n_judged == 5 and j.n_waiting == 27
    unconfirmed = [q for q, _ in questions()[8:]]
    assert asked == unconfirmed[:5]  # unconfirmed queries first, oldest first
    ft.update(judge=judge, judge_budget=100, judge_options=OPTS)
    assert ft.report.judge is not None and ft.report.judge.n_calls == 27
    assert len(set(asked)) == 32 == len(asked)


class Killed(BaseException):
    """What a kill looks like to the code in flight."""


def test_a_killed_run_resumes_where_it_stopped(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="judge5", gamma=0.2)
    seed_log(ft)
    asked: list[str] = []

    def dying(query, candidates):
        if len(asked) == 6:
            raise Killed
        asked.append(query)
        return oracle(query, candidates)

    with pytest.raises(Killed):
        ft.update(judge=dying, judge_options=JudgeOptions(max_concurrency=1, min_overlap=4))
    assert sum(1 for e in ft.feedback if e.candidates) == 6
    again: list[str] = []

    def judge(query, candidates):
        again.append(query)
        return oracle(query, candidates)

    restarted = NudgeEmbeddingFinetuner(lc_topics, store_id="judge5", gamma=0.2)
    restarted.update(judge=judge, judge_options=OPTS)
    assert not set(again) & set(asked) and len(again) == 26


def test_a_query_found_unanswered_is_asked_again_only_about_new_candidates(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="judge6", gamma=0.2)
    seed_log(ft, n_confirmed=32)
    ft.record("a query no record answers", [], shown=["d1"])
    seen: list[list[str]] = []

    def judge(query, candidates):
        if query == "a query no record answers":
            seen.append([c.id for c in candidates])
            return []
        return oracle(query, candidates)

    ft.update(judge=judge, judge_options=JudgeOptions(candidates=10, min_overlap=4))
    assert len(seen) == 1 and len(seen[0]) >= 10
    ft.update(judge=judge, judge_options=JudgeOptions(candidates=10, min_overlap=4))
    assert len(seen) == 1  # the same candidates: not asked again
    ft.update(judge=judge, judge_options=JudgeOptions(candidates=40, min_overlap=4))
    assert len(seen) == 2 and not set(seen[1]) & set(seen[0])  # only the new ones
    assert ft.report is not None and ft.report.judge is not None
    assert ft.report.judge.n_none == 1


# ------------------------------------------------------------------ the LLM path
def passage_of(prompt: str, rid: str, texts: list[str]) -> int:
    """The number the prompt gives the passage of record ``rid`` (texts: the topic corpus)."""
    text = texts[int(rid[1:])]
    m = re.search(r"\[(\d+)\] " + re.escape(text) + "\n", prompt + "\n")
    assert m is not None
    return int(m.group(1))


def query_of(prompt: str) -> str:
    m = re.search(r"Question: (.*)\n", prompt)
    assert m is not None
    return m.group(1)


def test_an_llm_judge_that_answers_right(lc_topics):
    from topics import texts

    async def llm(prompt: str) -> str:
        return f"Passage {passage_of(prompt, truth()[query_of(prompt)], texts())}"

    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="llm1", gamma=0.2)
    seed_log(ft)
    ft.update(judge=llm, judge_options=OPTS)
    assert ft.report is not None and ft.report.judge is not None
    assert ft.report.judge.trusted and ft.report.judge.n_used == 24
    assert ft.report.n_train == 32


def test_an_llm_judge_that_answers_wrong_is_not_trusted(lc_topics):
    from topics import texts

    def llm(prompt: str) -> str:  # a sync LLM: runs in a daemon thread
        right = passage_of(prompt, truth()[query_of(prompt)], texts())
        return str(right % 40 + 1)  # always another passage

    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="llm2", gamma=0.2)
    seed_log(ft)
    ft.update(judge=llm, judge_options=OPTS)
    assert ft.report is not None and ft.report.judge is not None
    assert ft.report.judge.agreement == 0.0 and not ft.report.judge.trusted
    assert ft.report.n_train == 8


class FakeLangChainLLM:
    """A LangChain-like chat model whose ``ainvoke`` answers from a script."""

    def __init__(self, answers: list[object]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def ainvoke(self, prompt: str) -> object:
        self.calls += 1
        return self.answers[(self.calls - 1) % len(self.answers)]


def test_a_malformed_answer_is_retried_then_counted_failed(lc_topics):
    llm = FakeLangChainLLM(["I cannot decide.", {"content": "no idea"}, None])
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="llm3", gamma=0.2)
    seed_log(ft)
    ft.update(judge=llm, judge_options=JudgeOptions(retries=2, min_overlap=4))
    assert ft.report is not None and ft.report.judge is not None
    j = ft.report.judge
    assert j.n_judged == 0 and j.n_failed == 32 and j.n_calls == 96 == llm.calls
    assert j.rejected == {"no_judgement": 64, "not_text": 32}
    assert not [e for e in ft.feedback if e.candidates]  # nothing cached: asked again later
    assert ft.report.n_train == 8  # the users' feedback still trains


class Refused(Exception):
    status_code = 401


def test_a_refused_request_stops_the_run_with_the_providers_message(lc_topics):
    calls = 0

    async def llm(prompt: str) -> str:
        nonlocal calls
        calls += 1
        raise Refused("Incorrect API key provided: sk-...abcd")

    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="llm4", gamma=0.2)
    seed_log(ft)
    before = vectors(lc_topics)
    with pytest.raises(LLMRequestError, match="Incorrect API key") as info:
        ft.update(judge=llm, judge_options=JudgeOptions(max_concurrency=1, min_overlap=4))
    assert info.value.status_code == 401 and calls == 1  # not retried
    assert info.value.provider_message == "Incorrect API key provided: sk-...abcd"
    assert vectors(lc_topics) == before  # stopped before any refit


def test_a_slow_llm_times_out_and_waits_for_the_next_update(lc_topics):
    never = threading.Event()

    def llm(prompt: str) -> str:  # hangs: its daemon thread is abandoned at the timeout
        never.wait()
        return "1"

    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="llm5", gamma=0.2)
    seed_log(ft)
    ft.update(
        judge=llm,
        judge_budget=2,
        judge_options=JudgeOptions(timeout=0.05, retries=0, min_overlap=4),
    )
    assert ft.report is not None and ft.report.judge is not None
    j = ft.report.judge
    assert j.n_failed == 2 and j.rejected == {"timeout": 2} and j.n_judged == 0
    never.set()


def test_judge_calls_run_concurrently_within_the_bound(lc_topics):
    bound = 3
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    full = asyncio.Event()
    loop_ref: list[asyncio.AbstractEventLoop] = []

    async def llm(prompt: str) -> str:
        if not loop_ref:
            loop_ref.append(asyncio.get_running_loop())
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            if state["now"] == bound:
                full.set()
        await full.wait()  # every call waits until `bound` are in flight together
        with lock:
            state["now"] -= 1
        return "none"

    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="llm6", gamma=0.2)
    seed_log(ft)
    ft.update(judge=llm, judge_options=JudgeOptions(max_concurrency=bound, min_overlap=4))
    assert state["peak"] == bound
    assert ft.report is not None and ft.report.judge is not None
    assert ft.report.judge.n_none == 32


# ------------------------------------------------------------------ too little feedback
def test_too_little_feedback_is_reported_not_raised(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, store_id="few")
    before = vectors(lc_topics)
    ft.record("question alpha2 beta3 topic1 v0", ["d1"])
    ft.record("question alpha3 beta4 topic2 v0", ["d2"])
    retriever = ft.update()
    assert retriever is not None
    rep = ft.report
    assert rep is not None and not rep.written and rep.n_moved == 0 and rep.n_train == 2
    assert "not enough feedback yet" in rep.note and "not enough feedback yet" in rep.summary()
    assert vectors(lc_topics) == before
    # with a perfect judge the same log has enough: its labels train, users' confirmations
    # alone are held out to choose γ on (one of the two)
    for q, _ in questions()[2:]:
        ft.record(q, [], shown=["d39"])
    ft.update(judge=oracle, judge_options=JudgeOptions(min_overlap=2))
    assert ft.report is not None and "not enough" not in ft.report.note
    assert ft.report.n_val == 1 and ft.report.judge is not None and ft.report.judge.n_used == 29


def test_only_users_confirmations_are_held_out_for_gamma():
    """Coverage counts every query, but only users' own pairs may be held out."""
    from nudge_rag.core import QuerySet
    from nudge_rag.judge import users_holdout

    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 4))
    answers = [{0: 1.0}, {0: 1.0}, {1: 1.0}, {1: 1.0}, {2: 1.0}, {2: 1.0}]
    qs = QuerySet(q / np.linalg.norm(q, axis=1, keepdims=True), answers)
    eligible = [True, False, True, False, False, False]
    for seed in range(5):
        held = users_holdout(qs, eligible, 0.99, seed=seed)
        assert set(held.tolist()) == {0, 2}  # each covered by a judge-labelled twin
    with pytest.raises(ConfigError, match="cannot hold out"):
        users_holdout(qs, [False] * 6, 0.5)
    assert users_holdout(qs, [False] * 4 + [True, False], 0.5).tolist() == [4]
