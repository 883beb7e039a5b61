"""The PostgreSQL place of a store's state (issue 19): the table ``nudge_rag_state`` beside the
store's, its generations, blobs and feedback, and the advisory lock, on a real PostgreSQL.

Every framework flavour hands out the same backend: LlamaIndex ``PGVectorStore`` (psycopg2),
LangChain ``PGVector`` (psycopg 3, and asyncpg in ``async_mode``), LangChain ``PGVectorStore``
(asyncpg on ``PGEngine``'s loop). Two backend objects over two engines are two replicas.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from store_cases import table_name

from nudge_rag.errors import StateError, StoreBusyError
from nudge_rag.feedback import FeedbackEntry
from nudge_rag.state import FinetuneState
from nudge_rag.state import _postgres as pgstate
from nudge_rag.state._postgres import TABLE, PostgresBackend, drop_sql, lock_key
from nudge_rag.stores import adapter_for
from nudge_rag.stores._pgvector import sync_sql
from nudge_rag.testing import BagOfWordsEmbedder

REPO = Path(__file__).resolve().parents[2]
FLAVOURS = [
    "llamaindex",
    "langchain-pgvector",
    "langchain-pgvector-async",
    "langchain-pgvectorstore",
]


def _store(flavour: str, urls: dict[str, str], lc_engine: Any, request: Any) -> Any:
    emb = BagOfWordsEmbedder(8)
    if flavour == "llamaindex":
        from llama_index.core.schema import TextNode
        from llama_index.vector_stores.postgres import PGVectorStore

        vs = PGVectorStore.from_params(
            connection_string=urls["psycopg2"],
            async_connection_string=urls["asyncpg"],
            table_name=table_name("li"),
            embed_dim=8,
        )
        request.addfinalizer(lambda: vs._engine and vs._engine.dispose())
        vs.add([TextNode(id_="a", text="one two", embedding=emb.embed(["one two"])[0].tolist())])
        return vs
    if flavour.startswith("langchain-pgvector") and flavour != "langchain-pgvectorstore":
        from langchain_postgres import PGVector

        if flavour.endswith("async"):
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(urls["psycopg"])  # its asyncpg setup fails: psycopg
            vs = PGVector(
                emb.as_langchain(),
                connection=engine,
                collection_name=table_name("lca"),
                async_mode=True,
            )
            import asyncio

            asyncio.run(vs.aadd_texts(["one two"], ids=["a"]))
            asyncio.run(engine.dispose())  # its pool belonged to that loop
            return vs
        from sqlalchemy import create_engine

        engine = create_engine(urls["psycopg"])
        request.addfinalizer(engine.dispose)
        vs = PGVector(emb.as_langchain(), connection=engine, collection_name=table_name("lc"))
        vs.add_texts(["one two"], ids=["a"])
        return vs
    from langchain_postgres import PGVectorStore

    name = table_name("lcs")
    lc_engine.init_vectorstore_table(name, 8)
    vs = PGVectorStore.create_sync(lc_engine, emb.as_langchain(), name)
    vs.add_texts(["one two"])
    return vs


@pytest.fixture(params=FLAVOURS)
def flavour_backend(
    request: pytest.FixtureRequest, pg_urls: dict[str, str], pg_langchain_engine: Any
) -> Iterator[PostgresBackend]:
    pytest.importorskip("langchain_postgres")
    pytest.importorskip("llama_index.vector_stores.postgres")
    ad = adapter_for(_store(request.param, pg_urls, pg_langchain_engine, request))
    be = ad.state_backend(ad.identity().key)
    assert isinstance(be, PostgresBackend)
    yield be
    be.clear()


_ENGINES: list[Any] = []


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    while _ENGINES:
        _ENGINES.pop().dispose()


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    _ENGINES.append(engine)
    return engine


def _replica(
    urls: dict[str, str], scope: str, driver: str = "psycopg", schema: str = "public"
) -> PostgresBackend:
    """A backend over an engine of its own: another replica of the same deployment."""
    return PostgresBackend(sync_sql(_engine(urls[driver])), schema, scope, "test")


def _commit(be: Any, n: int, seed: int) -> FinetuneState:
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(n, 8))
    return FinetuneState.commit(
        be,
        ids=[f"r{i}" for i in range(n)],
        originals=o,
        targets=rng.normal(size=(n, 8)),
        priors=o.copy(),
        manifest={"identity": be.scope, "durable": True},
    )


def test_every_flavour_keeps_generations_in_the_table_beside_the_store(
    flavour_backend: PostgresBackend, pg_engine: Any
) -> None:
    be = flavour_backend
    assert be.kind == "postgres" and TABLE in be.where and be.local_dir is None
    assert FinetuneState.load(be) is None and not be.has_state()
    first = _commit(be, 3, 0)
    first.mark("applied")
    second = _commit(be, 5, 1)
    back = FinetuneState.load(be)
    assert back is not None and back.name == "gen-000002" and back.ids == second.ids
    assert np.array_equal(back.targets, second.targets) and back.status == "writing"
    assert be.generations() == [2]  # the old generation is gone
    with be.lock(0):  # each flavour holds a connection of its own engine for the run
        back.mark("applied")
    assert FinetuneState.load(be).status == "applied"  # type: ignore[union-attr]
    # Our rows only, in our table; the user's table is untouched by any of it.
    from sqlalchemy import text

    with pg_engine.connect() as conn:
        keys = conn.execute(
            text(f"SELECT key FROM public.{TABLE} WHERE scope = :s ORDER BY key"), {"s": be.scope}
        ).scalars()
        assert set(keys) >= {"CURRENT", "gen-000002/manifest.json", "gen-000002/ids.json"}


def test_a_generation_lands_in_one_transaction_or_not_at_all(
    pg_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    be = _replica(pg_urls, table_name("scope"))
    _commit(be, 3, 0)

    def boom(name: str) -> None:
        if name == "state.put":
            raise RuntimeError("the process dies with its transaction open")

    monkeypatch.setattr(pgstate, "_STATEMENT_BYTES", 64)  # several statements per generation
    monkeypatch.setattr(pgstate, "checkpoint", boom)
    with pytest.raises(RuntimeError, match="transaction open"):
        _commit(be, 4, 1)
    assert be._keys("gen-000002") == []  # nothing of the new generation landed
    back = FinetuneState.load(be)
    assert back is not None and back.name == "gen-000001" and len(back.ids) == 3
    monkeypatch.setattr(pgstate, "checkpoint", lambda name: None)
    assert FinetuneState.load(be) is not None
    assert len(_commit(be, 4, 1).ids) == 4
    assert FinetuneState.load(be).name == "gen-000002"  # type: ignore[union-attr]


def test_blobs_past_a_chunk_round_trip_and_a_torn_one_is_refused(
    pg_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    be = _replica(pg_urls, table_name("scope"))
    big = np.random.default_rng(3).bytes((16 << 20) + 12345)  # two 16 MB rows
    be.write_generation("gen-000001", {"big.npy": big, "small": b"x"})
    assert be.read("gen-000001", "big.npy") == big
    assert sorted(be._keys("gen-000001/big.npy")) == [
        "gen-000001/big.npy",
        "gen-000001/big.npy#0",
        "gen-000001/big.npy#1",
    ]
    # Many chunks over several statements of one transaction, read back by another replica.
    monkeypatch.setattr(be, "chunk_bytes", 1000)
    monkeypatch.setattr(pgstate, "_STATEMENT_BYTES", 5000)
    data = np.random.default_rng(4).bytes(23_456)
    be.write_generation("gen-000002", {"originals.npy": data})
    other = _replica(pg_urls, be.scope, "psycopg2")
    assert other.read("gen-000002", "originals.npy") == data
    be._put({"gen-000002/originals.npy#3": b"damaged"})
    with pytest.raises(StateError, match="digest mismatch"):
        other.read("gen-000002", "originals.npy")
    be._delete(["gen-000002/originals.npy#5"])
    with pytest.raises(StateError, match="incomplete"):
        other.read("gen-000002", "originals.npy")


def test_keys_by_prefix_take_like_wildcards_literally(pg_urls: dict[str, str]) -> None:
    be = _replica(pg_urls, "scope_with_%_and_\\")
    be._put({"a_b/1": b"=1", "axb/2": b"=2", "a%c": b"=3", "a\\d": b"=4"})
    assert be._keys("a_b/") == ["a_b/1"]
    assert be._keys("a%") == ["a%c"]
    assert be._keys("a\\") == ["a\\d"]
    assert _replica(pg_urls, "scope_with_x_and_\\")._keys("a") == []  # another scope
    be.clear()
    assert be._keys("") == []


def test_feedback_of_one_replica_is_read_by_the_other(pg_urls: dict[str, str]) -> None:
    scope = table_name("scope")
    one, two = _replica(pg_urls, scope), _replica(pg_urls, scope, "psycopg2")
    for i in range(3):
        one.feedback_append(f'{{"q": "one {i}"}}')
        two.feedback_append(f'{{"q": "two {i}"}}')
    lines, cursor, reset = one.feedback_read(None)
    assert reset and sorted(lines) == sorted(
        [f'{{"q": "one {i}"}}' for i in range(3)] + [f'{{"q": "two {i}"}}' for i in range(3)]
    )
    two.feedback_append('{"q": "later"}')
    more, cursor, reset = one.feedback_read(cursor)
    assert (more, reset) == (['{"q": "later"}'], False)
    two.feedback_read(None)  # a compaction rewrites what its replica has read
    two.feedback_rewrite(['{"q": "compacted"}'])
    after, _, reset = one.feedback_read(cursor)
    assert (after, reset) == (['{"q": "compacted"}'], True)
    assert one.has_state()


def test_two_replicas_creating_the_table_at_once_both_succeed(
    pg_urls: dict[str, str], pg_engine: Any
) -> None:
    from sqlalchemy import text

    schema = table_name("schema")
    with pg_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    replicas = [
        _replica(pg_urls, f"s{i}", d, schema)
        for i, d in enumerate(["psycopg", "psycopg2", "psycopg", "psycopg2"])
    ]
    assert not replicas[0].has_state()  # reading a missing table creates nothing
    with pg_engine.connect() as conn:
        assert (
            conn.execute(text("SELECT to_regclass(:r)"), {"r": f"{schema}.{TABLE}"}).scalar()
            is None
        )
    gate = threading.Barrier(len(replicas))
    errors: list[BaseException] = []

    def put(be: PostgresBackend) -> None:
        gate.wait()
        try:
            be._put({"k": b"=v"})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(be,)) for be in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(be._get(["k"]) == {"k": b"=v"} for be in replicas)
    replicas[0].drop_table()  # by hand, or by another replica: the others read no state
    assert not replicas[1].has_state() and FinetuneState.load(replicas[1]) is None
    replicas[1]._put({"k": b"=again"})  # and the next write creates it again
    assert replicas[2]._get(["k"]) == {}
    assert replicas[1]._get(["k"]) == {"k": b"=again"}


def test_drop_sql_names_the_table_and_quotes_the_scope() -> None:
    assert drop_sql() == f'DROP TABLE IF EXISTS "public"."{TABLE}";'
    assert drop_sql("s", "pg:it's") == f"DELETE FROM \"s\".\"{TABLE}\" WHERE scope = 'pg:it''s';"
    assert lock_key("a") != lock_key("b") and -(2**63) <= lock_key("a") < 2**63


# -- the advisory lock, across processes --------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from sqlalchemy import create_engine
    from nudge_rag.state._postgres import PostgresBackend
    from nudge_rag.stores._pgvector import sync_sql

    be = PostgresBackend(sync_sql(create_engine(sys.argv[1])), "public", sys.argv[2])
    with be.lock(0):
        print("locked", flush=True)
        sys.stdin.readline()  # hold it until told (or killed)
    print("released", flush=True)
    """
)


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


def _holder(url: str, scope: str, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, scope],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "locked\n", line
    return proc


def test_the_lock_excludes_another_process_names_it_and_waits_for_it(
    pg_urls: dict[str, str], holders: list[subprocess.Popen[str]]
) -> None:
    scope = table_name("scope")
    proc = _holder(pg_urls["psycopg"], scope, holders)
    mine = _replica(pg_urls, scope, "psycopg2")
    with pytest.raises(StoreBusyError, match=f"pid {proc.pid} on ") as busy, mine.lock(0):
        pass
    assert "server process" in str(busy.value) and TABLE in str(busy.value)
    with pytest.raises(StoreBusyError), mine.lock(0.05):  # a number: waits that long
        pass
    got: list[str] = []

    def wait_for_it() -> None:
        with mine.lock(None):
            got.append("locked")

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "released\n"
    waiter.join()
    assert got == ["locked"]


def test_a_killed_holder_s_lock_is_released_by_the_server(
    pg_urls: dict[str, str], holders: list[subprocess.Popen[str]]
) -> None:
    scope = table_name("scope")
    proc = _holder(pg_urls["psycopg"], scope, holders)
    mine = _replica(pg_urls, scope)
    with pytest.raises(StoreBusyError), mine.lock(0):
        pass
    os.kill(proc.pid, signal.SIGKILL)  # no unlock, no atexit: the connection just dies
    assert proc.wait() == -signal.SIGKILL
    # The server ends the dead session and frees its lock (120 s: a guard, not a wait).
    other = _replica(pg_urls, scope, "psycopg2")
    with mine.lock(120), pytest.raises(StoreBusyError), other.lock(0):
        pass


def test_two_finetuners_in_one_process_exclude_each_other(pg_urls: dict[str, str]) -> None:
    scope = table_name("scope")
    a, b = _replica(pg_urls, scope), _replica(pg_urls, scope)
    with a.lock(0), pytest.raises(StoreBusyError), b.lock(0):
        pass
    with b.lock(0):  # released on exit, and the connection is back in its pool unlocked
        pass


def test_replicas_reaching_the_database_under_other_names_share_one_state(
    pg_urls: dict[str, str], pg_engine: Any, request: pytest.FixtureRequest, monkeypatch: Any
) -> None:
    # One replica goes through a pooler or a service name, another straight to the server: the
    # store's identity names the host each was given, the state's scope names the table only.
    pytest.importorskip("langchain_postgres")
    from langchain_postgres import PGVector

    name = table_name("lc")
    emb = BagOfWordsEmbedder(8).as_langchain()
    one = adapter_for(PGVector(emb, connection=pg_engine, collection_name=name))
    PGVector(emb, connection=pg_engine, collection_name=name).add_texts(["x"], ids=[name])
    two = adapter_for(PGVector(emb, connection=_engine(pg_urls["psycopg"]), collection_name=name))
    monkeypatch.setattr(two, "_server", lambda: "db.internal:5432/postgres")
    assert one.identity() != two.identity()
    a, b = one.state_backend(one.identity().key), two.state_backend(two.identity().key)
    assert a.scope == b.scope == f"pgvector:public.langchain_pg_embedding/{one._t.scope[1]}"
    with a.lock(0), pytest.raises(StoreBusyError), b.lock(0):
        pass
    a.feedback_append('{"q": "x"}')
    assert b.feedback_read(None)[0] == ['{"q": "x"}']
    a.clear()
    # A name of the user's (store_id=) is its own scope.
    assert one.state_backend("user:mine").scope == "user:mine"


def test_a_compaction_keeps_the_lines_another_replica_appended_meanwhile(
    pg_urls: dict[str, str],
) -> None:
    from nudge_rag.feedback import FeedbackLog

    scope = table_name("scope")
    one, two = _replica(pg_urls, scope), _replica(pg_urls, scope, "psycopg2")
    log_one, log_two = FeedbackLog.on(one), FeedbackLog.on(two)
    for i in range(3):
        log_one.record(f"question {i}", [f"d{i}"])
        log_one.record(f"question {i}", [f"d{i}"])  # the same confirmation twice: one entry
    assert len(log_two.training_pairs()) == 3
    two.feedback_read(None)  # replica two has read these lines ...
    one.feedback_append(json.dumps(FeedbackEntry("late", {"d9": 1.0}, 1.0).to_json()))
    two.feedback_rewrite([ln for ln in one.feedback_read(None)[0][:2]])  # ... not this one
    lines, _, _ = one.feedback_read(None)
    assert len(lines) == 3 and "late" in lines[-1]  # carried over, newest last
    assert one.feedback_read(None)[1][0] == "1"  # a new epoch; the old one's keys are gone
    assert all(k.startswith("fb/1/") for k in one._keys("fb/"))
    # Compaction through the log itself, then both logs read the same entries.
    log_two.compact()
    assert sorted(q for q, _ in log_one.training_pairs()) == sorted(
        q for q, _ in FeedbackLog.on(two).training_pairs()
    )


def test_a_run_whose_lock_session_ends_stops_before_changing_the_state(
    pg_urls: dict[str, str], pg_engine: Any
) -> None:
    from sqlalchemy import text

    be = _replica(pg_urls, table_name("scope"))
    _commit(be, 3, 0)
    with be.lock(0):
        assert be._lock_conn is not None
        conn, _ = be._lock_conn
        pid = conn.fetch("SELECT pg_backend_pid()", {})[0][0]
        idle = conn.fetch("SELECT current_setting('idle_session_timeout')", {})[0][0]
        assert idle == "0"  # a server's idle timeout cannot end it while the run works
        _commit(be, 4, 1)  # still held: writes go on
        with pg_engine.connect() as other:  # a DBA, a failover, a network cut
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(StateError, match="lost the store's lock"):
            _commit(be, 5, 2)
    back = FinetuneState.load(be)
    assert back is not None and len(back.ids) == 4  # the generation before the loss
    with _replica(pg_urls, be.scope).lock(0):  # the lock went with the session
        pass
