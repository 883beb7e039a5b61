"""The durable feedback log: append, collapse, bound, survive restarts and kills."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from nudge_rag.errors import ConfigError
from nudge_rag.feedback import FeedbackEntry, FeedbackLog


def test_record_iterate_and_pairs(tmp_path):
    log = FeedbackLog(tmp_path / "fb.jsonl")
    e = log.record("what is X?", ["a", "b"], source="chat", shown=["a", "c", "b"], timestamp=1.0)
    assert e == FeedbackEntry("what is X?", {"a": 1.0, "b": 1.0}, 1.0, "chat", ("a", "c", "b"))
    log.record("what is Y?", {"c": 2.0}, timestamp=2.0)
    assert len(log) == 2
    assert [x.query for x in log] == ["what is X?", "what is Y?"]
    assert log.training_pairs() == [
        ("what is X?", {"a": 1.0, "b": 1.0}),
        ("what is Y?", {"c": 2.0}),
    ]


def test_duplicates_collapse_and_move_to_the_newest_end(tmp_path):
    log = FeedbackLog(tmp_path / "fb.jsonl")
    log.record("q1", ["a"], timestamp=1.0)
    log.record("q2", ["b"], timestamp=2.0)
    again = log.record("q1", ["a"], timestamp=3.0, source="later")
    assert again.count == 2
    assert len(log) == 2
    assert [(x.query, x.timestamp, x.count) for x in log] == [("q2", 2.0, 1), ("q1", 3.0, 2)]
    # same query, other ids: a different entry; pairs merge them per query
    log.record("q1", ["c"], timestamp=4.0)
    assert len(log) == 3
    assert dict(log.training_pairs())["q1"] == {"a": 1.0, "c": 1.0}


def test_durable_across_restarts(tmp_path):
    path = tmp_path / "sub" / "fb.jsonl"
    log = FeedbackLog(path)
    log.record("q1", ["a"], timestamp=1.0)
    log.record("q1", ["a"], timestamp=2.0)
    log.record("q2", {"b": 0.5}, timestamp=3.0)
    back = FeedbackLog(path)
    assert [(x.query, x.ids, x.count) for x in back] == [
        ("q1", {"a": 1.0}, 2),
        ("q2", {"b": 0.5}, 1),
    ]


def test_bounded_oldest_dropped_and_compacted(tmp_path):
    path = tmp_path / "fb.jsonl"
    log = FeedbackLog(path, max_entries=3)
    for i in range(10):
        log.record(f"q{i}", ["a"], timestamp=float(i))
    assert [x.query for x in log] == ["q7", "q8", "q9"]
    lines = path.read_text().splitlines()
    assert len(lines) <= 3 * 2 + 16
    assert [json.loads(x)["q"] for x in lines][-3:] == ["q7", "q8", "q9"]
    assert [x.query for x in FeedbackLog(path, max_entries=3)] == ["q7", "q8", "q9"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_duplicates_trigger_compaction(tmp_path):
    path = tmp_path / "fb.jsonl"
    log = FeedbackLog(path, compact_factor=2.0)
    for i in range(100):
        log.record("same", ["a"], timestamp=float(i))
    assert len(log) == 1
    assert len(path.read_text().splitlines()) <= 2 + 16
    assert next(iter(FeedbackLog(path))).count == 100


def test_half_written_last_line_is_ignored_then_closed_off(tmp_path):
    path = tmp_path / "fb.jsonl"
    log = FeedbackLog(path)
    log.record("q1", ["a"], timestamp=1.0)
    with open(path, "ab") as fh:
        fh.write(b'{"v": 1, "q": "torn", "ids": {"x"')  # a kill in mid-line
    back = FeedbackLog(path)
    assert [x.query for x in back] == ["q1"]
    back.record("q2", ["b"], timestamp=2.0)
    assert [x.query for x in FeedbackLog(path)] == ["q1", "q2"]
    back.compact()
    assert [json.loads(x)["q"] for x in path.read_text().splitlines()] == ["q1", "q2"]


def _writer(path: str, n: int) -> None:
    log = FeedbackLog(path)
    for i in range(n):
        log.record(f"q-{os.getpid()}-{i}", ["a"])


def test_killed_writer_leaves_a_readable_log(tmp_path):
    path = tmp_path / "fb.jsonl"
    code = (
        "import sys\n"
        "from nudge_rag.feedback import FeedbackLog\n"
        "log = FeedbackLog(sys.argv[1])\n"
        "i = 0\n"
        "while True:\n"
        "    log.record(f'q{i}', ['a', 'b'], shown=['a', 'b', 'c'] * 50)\n"
        "    i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    deadline = time.time() + 30
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 20_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log = FeedbackLog(path)
    n = len(log)
    assert n > 0
    assert [x.query for x in log] == [f"q{i}" for i in range(n)][-n:]
    log.record("after", ["z"])
    assert FeedbackLog(path).entries()[-1].query == "after"


def test_two_processes_append_to_one_log(tmp_path):
    path = str(tmp_path / "fb.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(FeedbackLog(path)) == 80


def test_rejects_bad_input(tmp_path):
    log = FeedbackLog(tmp_path / "fb.jsonl")
    with pytest.raises(ConfigError):
        log.record("", ["a"])
    with pytest.raises(ConfigError):
        log.record("q", "a")
    with pytest.raises(ConfigError):
        log.record("q", [])
    with pytest.raises(ConfigError):
        log.record("q", {"a": float("nan")})
    with pytest.raises(ConfigError):
        FeedbackLog(tmp_path / "x.jsonl", max_entries=0)
    # nothing relevant was shown: impressions only, no training pair
    log.record("q", [], shown=["a", "b"])
    assert len(log) == 1 and log.training_pairs() == []


def test_negative_grades_are_kept_but_not_training_pairs(tmp_path):
    log = FeedbackLog(tmp_path / "fb.jsonl")
    e = log.record("q", {"a": 1.0, "b": -1.0})
    assert e.relevant == {"a": 1.0}
    assert log.training_pairs() == [("q", {"a": 1.0})]
