"""Generation against hostile or broken LLMs (issue 9): scripted fakes, driven by events.

No test here measures wall-clock time or relies on a sleep for its outcome: a hung call is a
``threading.Event`` that is never set (set at the end only to let the thread go), and timeouts
only have to fire at all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nudge_rag.errors import LLMRequestError, QueryGenerationError, UnusableAnswerError
from nudge_rag.querygen import QueryCache, generate_queries
from nudge_rag.querygen import generate as generate_mod
from nudge_rag.querygen.cache import config_hash
from nudge_rag.querygen.llm import request_error_status, response_text
from nudge_rag.querygen.parsing import MAX_ANSWER_CHARS, MAX_QUESTION_CHARS
from nudge_rag.querygen.prompts import DEFAULT_PROMPT


def make_chunks(n: int) -> dict[str, str]:
    return {f"c{i}": f"Chunk {i} is about topic number {i} and more." for i in range(n)}


def chunk_of(prompt: str) -> str:
    m = re.search(r"Chunk (\d+) is about", prompt)
    assert m, prompt
    return m.group(1)


def answer_for(prompt: str) -> str:
    i = chunk_of(prompt)
    return json.dumps([f"Which topic does chunk {i} cover?", f"Who wrote section {i} of it?"])


class ScriptedLLM:
    """An async fake: per chunk, the scripted answers in turn (exceptions are raised), then a
    good answer."""

    def __init__(self, script: dict[str, list[object]], default: object = None) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.default = default
        self.calls: list[str] = []

    async def __call__(self, prompt: str) -> object:
        i = chunk_of(prompt)
        self.calls.append(i)
        todo = self.script.get(i)
        out = todo.pop(0) if todo else (self.default or answer_for(prompt))
        if isinstance(out, BaseException):
            raise out
        return out


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event that hung fake calls wait on; set at teardown so their threads can end."""
    ev = threading.Event()
    yield ev
    ev.set()


# ------------------------------------------------------------------ degenerate, huge answers
def test_degenerate_answer_is_read_quickly_and_rejected() -> None:
    answer = "Q" + " " * 200_000 + "x"  # quadratic in the old bullet regex
    llm = ScriptedLLM({}, default=answer)
    ds = generate_queries(make_chunks(2), llm=llm, retries=1, backoff=0)
    assert ds.stats is not None and ds.stats.n_failed == 2
    assert ds.stats.rejected == {"no_question": 4} and ds.stats.n_truncated == 4
    assert "no usable question" in ds.stats.failures["c0"]


def test_megabyte_answer_is_cut_and_never_one_question() -> None:
    huge = "1. Which topic does chunk 0 cover?\n2. What is " + "very " * 250_000 + "big?"
    assert len(huge) > 1_000_000 > MAX_ANSWER_CHARS
    ds = generate_queries(make_chunks(1), llm=ScriptedLLM({"0": [huge]}), queries_per_chunk=2)
    assert list(ds.queries.values()) == ["Which topic does chunk 0 cover?"]
    assert ds.stats is not None and ds.stats.n_truncated == 1 and ds.stats.n_short == 1


def test_long_question_is_dropped_and_counted() -> None:
    long_q = "What is " + "quite " * (MAX_QUESTION_CHARS // 6) + "long?"
    answer = json.dumps([long_q, "Which topic does chunk 0 cover?", "Who wrote section 0?"])
    ds = generate_queries(make_chunks(1), llm=ScriptedLLM({"0": [answer]}))
    assert len(ds.queries) == 2 and long_q not in ds.queries.values()
    assert ds.stats is not None and ds.stats.dropped == {"too_long": 1}
    assert ds.stats.n_dropped == 1


def test_parsing_runs_in_a_worker_thread_inside_the_timeout(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    seen: list[threading.Thread] = []
    real = generate_mod.parse_questions

    def stuck_parse(answer: str, **kw: Any) -> list[str]:
        seen.append(threading.current_thread())
        if len(seen) == 1:
            gate.wait()  # the first answer takes "forever" to parse
        return real(answer, **kw)

    monkeypatch.setattr(generate_mod, "parse_questions", stuck_parse)
    llm = ScriptedLLM({})
    ds = generate_queries(make_chunks(1), llm=llm, timeout=0.2, retries=1, backoff=0)
    # the stuck parse was abandoned at the call's timeout and the retry went through
    assert ds.stats is not None and ds.stats.rejected == {"timeout": 1}
    assert ds.stats.n_failed == 0 and len(ds.queries) == 2 and llm.calls == ["0", "0"]
    assert all(t is not threading.main_thread() and t.daemon for t in seen)


# ------------------------------------------------------------------ not text
class Weird:
    def __repr__(self) -> str:
        return "<Weird>"


@pytest.mark.parametrize(
    "answer", [None, b"bytes", bytearray(b"x"), {"foo": 1}, {"text": 3}, Weird(), 42, ["a"]]
)
def test_output_that_is_not_text_is_rejected_and_counted(answer: object) -> None:
    llm = ScriptedLLM({"0": [answer]})
    ds = generate_queries(make_chunks(2), llm=llm, retries=1, backoff=0)
    assert ds.stats is not None and ds.stats.rejected == {"not_text": 1}
    assert ds.stats.n_failed == 0 and len(ds.queries) == 4


def test_response_text_reads_text_and_refuses_the_rest() -> None:
    class Msg:
        def __init__(self) -> None:
            self.content = [{"type": "text", "text": "a"}, {"type": "image"}, "b"]

    class Chat:
        message = Msg()

    assert response_text("x") == "x"
    assert response_text({"text": "t"}) == "t" and response_text({"content": "c"}) == "c"
    assert response_text(Chat()) == "ab"
    for bad in (None, b"x", {}, Weird(), Chat.__new__(type("NoText", (), {"message": None}))):
        with pytest.raises(UnusableAnswerError, match="not text") as info:
            response_text(bad)
        assert info.value.reason == "not_text" and isinstance(info.value, QueryGenerationError)


# ------------------------------------------------------------------ refused requests
class FakeStatusError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthenticationError(Exception):
    """Named like OpenAI's / Anthropic's, without a status."""


class BadRequestError(Exception):
    pass


class FakeResponse:
    status_code = 403


class FakeHTTPStatusError(Exception):
    """Like httpx.HTTPStatusError: the status is on .response."""

    response = FakeResponse()


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (FakeStatusError("Error code: 401 - invalid x-api-key", 401), 401),
        (FakeStatusError("model may not be used", 403), 403),
        (FakeStatusError("prompt is too long", 400), 400),
        (AuthenticationError("Incorrect API key provided"), None),
        (BadRequestError("invalid model"), None),
        (FakeHTTPStatusError("Forbidden"), 403),
    ],
)
def test_refused_request_stops_the_run_at_once_even_in_skip_mode(
    tmp_path: Path, exc: Exception, status: int | None
) -> None:
    llm = ScriptedLLM({"1": [exc]})
    cache = tmp_path / "q.jsonl"
    with pytest.raises(LLMRequestError) as info:
        generate_queries(
            make_chunks(4), llm=llm, retries=3, backoff=0, on_error="skip",
            max_concurrency=1, cache_path=str(cache),
        )  # fmt: skip
    err = info.value
    assert err.chunk_id == "c1" and err.status_code == status and err.__cause__ is exc
    assert err.provider_message == str(exc) and str(exc) in str(err)
    assert isinstance(err, QueryGenerationError)
    assert llm.calls == ["0", "1"]  # never retried, nothing asked after it
    assert [json.loads(x)["chunk_id"] for x in cache.read_text().splitlines()] == ["c0"]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_http_errors_are_retried(status: int) -> None:
    llm = ScriptedLLM({"0": [FakeStatusError("try later", status)]})
    ds = generate_queries(make_chunks(1), llm=llm, retries=1, backoff=0)
    assert ds.stats is not None and ds.stats.rejected == {"error": 1} and len(ds.queries) == 2


def test_request_error_status_follows_the_cause_chain() -> None:
    inner = FakeStatusError("bad key", 401)
    try:
        try:
            raise inner
        except FakeStatusError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as outer:
        assert request_error_status(outer) == (True, 401)
    assert request_error_status(TimeoutError()) == (False, None)
    assert request_error_status(FakeStatusError("x", 404)) == (False, None)


# ------------------------------------------------------------------ hung sync clients
def test_hung_sync_call_times_out_in_a_daemon_thread(gate: threading.Event) -> None:
    threads: list[threading.Thread] = []

    def hung(prompt: str) -> str:
        threads.append(threading.current_thread())
        gate.wait()  # never returns while the run lasts
        return answer_for(prompt)

    ds = generate_queries(make_chunks(2), llm=hung, timeout=0.1, retries=0)
    assert ds.stats is not None and ds.stats.n_failed == 2
    assert ds.stats.failures == {"c0": "timed out", "c1": "timed out"}
    assert ds.stats.rejected == {"timeout": 2}
    assert len(threads) == 2 and all(t.daemon and t.is_alive() for t in threads)


def test_hung_calls_do_not_hold_the_concurrency_slots(gate: threading.Event) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def first_call_hangs(prompt: str) -> str:
        with lock:
            calls.append(prompt)
            first = len(calls) == 1
        if first:
            gate.wait()
        return answer_for(prompt)

    # one slot: with a pool of one worker the retry (and every later chunk) would queue behind
    # the hung call and time out too
    ds = generate_queries(
        make_chunks(3), llm=first_call_hangs, max_concurrency=1, timeout=0.2, retries=1, backoff=0
    )
    assert ds.stats is not None and ds.stats.n_failed == 0 and len(ds.queries) == 6
    assert ds.stats.rejected == {"timeout": 1} and len(calls) == 4


def test_hung_sync_call_does_not_keep_the_process_alive() -> None:
    code = textwrap.dedent(
        """
        import threading
        from nudge_rag.querygen import generate_queries

        never = threading.Event()

        def hung(prompt):
            never.wait()

        ds = generate_queries({"c": "some chunk text"}, llm=hung, timeout=0.1, retries=0)
        print(ds.stats.failures["c"])
        """
    )
    # without daemon threads the interpreter waits for the hung call at exit: the outer
    # timeout is only a guard against hanging the test suite
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "timed out"


# ------------------------------------------------------------------ odd Unicode, the cache
def test_lone_surrogates_with_a_cache_file(tmp_path: Path) -> None:
    chunks = {
        "c0\ud800": "Chunk 0 is about alpha \udcff and more.",
        "c1": "Chunk 1 is about bravo and more.",
    }
    answers = {
        "0": json.dumps(["Which topic does chunk 0 cover \udcff?", "What is \ud800 in it?"]),
        "1": "1. Which topic does chunk 1 cover?\n2. Who wrote chunk \udc80 1?",
    }
    llm = ScriptedLLM({k: [v] for k, v in answers.items()})
    cache = tmp_path / "q.jsonl"
    ds = generate_queries(chunks, llm=llm, cache_path=str(cache))
    assert ds.stats is not None and ds.stats.cache_errors == 0 and ds.stats.n_failed == 0
    assert len(ds.queries) == 4
    for q in ds.queries.values():
        q.encode("utf-8")  # the questions themselves carry no lone surrogate
    cache.read_bytes().decode("utf-8")  # the file is valid UTF-8
    # it reloads: a second run asks nothing and gets the same questions
    again = ScriptedLLM({})
    ds2 = generate_queries(chunks, llm=again, cache_path=str(cache))
    assert again.calls == [] and ds2.queries == ds.queries


def test_cache_round_trips_lone_surrogates_exactly(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    qs = ["What is \ud800?", "Who is é\udcff?"]
    with QueryCache(path, "cfg") as cache:
        cache.put("id\udfff", "text \ud801", qs)
    path.read_bytes().decode("utf-8")
    assert QueryCache(path, "cfg").get("id\udfff", "text \ud801") == qs


def test_unreadable_cache_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    with QueryCache(path, "cfg") as cache:
        cache.put("a", "text a", ["Question a?"])
    with open(path, "ab") as fh:
        fh.write(b'{"chunk_id": "b\xff\xfe", "text_sha256": "x", "config": "cfg"}\n')
        fh.write(b'{"chunk_id": "c", "text_sha256": "x", "config": "cfg", "questions": "abc"}\n')
        fh.write(b"[" * 100_000 + b"\n")
        fh.write(b'"just a string"\n')
    with QueryCache(path, "cfg") as cache:
        cache.put("d", "text d", ["Question d?"])
    back = QueryCache(path, "cfg")
    assert len(back) == 2 and back.n_lines == 6
    assert back.get("a", "text a") == ["Question a?"] and back.get("d", "text d") == ["Question d?"]


def test_failing_cache_write_never_loses_paid_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: QueryCache, *args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(QueryCache, "put", disk_full)
    llm = ScriptedLLM({})
    ds = generate_queries(make_chunks(3), llm=llm, cache_path=str(tmp_path / "q.jsonl"))
    assert ds.stats is not None and ds.stats.cache_errors == 3 and ds.stats.n_failed == 0
    assert len(ds.queries) == 6 and len(llm.calls) == 3


def test_cache_config_hash_accepts_any_prompt() -> None:
    assert len(config_hash(DEFAULT_PROMPT + "\ud800", 2, "")) == 16
