"""Issue 19's six rows on PostgreSQL + pgvector, through LangChain ``PGVector`` and LlamaIndex
``PGVectorStore``: several replicas of one deployment, each its own OS process with its own
``NUDGE_RAG_HOME`` (a container with its own disk), against one table. The state lives with the
store (the table ``nudge_rag_state``), so whatever each replica's disk holds, every vector comes
back to its original.

Replicas are children forked from the zygote (safety_zygote.py); the jobs are in
pg_replicas.py. "At the same moment" is a gate (a Unix socket both replicas wait on), never a
clock.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg_replicas as R
import pytest
from safety_zygote import Zygote

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Deployment:
    """One store in PostgreSQL and its replicas (a home each, or shared)."""

    def __init__(self, zygote: Zygote, framework: str, socket_dir: str, base: Path) -> None:
        from store_cases import table_name

        self.z = zygote
        self.framework = framework
        self.urls = R.urls_for(socket_dir)
        self.name = table_name(framework[:2])
        self.base = base
        self._n = 0
        self.job("build")
        self.originals = self.truth()

    def home(self, replica: str) -> str:
        return str(self.base / f"home-{replica}")

    def start(self, op: str, replica: str = "one", **kw: Any) -> Any:
        args = {"framework": self.framework, "urls": self.urls, "name": self.name, **kw}
        env: dict[str, str | None] = {"NUDGE_RAG_HOME": self.home(replica)}
        return self.z.start(f"pg_replicas:job_{op}", args, env=env, cwd=self.base, name=op)

    def job(self, op: str, replica: str = "one", **kw: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.start(op, replica, **kw).wait().check()
        return out

    def wipe(self, replica: str) -> None:
        """The replica's container is replaced: its disk is gone."""
        shutil.rmtree(self.home(replica), ignore_errors=True)

    def truth(self) -> dict[str, list[float]]:
        """Every vector as PostgreSQL holds it."""
        self._n += 1
        out = self.base / f"truth-{self._n}.json"
        self.job("vectors", out=str(out))
        data: dict[str, list[float]] = json.loads(out.read_text())
        return data

    def ids(self, lo: int, hi: int) -> list[str]:
        return [R.rid(i, self.name) for i in range(lo, hi)]

    def changed(self) -> list[str]:
        """Records whose vector is not its original, bit for bit."""
        now = self.truth()
        assert set(now) == set(self.originals)
        return sorted(i for i in now if now[i] != self.originals[i])


@pytest.fixture(params=R.FRAMEWORKS)
def dep(
    request: pytest.FixtureRequest, zygote: Zygote, pg_server: str, tmp_path: Path
) -> Deployment:
    pytest.importorskip("langchain_postgres")
    pytest.importorskip("llama_index.vector_stores.postgres")
    return Deployment(zygote, request.param, pg_server, tmp_path)


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short folder for the gates' Unix sockets (a socket path is limited to ~100 bytes)."""
    where = Path(tempfile.mkdtemp(prefix="nr-gate-"))
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_row1_two_replicas_overlap_then_both_revert(dep: Deployment) -> None:
    one = dep.job("finetune", "one", lo=0, hi=100)
    two = dep.job("finetune", "two", lo=50, hi=150)
    assert sorted(one["moved_ids"]) == dep.ids(0, 100)
    assert sorted(two["moved_ids"]) == dep.ids(50, 150)
    # Replica two found replica one's state: the records it no longer moves got their originals.
    assert sorted(two["restored_ids"]) == dep.ids(0, 50)
    assert "nudge_rag_state" in two["state_dir"]
    back = dep.job("revert", "one")
    assert (back["n_restored"], back["n_already_original"]) == (100, 50)  # r050-r149; r000-r049
    assert back["mismatched_ids"] == [] and back["changed_ids"] == []
    again = dep.job("revert", "two")
    assert again["n_restored"] == 0 and again["mismatched_ids"] == []
    assert dep.changed() == []


def test_row2_wiped_home_then_the_same_queries(dep: Deployment) -> None:
    first = dep.job("finetune", "one", lo=0, hi=100)
    assert first["n_written"] == 100
    dep.wipe("one")
    second = dep.job("finetune", "one", lo=0, hi=100)
    # It started from the originals kept in PostgreSQL: the same move, nothing left to write.
    assert sorted(second["moved_ids"]) == dep.ids(0, 100)
    assert second["n_written"] == 0 and second["adopted_ids"] == []
    dep.wipe("one")
    assert dep.job("revert", "one")["n_restored"] == 100
    assert dep.changed() == []


def test_row3_wiped_home_then_other_queries(dep: Deployment) -> None:
    dep.job("finetune", "one", lo=0, hi=100)
    dep.wipe("one")
    other = dep.job("finetune", "one", lo=100, hi=200, word="asked")
    assert sorted(other["moved_ids"]) == dep.ids(100, 200)
    assert sorted(other["restored_ids"]) == dep.ids(0, 100)  # the earlier run's records, named
    assert dep.changed() == dep.ids(100, 200)
    dep.wipe("one")
    assert dep.job("revert", "one")["n_restored"] == 100
    assert dep.changed() == []


def test_row4_feedback_of_both_replicas_trains_one_update(dep: Deployment) -> None:
    dep.job("record", "one", lo=0, hi=30)
    dep.job("record", "two", lo=30, hi=60)
    up = dep.job("update", "one")
    assert up["pairs"] == 60 and up["trained_on"] == 60
    assert up["n_moved"] > 0
    dep.wipe("one")
    dep.job("revert", "two")
    assert dep.changed() == []


def test_row5_both_replicas_at_the_same_moment(dep: Deployment, sockets: Path) -> None:
    gate = R.Gate(sockets / "gate.sock")
    try:
        a = dep.start("finetune", "one", lo=0, hi=100, gate=gate.path)
        b = dep.start("finetune", "two", lo=50, hi=150, gate=gate.path)
        assert gate.wait_for(2) == ["ready", "ready"]
        gate.release()  # both go now
        ra, rb = a.wait().check(), b.wait().check()
    finally:
        gate.close()
    busy = [r for r in (ra, rb) if "busy" in r]
    done = [r for r in (ra, rb) if "busy" not in r]
    assert done, "neither ran"
    if busy:  # one ran, the other was told at once, naming the one that holds the lock
        assert len(busy) == 1 and "another fine-tune or revert" in busy[0]["busy"]
        holder = done[0]["pid"]  # it named itself before it took the lock: always named
        assert f"held by pid {holder} on " in busy[0]["busy"]
    else:  # serialised: the later one found the earlier one's state and restored its records
        later = rb if set(rb["restored_ids"]) else ra
        assert set(later["restored_ids"]) == set(dep.ids(0, 150)) - set(later["moved_ids"])
    dep.wipe("one")
    dep.wipe("two")
    dep.job("revert", "three")
    assert dep.changed() == []


def test_row5_a_replica_that_meets_a_running_one_is_refused_or_waits(
    dep: Deployment, sockets: Path
) -> None:
    # Deterministic overlap: replica one stops after its first write batch, holding the lock.
    pause = R.Gate(sockets / "pause.sock")
    try:
        a = dep.start("finetune", "one", lo=0, hi=100, pause=pause.path)
        assert pause.wait_for(1) == ["paused"]
        refused = dep.job("finetune", "two", lo=50, hi=150)
        assert "another fine-tune or revert" in refused["busy"]
        assert f"pid {a.pid} on " in refused["busy"]  # who holds it, by name
        b = dep.start("finetune", "two", lo=50, hi=150, lock_timeout=None)  # waits for it
        pause.release()
        ra, rb = a.wait().check(), b.wait().check()
    finally:
        pause.close()
    assert sorted(ra["moved_ids"]) == dep.ids(0, 100)
    assert sorted(rb["restored_ids"]) == dep.ids(0, 50)  # ran after, from one's state
    dep.job("revert", "three")
    assert dep.changed() == []


def test_row6_control_one_shared_home(dep: Deployment) -> None:
    dep.job("finetune", "shared", lo=0, hi=100)
    two = dep.job("finetune", "shared", lo=50, hi=150)
    assert sorted(two["restored_ids"]) == dep.ids(0, 50)
    dep.job("revert", "shared")
    assert dep.changed() == []
