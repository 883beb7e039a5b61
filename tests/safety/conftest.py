"""Fixtures for the safety tests (issue 9): a private NUDGE_RAG_HOME per test, the zygote that
forks the crash tests' processes, and the named third-party warnings these tests cannot avoid.
The servers (Chroma for the concurrency test, PostgreSQL + pgvector and Milvus Lite for the
lifecycle tests' server kinds) are fixtures of tests/conftest.py, shared with the store tests.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import safety_kit
from safety_zygote import Zygote

HERE = Path(__file__).resolve().parent


def _store_cases() -> Any:
    """tests/stores/store_cases.py (the one list of third-party warnings the store tests allow)."""
    mod = sys.modules.get("store_cases")
    if mod is None:
        spec = importlib.util.spec_from_file_location(
            "store_cases", HERE.parent / "stores" / "store_cases.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["store_cases"] = mod
        spec.loader.exec_module(mod)
    return mod


THIRD_PARTY_WARNINGS = list(_store_cases().THIRD_PARTY_WARNINGS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            for spec in THIRD_PARTY_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if safety_kit.SUMMARY:
        terminalreporter.section("nudge_rag safety")
        for line in safety_kit.SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def nudge_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps its fine-tuning states in a folder of its own."""
    home = tmp_path / "nudge_home"
    monkeypatch.setenv("NUDGE_RAG_HOME", str(home))
    monkeypatch.delenv("NUDGE_RAG_KILL_AT", raising=False)
    monkeypatch.delenv("NUDGE_RAG_FAULT_LOG", raising=False)
    return home


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """A process that has imported every framework once and forks a child per job."""
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    try:
        yield z
    finally:
        z.close()
