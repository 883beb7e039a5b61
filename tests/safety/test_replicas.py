"""Replicas (issue 19): several processes, each with a home of its own that may be wiped, run
against one store; the state lives with the store, so every one of them finds it.

Each replica is its own OS process (tests/replica_worker.py) with its own ``NUDGE_RAG_HOME``,
driven command by command; "at the same moment" is the parent sending both replicas a command
before reading either answer (the store's lock orders them, ``lock_timeout=None``). Vectors are
compared bit for bit (l2 space: Chroma keeps them as written; Milvus keeps every vector as
written), read by a process that has not read the store before (so nothing it reads is an old
view). Stores: a Chroma server (state in its ``nudge_rag_state`` collection), one Chroma folder
(state in ``<folder>/nudge_state/<collection>``, and a client per process that keeps the vectors
it first read), a Milvus 2.3 server (its ``nudge_rag_state`` collection).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
N = 150
SPLIT = (0, 100), (50, 100)  # replica A trains on r000-r099, B on r050-r149: 50 shared


class Worker:
    def __init__(self, spec: dict[str, Any], home: Path, log: Path) -> None:
        self.home = home
        env = {
            **os.environ,
            "NUDGE_RAG_HOME": str(home),
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),
            "ANONYMIZED_TELEMETRY": "False",
            "OMP_NUM_THREADS": "1",
        }
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", str(TESTS / "replica_worker.py"), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )

    def send(self, op: str, **kw: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"replica {self.proc.pid} exited with {self.proc.wait()}")
        got: dict[str, Any] = json.loads(line)
        if not got.pop("ok"):
            raise AssertionError(got["error"])
        return got

    def __call__(self, op: str, **kw: Any) -> dict[str, Any]:
        self.send(op, **kw)
        return self.answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            with_stdin = self.proc.stdin
            try:
                self.send("exit")
                assert with_stdin is not None
                with_stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class Fleet:
    """Replicas of one store, each with a fresh home under ``base``."""

    def __init__(self, spec: dict[str, Any], base: Path) -> None:
        self.spec = spec
        self.base = base
        self.workers: list[Worker] = []

    def replica(self, spec: dict[str, Any] | None = None, *, opened: bool = True) -> Worker:
        home = self.base / f"home-{len(self.workers)}"
        home.mkdir(parents=True)
        w = Worker(spec or self.spec, home, self.base / "replicas.log")
        self.workers.append(w)
        if opened:
            w("open")
        return w

    def vectors(self, spec: dict[str, Any] | None = None) -> dict[str, list[float]]:
        """Every vector, read by a process new to the store."""
        w = self.replica(spec, opened=False)
        try:
            return w("vectors")
        finally:
            w.close()

    def close(self) -> None:
        for w in self.workers:
            w.close()


def _moved(got: dict[str, list[float]], want: dict[str, list[float]]) -> list[str]:
    assert set(got) == set(want)
    return sorted(i for i in want if got[i] != want[i])


@pytest.fixture(params=["chroma-server", "chroma-folder", "milvus-server"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    name = f"replicas_{uuid.uuid4().hex[:8]}"
    if request.param == "chroma-server":
        host, port = request.getfixturevalue("chroma_server")
        spec: dict[str, Any] = {"kind": "chroma-server", "host": host, "port": port}
    elif request.param == "milvus-server":
        spec = {"kind": "milvus-server", "uri": request.getfixturevalue("milvus_server_uri")}
    else:
        spec = {"kind": "chroma-folder", "path": str(tmp_path / "chroma")}
    f = Fleet({**spec, "collection": name}, tmp_path / "fleet")
    builder = f.replica(opened=False)
    builder("build", n=N)
    builder.close()
    try:
        yield f
    finally:
        f.close()


@pytest.mark.parametrize("order", ["at-once", "in-turn"])
def test_two_replicas_finetune_and_both_revert_exactly(fleet: Fleet, order: str) -> None:
    """Two processes, own homes, 100 records each (50 shared), on one store (a server, or one
    Chroma folder); both revert: every vector is its original again.

    ``at-once``: both start at the same moment, the lock orders them. ``in-turn``: both have
    read the store, A fine-tunes, then B (which, on a Chroma folder, holds the view of the store
    it read before A wrote), then A reverts, then B: what left vectors moved with no original
    anywhere when each replica kept its state in its own home."""
    original = fleet.vectors()
    a, b = fleet.replica(), fleet.replica()
    if order == "at-once":
        for w, (first, n) in zip((a, b), SPLIT, strict=True):
            w.send("finetune", first=first, n=n)
        reports = [a.answer(), b.answer()]
    else:
        reports = [w("finetune", first=f, n=n) for w, (f, n) in zip((a, b), SPLIT, strict=True)]
    assert all(r["n_moved"] > 0 for r in reports), reports
    for r in reports:
        assert not r.get("adopted_ids") and not r.get("deleted_ids"), r
    moved = _moved(fleet.vectors(), original)
    assert moved and set(moved) <= set(reports[0]["moved_ids"]) | set(reports[1]["moved_ids"])
    if order == "at-once":
        a.send("revert")
        b.send("revert")
        reverts = [a.answer(), b.answer()]
    else:
        reverts = [a("revert"), b("revert")]
    for r in reverts:
        assert not r.get("changed_ids") and not r.get("mismatched_ids"), r
    assert _moved(fleet.vectors(), original) == []


def test_a_wiped_home_finds_the_state_with_the_store(fleet: Fleet) -> None:
    original = fleet.vectors()
    a = fleet.replica()
    assert a("finetune", first=0, n=100)["n_moved"] > 0
    a.close()
    shutil.rmtree(a.home)  # the container's disk is gone
    assert _moved(fleet.vectors(), original)
    fresh = fleet.replica()  # a new process, a new empty home
    rev = fresh("revert")
    assert rev["n_restored"] > 0 and not rev.get("changed_ids"), rev
    assert _moved(fleet.vectors(), original) == []


def test_feedback_from_two_replicas_is_seen_by_a_third(fleet: Fleet) -> None:
    a, b = fleet.replica(), fleet.replica()
    a("record", query="term3 solar wind question", ids=["r003"])
    b("record", query="term7 coral reef question", ids=["r007", "r008"])
    c = fleet.replica()
    assert c("feedback")["pairs"] == [
        ["term3 solar wind question", ["r003"]],
        ["term7 coral reef question", ["r007", "r008"]],
    ]


def test_a_copied_chroma_folder_carries_its_own_state(tmp_path: Path) -> None:
    """``cp -r`` of a Chroma folder keeps the collection id: the copy and the original are
    fine-tuned side by side, each from its own state inside its folder; both revert exactly."""
    name = "docs"
    spec = {"kind": "chroma-folder", "path": str(tmp_path / "chroma"), "collection": name}
    fleet = Fleet(spec, tmp_path / "fleet")
    try:
        builder = fleet.replica(opened=False)
        builder("build", n=N)
        builder.close()
        copy = {**spec, "path": str(tmp_path / "copy")}
        shutil.copytree(spec["path"], copy["path"])
        original = fleet.vectors()
        assert fleet.vectors(copy) == original
        a, b = fleet.replica(), fleet.replica(copy)
        assert a("finetune", first=0, n=60)["n_moved"] > 0
        assert b("finetune", first=90, n=60)["n_moved"] > 0
        assert (tmp_path / "chroma" / "nudge_state" / name).is_dir()
        assert (tmp_path / "copy" / "nudge_state" / name).is_dir()
        moved_a = _moved(fleet.vectors(), original)
        moved_b = _moved(fleet.vectors(copy), original)
        assert moved_a and moved_b and not set(moved_a) & set(moved_b)
        assert not b("revert").get("changed_ids")
        assert not a("revert").get("changed_ids")
        assert _moved(fleet.vectors(), original) == []
        assert _moved(fleet.vectors(copy), original) == []
    finally:
        fleet.close()
