"""The on-disk state: generations switched atomically, verified on read, one lock per store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nudge_rag.errors import StateError, StoreBusyError
from nudge_rag.state import (
    FinetuneState,
    StateLock,
    default_state_home,
    state_dir_for,
    vectors_match,
)


def _commit(d: Path, n: int = 3, seed: int = 0, status: str = "writing") -> FinetuneState:
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(n, 4)).astype(np.float32).astype(np.float64)
    t = rng.normal(size=(n, 4)).astype(np.float32).astype(np.float64)
    return FinetuneState.commit(
        d,
        ids=[f"r{i}" for i in range(n)],
        originals=o,
        targets=t,
        priors=o.copy(),
        manifest={"identity": "user:x", "durable": True},
        status=status,
    )


def test_commit_then_load_round_trips_every_array(tmp_path: Path) -> None:
    st = _commit(tmp_path)
    back = FinetuneState.load(tmp_path)
    assert back is not None
    assert back.ids == ["r0", "r1", "r2"]
    assert np.array_equal(back.originals, st.originals)
    assert np.array_equal(back.targets, st.targets)
    assert np.array_equal(back.priors, st.priors)
    assert back.status == "writing" and back.active
    assert back.identity == "user:x"
    assert (tmp_path / "CURRENT").read_text().strip() == "gen-000001"


def test_a_new_generation_replaces_the_old_and_removes_it(tmp_path: Path) -> None:
    _commit(tmp_path, n=3, seed=0)
    _commit(tmp_path, n=5, seed=1)
    back = FinetuneState.load(tmp_path)
    assert back is not None and len(back.ids) == 5
    assert back.generation.name == "gen-000002"
    assert not (tmp_path / "gen-000001").exists()


def test_mark_changes_status_only(tmp_path: Path) -> None:
    st = _commit(tmp_path)
    st.mark("applied", extra=1)
    back = FinetuneState.load(tmp_path)
    assert back is not None and back.status == "applied" and back.manifest["extra"] == 1
    assert np.array_equal(back.targets, st.targets)


def test_no_state_is_none(tmp_path: Path) -> None:
    assert FinetuneState.load(tmp_path) is None
    assert FinetuneState.load(tmp_path / "missing") is None


@pytest.mark.parametrize("name", ["ids.json", "originals.npy", "targets.npy", "priors.npy"])
def test_a_damaged_file_is_refused_by_name(tmp_path: Path, name: str) -> None:
    st = _commit(tmp_path)
    f = st.generation / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match=name):
        FinetuneState.load(tmp_path)


def test_a_missing_generation_is_refused(tmp_path: Path) -> None:
    (tmp_path / "CURRENT").write_text("gen-000009\n")
    with pytest.raises(StateError, match="missing or damaged"):
        FinetuneState.load(tmp_path)
    (tmp_path / "CURRENT").write_text("../../etc\n")
    with pytest.raises(StateError, match="not a state generation"):
        FinetuneState.load(tmp_path)


def test_an_older_format_is_refused_not_guessed(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(StateError, match="older nudge_rag"):
        FinetuneState.load(tmp_path)


def test_leftovers_of_a_killed_commit_are_ignored_then_removed(tmp_path: Path) -> None:
    _commit(tmp_path, n=3)
    # a generation folder renamed into place but never made current, and a temporary folder
    (tmp_path / "gen-000002").mkdir()
    (tmp_path / ".gen-000003.999.tmp").mkdir()
    back = FinetuneState.load(tmp_path)
    assert back is not None and back.generation.name == "gen-000001"
    _commit(tmp_path, n=4, seed=3)
    names = sorted(p.name for p in tmp_path.iterdir() if "gen-" in p.name)
    assert names == ["gen-000002"]
    loaded = FinetuneState.load(tmp_path)
    assert loaded is not None and len(loaded.ids) == 4


def test_ours_tells_our_vectors_from_the_users() -> None:
    o = np.eye(3)
    t = np.array([[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [0.8, 0.0, 0.6]])
    st = FinetuneState(Path("."), Path("."), {}, ["a", "b", "c"], o, t, o.copy())
    current = np.array([t[0], o[1], [0.0, 1.0, 0.0]], dtype=np.float32)
    assert st.ours(np.arange(3), current, 0.0).tolist() == [True, True, False]


def test_vectors_match_exact_and_with_tolerance() -> None:
    a = np.array([[0.1, 0.2, 0.3]], dtype=np.float64)
    assert vectors_match(a.astype(np.float32), a)[0]  # a float32 store holds float32(a)
    assert not vectors_match(a.astype(np.float32) * 1.001, a)[0]
    assert vectors_match(a * 2.0, a, tol=1e-6)[0]  # a renormalising store: direction only
    assert not vectors_match(a + np.array([[0, 0, 1e-3]]), a, tol=1e-6)[0]


def test_state_home_follows_the_environment_not_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_RAG_HOME", str(tmp_path / "h"))
    a = state_dir_for("chroma:1234")
    monkeypatch.chdir(tmp_path)
    assert state_dir_for("chroma:1234") == a
    assert a.parent == default_state_home() == tmp_path / "h" / "state"
    assert state_dir_for("chroma:1234") != state_dir_for("chroma:1235")
    monkeypatch.delenv("NUDGE_RAG_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_state_home() == tmp_path / "xdg" / "nudge_rag" / "state"


def test_the_lock_excludes_a_second_holder_in_this_process(tmp_path: Path) -> None:
    with (
        StateLock(tmp_path, 0.0),
        pytest.raises(StoreBusyError, match="another fine-tune or revert"),
        StateLock(tmp_path, 0.0),
    ):
        pass
    with StateLock(tmp_path, 0.0):  # released: free again
        pass


def test_the_lock_excludes_another_process_and_waits_for_it(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from nudge_rag.state import StateLock
        with StateLock({str(tmp_path)!r}, 0.0):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
            with pytest.raises(StoreBusyError, match="pid"):
                StateLock(tmp_path, 0.0).__enter__()
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            with StateLock(tmp_path, None):  # waits until the other process lets go
                assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()


def test_a_missing_current_beside_generations_is_damage_not_no_state(tmp_path: Path) -> None:
    _commit(tmp_path)
    (tmp_path / "CURRENT").unlink()
    with pytest.raises(StateError, match="CURRENT is missing"):
        FinetuneState.load(tmp_path)


def test_current_exists_before_the_first_generation(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    # what a commit killed right after its first step leaves: CURRENT says "none"
    (tmp_path / "CURRENT").write_text("none\n")
    assert FinetuneState.load(tmp_path) is None
    st = _commit(tmp_path)
    assert (tmp_path / "CURRENT").read_text().strip() == st.generation.name
