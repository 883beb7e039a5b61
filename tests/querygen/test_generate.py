from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nudge_rag.errors import ConfigError
from nudge_rag.judged import QADataset
from nudge_rag.querygen import (
    GeneratedDataset,
    OfflineGenerator,
    QueryGenerationError,
    RoundTrip,
    generate_queries,
)
from nudge_rag.testing import BagOfWordsEmbedder

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]


def make_chunks(n: int) -> dict[str, str]:
    return {
        f"c{i}": f"Chunk {i} is about {WORDS[i % len(WORDS)]} and {WORDS[(3 * i + 1) % len(WORDS)]} "
        f"number {i}. It says more about topic {i}."
        for i in range(n)
    }


def chunk_of(prompt: str) -> str:
    m = re.search(r"Chunk (\d+) is about", prompt)
    assert m, prompt
    return m.group(1)


def answer_for(prompt: str, n: int = 2) -> str:
    i = chunk_of(prompt)
    forms = [
        "Which topic does chunk {i} cover?",
        "How many facts are stated in passage number {i}?",
        "Who wrote section {i} of the report?",
        "Where is item {i} discussed at length?",
    ]
    return json.dumps([f.format(i=i) for f in forms[:n]])


class SleepyLLM:
    """An async fake that sleeps and records how many calls run at once."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.active = 0
        self.peak = 0
        self.calls: list[str] = []

    async def __call__(self, prompt: str) -> str:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.calls.append(chunk_of(prompt))
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        return answer_for(prompt)


class ScriptedLLM:
    """Returns, per chunk, the scripted answers in turn (exceptions are raised)."""

    def __init__(self, script: dict[str, list[object]], default: object = None) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.default = default
        self.calls: list[str] = []

    async def __call__(self, prompt: str) -> str:
        i = chunk_of(prompt)
        self.calls.append(i)
        todo = self.script.get(i)
        out = (
            todo.pop(0)
            if todo
            else (self.default if self.default is not None else answer_for(prompt))
        )
        if isinstance(out, BaseException):
            raise out
        return str(out)


# --------------------------------------------------------------------------------- contract
def test_contract_and_json_roundtrip(tmp_path: Path) -> None:
    chunks = make_chunks(5)
    ds = generate_queries(chunks, llm=SleepyLLM(0), queries_per_chunk=2, max_concurrency=16)
    assert isinstance(ds, GeneratedDataset) and isinstance(ds, QADataset)
    assert len(ds.queries) == 10 and ds.corpus == chunks
    assert ds.relevant_docs["c3#1"] == ["c3"]
    assert ds.queries["c3#1"] == "How many facts are stated in passage number 3?"
    assert ds.stats is not None and ds.stats.n_queries == 10 and ds.stats.llm_calls == 5
    ds.save_json(tmp_path / "d.json")
    back = QADataset.from_json(tmp_path / "d.json")
    assert back.queries == ds.queries and back.relevant_docs == ds.relevant_docs
    assert ds.training_pairs()[0] == ("Which topic does chunk 0 cover?", ["c0"])


@pytest.mark.parametrize("bound", [1, 4, 16])
def test_concurrency_never_exceeds_the_bound(bound: int) -> None:
    llm = SleepyLLM(0.01)
    ds = generate_queries(make_chunks(40), llm=llm, max_concurrency=bound)
    assert llm.peak == min(bound, 40)
    assert ds.stats is not None and ds.stats.n_generated == 40 and len(llm.calls) == 40


def test_concurrency_is_real_for_sync_callables() -> None:
    lock = threading.Lock()
    state = {"active": 0, "peak": 0}

    def slow(prompt: str) -> str:
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.05)
        with lock:
            state["active"] -= 1
        return answer_for(prompt)

    t0 = time.perf_counter()
    ds = generate_queries(make_chunks(16), llm=slow, max_concurrency=8)
    assert time.perf_counter() - t0 < 0.05 * 16 / 2  # far below sequential 0.8 s
    assert state["peak"] == 8 and len(ds.queries) == 32


def test_options_are_validated() -> None:
    chunks = make_chunks(2)
    for kw in (
        {"queries_per_chunk": 0},
        {"max_concurrency": 0},
        {"max_chunks": 0},
        {"retries": -1},
        {"on_error": "ignore"},
        {"timeout": 0},
        {"prompt": "no placeholders"},
    ):
        with pytest.raises(ConfigError):
            generate_queries(chunks, llm=SleepyLLM(0), **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="llm must be"):
        generate_queries(chunks, llm=42)


# --------------------------------------------------------------------------- failures
def test_failures_are_retried_then_succeed() -> None:
    llm = ScriptedLLM({"0": [RuntimeError("rate limited"), "Sure!", ""], "1": [TimeoutError()]})
    ds = generate_queries(make_chunks(3), llm=llm, retries=3, backoff=0)
    assert ds.stats is not None
    assert ds.stats.n_failed == 0 and ds.stats.retries == 4 and ds.stats.llm_calls == 7
    assert llm.calls.count("0") == 4 and len(ds.queries) == 6


def test_failures_are_skipped_after_retries() -> None:
    llm = ScriptedLLM({}, default="I cannot help with that")  # malformed: no question
    ds = generate_queries(make_chunks(3), llm=llm, retries=2, backoff=0, on_error="skip")
    assert ds.stats is not None
    assert ds.stats.n_failed == 3 and set(ds.stats.failures) == {"c0", "c1", "c2"}
    assert len(llm.calls) == 9 and ds.queries == {}


def test_failures_raise_when_asked(tmp_path: Path) -> None:
    llm = ScriptedLLM({"2": [ValueError("boom")] * 5})
    with pytest.raises(QueryGenerationError, match="c2") as info:
        generate_queries(
            make_chunks(4), llm=llm, retries=1, backoff=0, on_error="raise",
            max_concurrency=1, cache_path=str(tmp_path / "q.jsonl"),
        )  # fmt: skip
    assert info.value.chunk_id == "c2" and isinstance(info.value.__cause__, ValueError)
    assert llm.calls.count("2") == 2
    # chunks finished before the failure are in the cache
    lines = (tmp_path / "q.jsonl").read_text().splitlines()
    assert [json.loads(x)["chunk_id"] for x in lines] == ["c0", "c1"]


def test_timeout_counts_as_failure() -> None:
    llm = SleepyLLM(1.0)
    t0 = time.perf_counter()
    ds = generate_queries(make_chunks(2), llm=llm, timeout=0.05, retries=1, backoff=0)
    assert time.perf_counter() - t0 < 0.5
    assert ds.stats is not None and ds.stats.n_failed == 2
    assert ds.stats.failures["c0"] == "timed out"


def test_backoff_grows_and_jitter_is_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(d: float) -> None:
        waits.append(d)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    runs = []
    for _ in range(2):
        waits.clear()
        llm = ScriptedLLM({"0": [RuntimeError()] * 3})
        generate_queries(make_chunks(1), llm=llm, retries=3, backoff=1.0, seed=7)
        runs.append(list(waits))
    assert runs[0] == runs[1] and len(runs[0]) == 3
    assert 0.5 <= runs[0][0] < 1.5 and 1.0 <= runs[0][1] < 3.0 and 2.0 <= runs[0][2] < 6.0


# ---------------------------------------------------------------------------- resume
class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing catches it)."""


def test_killed_run_resumes_with_only_the_missing_chunks(tmp_path: Path) -> None:
    chunks = make_chunks(10)
    cache = str(tmp_path / "q.jsonl")
    calls = {"n": 0}

    def dying(prompt: str) -> str:
        calls["n"] += 1
        if calls["n"] > 6:
            raise Killed
        return answer_for(prompt)

    with pytest.raises(Killed):
        generate_queries(chunks, llm=dying, max_concurrency=1, cache_path=cache)
    assert len(Path(cache).read_text().splitlines()) == 6

    llm = SleepyLLM(0)
    ds = generate_queries(chunks, llm=llm, max_concurrency=4, cache_path=cache)
    assert sorted(llm.calls, key=int) == ["6", "7", "8", "9"]
    assert ds.stats is not None and ds.stats.n_cached == 6 and ds.stats.n_generated == 4
    assert len(ds.queries) == 20

    # a third run calls nothing
    llm3 = SleepyLLM(0)
    again = generate_queries(chunks, llm=llm3, cache_path=cache)
    assert llm3.calls == [] and again.queries == ds.queries


def test_cancelled_run_loses_at_most_the_chunks_in_flight(tmp_path: Path) -> None:
    from nudge_rag.querygen import agenerate_queries

    chunks = make_chunks(30)
    cache = tmp_path / "q.jsonl"
    calls: list[str] = []

    async def main() -> None:
        all_stuck = asyncio.Event()
        never = asyncio.Event()
        stuck = 0

        async def llm(prompt: str) -> str:  # the first 10 calls answer, the rest hang
            nonlocal stuck
            calls.append(chunk_of(prompt))
            if len(calls) > 10:
                stuck += 1
                if stuck == 4:
                    all_stuck.set()
                await never.wait()
            return answer_for(prompt)

        task = asyncio.ensure_future(
            agenerate_queries(chunks, llm, max_concurrency=4, cache_path=str(cache))
        )
        await all_stuck.wait()  # every worker is inside a call: cancel mid-run
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    done = len(cache.read_text().splitlines())
    assert done == 10 and len(calls) - done == 4
    llm2 = SleepyLLM(0)
    generate_queries(chunks, llm=llm2, cache_path=str(cache))
    assert len(llm2.calls) == 30 - done


def test_changed_chunk_is_regenerated_and_settings_key_the_cache(tmp_path: Path) -> None:
    chunks = make_chunks(4)
    cache = str(tmp_path / "q.jsonl")
    generate_queries(chunks, llm=SleepyLLM(0), cache_path=cache)
    changed = dict(chunks)
    changed["c2"] = changed["c2"] + " Now edited."
    changed["c9"] = "Chunk 9 is about a new topic entirely."
    llm = SleepyLLM(0)
    generate_queries(changed, llm=llm, cache_path=cache)
    assert sorted(llm.calls) == ["2", "9"]
    # reordering chunks changes nothing (keys are ids, not positions)
    llm = SleepyLLM(0)
    generate_queries(dict(reversed(list(changed.items()))), llm=llm, cache_path=cache)
    assert llm.calls == []
    # another prompt or another n is another cache key
    llm = SleepyLLM(0)
    generate_queries(changed, llm=llm, cache_path=cache, queries_per_chunk=3)
    assert len(llm.calls) == 5


def test_torn_cache_line_is_ignored(tmp_path: Path) -> None:
    chunks = make_chunks(3)
    cache = tmp_path / "q.jsonl"
    generate_queries(chunks, llm=SleepyLLM(0), cache_path=str(cache), max_concurrency=1)
    text = cache.read_text()
    cache.write_text(text[: len(text) - 20])  # the last line was cut mid-write
    llm = SleepyLLM(0)
    ds = generate_queries(chunks, llm=llm, cache_path=str(cache))
    assert llm.calls == ["2"] and len(ds.queries) == 6
    assert all(json.loads(x)["chunk_id"] for x in cache.read_text().splitlines()[-1:])


# ---------------------------------------------------------------------------- sample, n
def test_max_chunks_is_a_seeded_sample_keyed_by_id() -> None:
    chunks = make_chunks(50)
    a = generate_queries(chunks, llm=SleepyLLM(0), max_chunks=10, seed=1)
    b = generate_queries(chunks, llm=SleepyLLM(0), max_chunks=10, seed=1)
    c = generate_queries(chunks, llm=SleepyLLM(0), max_chunks=10, seed=2)
    assert a.queries == b.queries and a.queries != c.queries
    assert len({d[0] for d in a.relevant_docs.values()}) == 10 and len(a.corpus) == 50
    for qid, docs in a.relevant_docs.items():
        assert chunk_of(a.corpus[docs[0]]) in a.queries[qid]


def test_keeps_at_most_n_and_drops_bad_questions() -> None:
    answer = json.dumps(
        [
            "Which topic does chunk 0 cover?",
            "which topic does chunk 0 cover",
            "Why?",
            "Chunk 0 is about alpha and bravo number 0?",
            "What number is chunk zero about?",
            "What else does chunk zero say?",
        ]
    )
    llm = ScriptedLLM({"0": [answer]})
    ds = generate_queries(make_chunks(1), llm=llm, queries_per_chunk=2, max_copy_words=6)
    assert list(ds.queries.values()) == [
        "Which topic does chunk 0 cover?",
        "What number is chunk zero about?",
    ]


# ---------------------------------------------------------------------------- adapters
def test_adapter_plain_sync_and_async_callables() -> None:
    chunks = make_chunks(3)

    async def a(prompt: str) -> str:
        return answer_for(prompt)

    for llm in (a, lambda p: answer_for(p)):
        ds = generate_queries(chunks, llm=llm)
        assert len(ds.queries) == 6


def test_adapter_llamaindex_like_object() -> None:
    class Completion:
        def __init__(self, text: str) -> None:
            self.text = text

    class MockLLMLike:
        model = "fake-1"

        async def acomplete(self, prompt: str) -> Completion:
            return Completion(answer_for(prompt))

        def complete(self, prompt: str) -> Completion:  # pragma: no cover - never used
            raise AssertionError("the async path must be used")

    ds = generate_queries(make_chunks(3), llm=MockLLMLike())
    assert (
        len(ds.queries) == 6
        and ds.stats is not None
        and ds.stats.generator == "MockLLMLike(fake-1)"
    )


def test_adapter_llamaindex_mock_llm() -> None:
    llms = pytest.importorskip("llama_index.core.llms")
    # MockLLM echoes the prompt: a template that is itself a JSON answer makes it a question writer
    ds = generate_queries(
        {"a": "gamma selection", "b": "record vectors"},
        llm=llms.MockLLM(),
        prompt='["What is said about {context} here?", "{n}"]',
    )
    assert sorted(ds.queries.values()) == [
        "What is said about gamma selection here?",
        "What is said about record vectors here?",
    ]


def test_adapter_langchain_runnable_and_chat_model() -> None:
    runnables = pytest.importorskip("langchain_core.runnables")
    fake = pytest.importorskip("langchain_core.language_models.fake_chat_models")
    chunks = make_chunks(3)
    ds = generate_queries(chunks, llm=runnables.RunnableLambda(answer_for))
    assert len(ds.queries) == 6
    chat = fake.FakeListChatModel(
        responses=[json.dumps(["What is the first fake question?", "And the second one?"])]
    )
    ds = generate_queries(chunks, llm=chat, max_concurrency=2)
    assert len(ds.queries) == 6 and set(ds.queries.values()) == {
        "What is the first fake question?",
        "And the second one?",
    }


# ---------------------------------------------------------------------------- offline, filter
def test_offline_default_is_deterministic_and_nested() -> None:
    chunks = make_chunks(12)
    d2 = generate_queries(chunks, queries_per_chunk=2)
    d4 = generate_queries(chunks, queries_per_chunk=4)
    assert d2.stats is not None and d2.stats.generator.startswith("offline")
    assert d2.queries == generate_queries(chunks, queries_per_chunk=2).queries
    for qid, text in d2.queries.items():
        assert d4.queries[qid] == text  # the queries for n=2 are the first two for n=4
    assert len(d2.queries) == 24


def test_offline_generator_prefers_distinctive_terms() -> None:
    chunks = {
        "a": "Statin use and breast cancer survival. Statin users had lower breast cancer mortality.",
        "b": "Asthma and diet. Fruit intake lowered asthma symptoms in the cohort.",
        "c": "Breast cancer screening. Screening found breast cancer earlier in the cohort.",
    }
    out = OfflineGenerator().generate(chunks, 2)
    assert out["a"][0].split()[0] == "statin"  # the term no other chunk has comes first
    assert out["a"][1] == "Statin use and breast cancer survival"
    with pytest.raises(ConfigError):
        OfflineGenerator(strategy="magic")  # type: ignore[arg-type]
    spans = OfflineGenerator(strategy="spans", seed=3).generate(chunks, 2)
    assert spans == OfflineGenerator(strategy="spans", seed=3).generate(chunks, 2)


def test_round_trip_filter_and_report() -> None:
    chunks = {
        "a": "cats purr and sleep on warm windows",
        "b": "dogs bark at the mail carrier",
        "c": "fish swim in the cold lake",
    }
    answers = {
        "a": ["Why do cats purr and sleep?", "Why do dogs bark at mail carriers?"],  # 2nd is off
        "b": ["When do dogs bark at the carrier?", "Where do fish swim in cold water?"],
        "c": ["Do fish swim in the cold lake?", "Which cats sleep on warm windows?"],
    }

    def llm(prompt: str) -> str:
        cid = next(k for k, v in chunks.items() if v in prompt)
        return json.dumps(answers[cid])

    emb = BagOfWordsEmbedder(dim=256)

    class Emb:
        def embed_queries(self, texts: list[str]) -> np.ndarray:
            return emb.embed(texts)

        def embed_documents(self, texts: list[str]) -> np.ndarray:
            return emb.embed(texts)

    kept = generate_queries(chunks, llm=llm, round_trip=RoundTrip(embedder=Emb(), top_k=1))
    assert sorted(kept.queries) == ["a#0", "b#0", "c#0"]
    assert kept.stats is not None and kept.stats.round_trip is not None
    assert kept.stats.round_trip.n_failed == 3 and kept.stats.round_trip.n_dropped == 3
    rep = generate_queries(
        chunks, llm=llm,
        round_trip=RoundTrip(embed_queries=emb.embed, chunk_embeddings=emb.embed(list(chunks.values())), top_k=1, mode="report"),
    )  # fmt: skip
    assert len(rep.queries) == 6 and rep.stats is not None and rep.stats.round_trip is not None
    assert rep.stats.round_trip.n_failed == 3 and rep.stats.round_trip.n_dropped == 0
    assert (
        rep.stats.round_trip.ranks.tolist() == [0, 1, 0, 2, 0, 2]
        or rep.stats.round_trip.n_failed == 3
    )
    with pytest.raises(ConfigError):
        RoundTrip(embedder=Emb(), mode="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RoundTrip(top_k=3)


def test_works_inside_a_running_loop() -> None:
    async def main() -> GeneratedDataset:
        return generate_queries(make_chunks(2), llm=SleepyLLM(0))

    assert len(asyncio.run(main()).queries) == 4


def test_show_progress_does_not_break(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    ds = generate_queries(make_chunks(3), llm=SleepyLLM(0), show_progress=True)
    assert len(ds.queries) == 6
    assert "chunk" in capsys.readouterr().err
