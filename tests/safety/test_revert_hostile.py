"""revert() when the state is not what it should be: gone (it says so and restores nothing; it
never pretends), or damaged (a StateError naming the file; the store is not touched, and a
fine-tune refuses it too rather than guessing).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import safety_kit as K
from safety_live import Live, make_live

from nudge_rag.errors import StateError

Q1, Q2 = K.queries("q1"), K.queries("q2")
KINDS = ["langchain-inmemory", "chroma", "llamaindex-simple"]


@pytest.fixture(params=KINDS)
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    store = make_live(request.param, tmp_path / "store")
    yield store
    store.close()


def state_files(state_dir: Path) -> list[Path]:
    """The files the state in force is made of: CURRENT and its generation's files."""
    current = state_dir / "CURRENT"
    generation = state_dir / current.read_text().strip()
    assert generation.is_dir(), generation
    return [current, *sorted(p for p in generation.iterdir() if p.is_file())]


def test_revert_with_the_state_gone_says_so(live: Live, caplog: pytest.LogCaptureFixture):
    ft = live.finetuner()
    ft.finetune(Q1)
    tuned = live.snapshot()
    state_dir = Path(ft.report.state_dir)
    assert state_dir.is_dir()
    shutil.rmtree(state_dir)
    with caplog.at_level(logging.WARNING, logger="nudge_rag"):
        rev = live.finetuner().revert()
    assert rev.n_restored == 0 and rev.n_already_original == 0
    assert (
        rev.note and str(state_dir) in rev.note
    )  # says where it looked, and that it found nothing
    assert any(
        str(state_dir) in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )
    assert K.diff(live.snapshot(), tuned) == []  # nothing written


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_revert_refuses_a_damaged_state_and_names_the_file(live: Live, damage: str):
    s0 = live.snapshot()
    ft = live.finetuner()
    ft.finetune(Q1)
    tuned = live.snapshot()
    files = state_files(Path(ft.report.state_dir))
    assert {f.name for f in files} >= {"CURRENT", "manifest.json", "ids.json", "originals.npy"}
    failures = []
    for f in files:
        if damage == "missing" and f.name == "CURRENT":
            continue  # test_a_lost_current_is_not_taken_for_no_state
        data = f.read_bytes()
        if damage == "truncated":
            f.write_bytes(data[: len(data) // 2])
        else:
            f.unlink()
        try:
            for what, run in (
                ("revert", lambda: live.finetuner().revert()),
                ("finetune", lambda: live.finetuner().finetune(Q2)),
            ):
                try:
                    out = run()
                except StateError as exc:
                    if f.name not in str(exc):
                        failures.append(
                            f"{what} with {f.name} {damage}: StateError not naming it: {exc}"
                        )
                else:
                    failures.append(f"{what} with {f.name} {damage}: no StateError ({out!r:.200})")
                if K.diff(live.snapshot(), tuned):
                    failures.append(f"{what} with {f.name} {damage}: the store was changed")
                    pytest.fail("\n".join(failures))  # the rest would start from a changed store
        finally:
            f.write_bytes(data)
    assert failures == []
    # Mended, the state works: revert restores every record.
    rev = live.finetuner().revert()
    assert rev.n_restored == 12
    assert K.diff(live.snapshot(), s0, atol=live.tol) == []


def test_a_lost_current_is_not_taken_for_no_state(live: Live):
    s0 = live.snapshot()
    ft = live.finetuner()
    ft.finetune(Q1)
    tuned = live.snapshot()
    current = Path(ft.report.state_dir) / "CURRENT"
    data = current.read_bytes()
    current.unlink()
    try:
        with pytest.raises(StateError, match="CURRENT"):
            live.finetuner().revert()
        with pytest.raises(StateError, match="CURRENT"):
            live.finetuner().finetune(Q2)
        assert K.diff(live.snapshot(), tuned) == []
    finally:
        if not current.exists():
            current.write_bytes(data)
    live.finetuner().revert()
    assert K.diff(live.snapshot(), s0, atol=live.tol) == []
