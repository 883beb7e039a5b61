"""Fault injection on a store whose state lives on its server (issue 19): a LlamaIndex
``ChromaVectorStore`` on a real Chroma server, its state in the ``nudge_rag_state`` companion
collection. The same three steps and seeded kill points as test_crash.py (kill -9 during a first
and a second fine-tune and a revert), with one difference that is the point: every process
runs with a new, empty ``NUDGE_RAG_HOME`` (a replica whose container lost its disk), so what
recovers the store is only what the server holds.

A server cannot be copied back to a stage like a folder: the stage before step k is rebuilt
instead (a new collection with the same records, steps 1 .. k-1 run cleanly), at a new identity
of its own.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import safety_kit as K
from safety_zygote import JobResult, Zygote
from test_crash import (
    N_KILLS,
    STEPS,
    CrashRig,
    Trial,
    assert_clean,
    crash_suite,
    dry_run,
    run_trial,
)

KIND = "chroma-server"
_HOMES = itertools.count()


class ServerCrashRig(CrashRig):
    """A store on the session's Chroma server; a new home for every process."""

    server: str = ""

    def run(self, target: str, kwargs: dict[str, Any], *, name: str, **env: str) -> JobResult:
        home = self.base / "homes" / f"{next(_HOMES):05d}"
        home.mkdir(parents=True)
        envs: dict[str, str | None] = {
            "NUDGE_RAG_HOME": str(home),
            "NUDGE_RAG_KILL_AT": None,
            "NUDGE_RAG_FAULT_LOG": None,
            "NUDGE_RAG_TEST_CHROMA": self.server,
            **env,
        }
        args = {"kind": self.kind, "root": str(self.root), **kwargs}
        return self.z.run(f"safety_kit:{target}", args, env=envs, cwd=self.cwd, name=name)

    def save_stage(self, k: int) -> None:
        pass  # rebuilt on restore

    def restore_stage(self, k: int) -> None:
        self.run("job_build", {}, name="rebuild").check()
        for step in range(1, k + 1):
            self.step(step).check()


@pytest.fixture
def server_rig(chroma_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> Any:
    host, port = chroma_server
    monkeypatch.setattr(ServerCrashRig, "server", f"{host}:{port}")
    monkeypatch.setattr("test_crash.CrashRig", ServerCrashRig)  # crash_suite builds its lanes
    return ServerCrashRig


@pytest.mark.slow
def test_kill_during_finetunes_and_revert_on_a_chroma_server_then_a_fresh_home_reverts(
    zygote: Zygote, server_rig: Any, tmp_path: Path
) -> None:
    trials = crash_suite(zygote, KIND, tmp_path, N_KILLS)
    assert {t.step for t in trials} == {1, 2, 3}
    points = {t.point.partition("#")[0] for t in trials}
    assert {"store.batch", "journal.switch", "journal.switched", "journal.mark"} <= points
    assert {"finetune.read", "finetune.fit", "state.put"} <= points
    assert_clean(trials, 20)
    assert zygote.threads_now() == 1


def test_kill_smoke_on_a_chroma_server(zygote: Zygote, server_rig: Any, tmp_path: Path) -> None:
    """A few kill points, each recovered by a process with an empty home."""
    rig = server_rig(zygote, KIND, tmp_path)
    snaps, points = dry_run(rig)
    trials = [
        Trial(1, "store.batch#2", "revert"),
        Trial(2, "store.batch#4", "revert"),
        Trial(2, "journal.switched#1", "redo"),
        Trial(3, "store.batch#1", "revert"),
    ]
    for t in trials:
        assert t.point in points[t.step], (t.point, points[t.step])
        run_trial(rig, t, snaps)
    assert_clean(trials, 4)
    assert STEPS[3] == "revert"
    assert K.SERVER_KINDS == [KIND]
