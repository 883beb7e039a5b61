"""The PostgreSQL place: a store's state in a table beside the user's, in the same database.

What we add to the user's database, and nothing else:

* one table, ``<schema>.nudge_rag_state`` (the schema of the store's own table)::

      CREATE TABLE nudge_rag_state (
          scope text NOT NULL,            -- the store's identity key (one row set per store)
          key   text COLLATE "C" NOT NULL,  -- CURRENT, gen-000007/manifest.json, fb/0/..., ...
          data  bytea NOT NULL,
          PRIMARY KEY (scope, key))

  created on the first write (``CREATE TABLE IF NOT EXISTS`` under a transaction-level advisory
  lock, so two replicas creating it at once do not collide), read as "no state" while missing;
* while a fine-tune or a revert runs, a session-level **advisory lock** keyed by a hash of the
  scope (``pg_try_advisory_lock(bigint)``), held by one connection of the store's own engine for
  the run and released when the run ends, or by the server when that connection dies (a killed
  process, a lost container). While it holds the lock that session's ``application_name`` is
  ``nudge_rag lock pid <pid> on <host>`` (``pg_stat_activity`` shows who runs; the name it had
  is put back afterwards).

Every statement goes through the store's own engine (the same credentials and connection
settings as the user's): a SQLAlchemy ``Engine`` (LlamaIndex ``PGVectorStore``, LangChain
``PGVector``) or ``AsyncEngine`` (LangChain ``PGVectorStore``'s ``PGEngine``). The user's rows are
never read or written here.

To remove everything of ours from a database (see :func:`drop_sql`)::

    DROP TABLE IF EXISTS "public"."nudge_rag_state";                -- every store's state
    DELETE FROM "public"."nudge_rag_state" WHERE scope = '<key>';  -- one store's state
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Protocol

from nudge_rag._faults import checkpoint
from nudge_rag.errors import StateError, StoreBusyError
from nudge_rag.state._base import KVBackend

__all__ = ["TABLE", "HeldConnection", "PostgresBackend", "SqlRunner", "drop_sql", "lock_key"]

#: The one table nudge_rag adds to a database (in the schema of the store's table).
TABLE = "nudge_rag_state"
#: The ``application_name`` of the session holding a store's lock: ``nudge_rag lock pid N on H``.
OWNER_PREFIX = "nudge_rag lock"

Rows = list[tuple[Any, ...]]
Step = tuple[str, dict[str, Any]]
Fetch = Callable[[str, dict[str, Any]], Rows]

#: Bytes per statement of a write (a chunk of a blob and its key: bytea holds up to 1 GB).
_STATEMENT_BYTES = 16 << 20
_POLL_MAX = 0.5


class SqlRunner(Protocol):
    """What the PostgreSQL place needs of the store's SQL (``nudge_rag.stores._pgvector._Sql``)."""

    def run(
        self, steps: list[Step], check: Callable[[list[Rows]], None] | None = None
    ) -> list[Rows]: ...

    def hold(self) -> contextlib.AbstractContextManager[HeldConnection]: ...


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lock_key(scope: str) -> int:
    """The advisory lock key of a scope: a signed 64-bit integer from its sha256."""
    digest = hashlib.sha256(f"nudge_rag_state:{scope}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def drop_sql(schema: str = "public", scope: str | None = None) -> str:
    """The SQL that removes what nudge_rag keeps in a database: the whole table, or one store's
    rows of it (``scope``: the store's identity key, ``finetuner.identity.key``)."""
    rel = f"{_q(schema)}.{_q(TABLE)}"
    if scope is None:
        return f"DROP TABLE IF EXISTS {rel};"
    return f"DELETE FROM {rel} WHERE scope = '{scope.replace(chr(39), chr(39) * 2)}';"


def _like_prefix(prefix: str) -> str:
    esc = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return esc + "%"


# ---------------------------------------------------------------------------------------------
# One connection held for a run (the advisory lock lives as long as it does)
# ---------------------------------------------------------------------------------------------
class HeldConnection:
    """A connection of the store's engine, in autocommit, kept for the length of a run.

    ``fetch`` runs one statement on it; ``discard`` closes it for good rather than handing it
    back to the pool (a connection that may still hold our lock must never serve anyone else).
    """

    def __init__(self, fetch: Fetch, discard: Callable[[], None]) -> None:
        self.fetch = fetch
        self.discard = discard


@contextlib.contextmanager
def hold_sync(engine: Any) -> Iterator[HeldConnection]:
    """A connection of a SQLAlchemy ``Engine`` (checked out of the user's pool for the run)."""
    from sqlalchemy import text

    conn = engine.connect()
    conn.execution_options(isolation_level="AUTOCOMMIT")
    gone = False

    def fetch(sql: str, params: dict[str, Any]) -> Rows:
        res = conn.execute(text(sql), params)
        return [tuple(r) for r in res.fetchall()] if res.returns_rows else []

    def discard() -> None:
        nonlocal gone
        gone = True
        with contextlib.suppress(Exception):
            conn.invalidate()

    try:
        yield HeldConnection(fetch, discard)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


@contextlib.contextmanager
def hold_async(engine: Any, loop: asyncio.AbstractEventLoop | None) -> Iterator[HeldConnection]:
    """A connection of a SQLAlchemy ``AsyncEngine``, kept for the run.

    An asyncpg connection belongs to the event loop that opened it, so it is opened, used and
    closed on one loop: the store's own (``PGEngine``'s background loop, its pool), else a loop
    of our own on a thread that lives as long as the connection.
    """
    from sqlalchemy import text

    thread = None
    if loop is None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="nudge-rag-lock", daemon=True)
        thread.start()
    on = loop

    def call(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, on).result()

    async def connect() -> Any:
        conn = await engine.connect()
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        return conn

    async def execute(conn: Any, sql: str, params: dict[str, Any]) -> Rows:
        res = await conn.execute(text(sql), params)
        return [tuple(r) for r in res.fetchall()] if res.returns_rows else []

    try:
        conn = call(connect())

        def fetch(sql: str, params: dict[str, Any]) -> Rows:
            rows: Rows = call(execute(conn, sql, params))
            return rows

        def discard() -> None:
            with contextlib.suppress(Exception):
                call(conn.invalidate())

        try:
            yield HeldConnection(fetch, discard)
        finally:
            with contextlib.suppress(Exception):
                call(conn.close())
    finally:
        if thread is not None:
            on.call_soon_threadsafe(on.stop)
            thread.join()
            on.close()


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
class PostgresBackend(KVBackend):
    """A store's state in the table ``<schema>.nudge_rag_state`` of the store's own database,
    under ``scope``; the lock is a PostgreSQL advisory lock keyed by a hash of the scope.

    See the module docstring for the table, the lock and how to remove them.

    Args:
        sql: Runs statements on the store's own engine (``run`` in one transaction, ``hold``
            a connection for a run).
        schema: The schema of the store's table (ours goes beside it).
        scope: Which store's rows (``PgVectorAdapter.state_backend`` gives the store's table
            within its database, so that every replica names it alike; or a ``store_id=``).
        server: Where the database is, for messages (``host:port/database``; no credentials).
    """

    kind = "postgres"
    chunk_bytes = 16 << 20  # bytea holds up to 1 GB; 16 MB per row keeps statements modest

    def __init__(self, sql: SqlRunner, schema: str, scope: str, server: str = "") -> None:
        self._sql = sql
        self.schema = schema
        self.scope = scope
        self.table = f"{_q(schema)}.{_q(TABLE)}"
        self.where = f"postgresql://{server} table {schema}.{TABLE} scope {scope}"
        self._exists = False

    # -- the table --------------------------------------------------------------------------
    def _table_exists(self) -> bool:
        if not self._exists:
            rows = self._sql.run([("SELECT to_regclass(:rel) IS NOT NULL", {"rel": self.table})])
            self._exists = bool(rows[0][0][0])
        return self._exists

    def _read(self, sql: str, params: dict[str, Any]) -> Rows:
        """One statement on the table; a table dropped since it was seen reads as empty."""
        try:
            return self._sql.run([(sql, params)])[0]
        except Exception:
            self._exists = False
            if self._table_exists():
                raise
            return []

    def create_table(self) -> None:
        """Create the table if it is missing (two replicas at once: one creates, one waits)."""
        if self._table_exists():
            return
        ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.table} (scope text NOT NULL, "
            'key text COLLATE "C" NOT NULL, data bytea NOT NULL, PRIMARY KEY (scope, key))'
        )
        comment = (
            f"COMMENT ON TABLE {self.table} IS 'nudge_rag fine-tuning state: original vectors, "
            "journal and feedback of each store (scope); drop it to forget them'"
        )
        # CREATE TABLE IF NOT EXISTS is not safe against itself (both see no table, one fails on
        # the catalog's unique index): creators queue on a transaction-level advisory lock.
        guard = ("SELECT pg_advisory_xact_lock(:k)", {"k": lock_key(f"create {self.table}")})
        self._sql.run([guard, (ddl, {}), (comment, {})])
        self._exists = True

    def drop_table(self) -> None:
        """Remove the table: the state of every store of this schema (irreversible)."""
        self._sql.run([(drop_sql(self.schema), {})])
        self._exists = False

    def clear(self) -> None:
        """Remove this store's rows (its journal, originals and feedback; irreversible)."""
        if self._table_exists():
            self._sql.run([(f"DELETE FROM {self.table} WHERE scope = :s", {"s": self.scope})])

    # -- the key-value interface --------------------------------------------------------------
    def _get(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys or not self._table_exists():
            return {}
        sql = (
            f"SELECT key, data FROM {self.table} WHERE scope = :s "
            "AND key = ANY(CAST(:keys AS text[]))"
        )
        rows = self._read(sql, {"s": self.scope, "keys": list(keys)})
        return {str(k): bytes(v) for k, v in rows}

    def _put(self, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        self._check_lock()
        self.create_table()
        sql = (
            f"INSERT INTO {self.table} (scope, key, data) "
            "SELECT :s, k, d FROM unnest(CAST(:keys AS text[]), CAST(:data AS bytea[])) AS u(k, d) "
            "ON CONFLICT (scope, key) DO UPDATE SET data = EXCLUDED.data"
        )
        steps: list[Step] = []
        keys: list[str] = []
        data: list[bytes] = []
        size = 0
        for k, v in items.items():
            if keys and size + len(v) > _STATEMENT_BYTES:
                steps.append((sql, {"s": self.scope, "keys": keys, "data": data}))
                keys, data, size = [], [], 0
            keys.append(k)
            data.append(bytes(v))
            size += len(v)
        steps.append((sql, {"s": self.scope, "keys": keys, "data": data}))

        def before_commit(_: list[Rows]) -> None:
            checkpoint("state.put")  # killed here: the transaction dies with the connection

        try:
            self._sql.run(steps, before_commit)
        except Exception:
            self._exists = False  # dropped since it was seen (a user's DROP TABLE): once more
            if self._table_exists():
                raise
            self.create_table()
            self._sql.run(steps, before_commit)

    def _delete(self, keys: Sequence[str]) -> None:
        if not keys or not self._table_exists():
            return
        self._check_lock()
        sql = f"DELETE FROM {self.table} WHERE scope = :s AND key = ANY(CAST(:keys AS text[]))"
        self._read(sql, {"s": self.scope, "keys": list(keys)})

    def _keys(self, prefix: str) -> list[str]:
        if not self._table_exists():
            return []
        sql = (
            f"SELECT key FROM {self.table} WHERE scope = :s AND key LIKE :p ESCAPE '\\' "
            "ORDER BY key"
        )
        rows = self._read(sql, {"s": self.scope, "p": _like_prefix(prefix)})
        return [str(r[0]) for r in rows]

    # -- feedback: appends and a compaction that cannot lose each other's lines ------------------
    # As KVBackend keeps them (one key per line, ``fb/<epoch>/<time>-<id>``), but an append
    # reads the epoch inside its INSERT under a shared transaction-level advisory lock, and a
    # rewrite switches epochs in one transaction under the exclusive one, carrying over every
    # line of the old epoch its caller had not read (appended by another replica meanwhile).
    _fb_seen: frozenset[str] = frozenset()

    def _epoch_sql(self) -> str:
        return (
            "(SELECT COALESCE((SELECT convert_from(substring(data FROM 2), 'UTF8') FROM "
            f"{self.table} WHERE scope = :s AND key = 'FB_EPOCH'), '0'))"
        )

    def feedback_append(self, line: str) -> None:
        self.create_table()
        guard = ("SELECT pg_advisory_xact_lock_shared(:k)", {"k": lock_key(f"fb {self.scope}")})
        sql = (
            f"INSERT INTO {self.table} (scope, key, data) SELECT :s, 'fb/' || {self._epoch_sql()} "
            "|| '/' || :suffix, :data"
        )
        suffix = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        data = b"=" + line.encode("utf-8")
        self._sql.run([guard, (sql, {"s": self.scope, "suffix": suffix, "data": data})])

    def feedback_read(self, cursor: Any) -> tuple[list[str], Any, bool]:
        lines, new, reset = super().feedback_read(cursor)
        self._fb_seen = frozenset(new[1])
        return lines, new, reset

    def feedback_rewrite(self, lines: Sequence[str]) -> None:
        self.create_table()
        # ``cur``: the epoch in force when each statement runs (the new one after the switch).
        s, cur, new = self.scope, self._epoch_sql(), f"(CAST({self._epoch_sql()} AS bigint) + 1)"
        tag = uuid.uuid4().hex[:12]
        steps: list[Step] = [
            ("SELECT pg_advisory_xact_lock(:k)", {"k": lock_key(f"fb {self.scope}")}),
            (  # the compacted lines first in the new epoch's order
                f"INSERT INTO {self.table} (scope, key, data) SELECT :s, 'fb/' || {new} || '/' "
                "|| lpad(CAST(u.n AS text), 20, '0') || '-' || :tag, u.d "
                "FROM unnest(CAST(:data AS bytea[])) WITH ORDINALITY AS u(d, n)",
                {"s": s, "tag": tag, "data": [b"=" + ln.encode("utf-8") for ln in lines]},
            ),
            (  # then the old epoch's lines the caller never read, as they were
                f"INSERT INTO {self.table} (scope, key, data) SELECT :s, 'fb/' || {new} || '/' "
                f"|| split_part(key, '/', 3), data FROM {self.table} WHERE scope = :s "
                f"AND key LIKE 'fb/%' AND split_part(key, '/', 2) = {cur} "
                "AND key <> ALL(CAST(:seen AS text[]))",
                {"s": s, "seen": sorted(self._fb_seen)},
            ),
            (
                f"INSERT INTO {self.table} (scope, key, data) SELECT :s, 'FB_EPOCH', "
                f"convert_to('=' || CAST({new} AS text), 'UTF8') "
                "ON CONFLICT (scope, key) DO UPDATE SET data = EXCLUDED.data",
                {"s": s},
            ),
            (
                f"DELETE FROM {self.table} WHERE scope = :s AND key LIKE 'fb/%' "
                f"AND split_part(key, '/', 2) <> {cur}",
                {"s": s},
            ),
        ]
        self._sql.run(steps)
        self._fb_seen = frozenset()

    # -- the lock -----------------------------------------------------------------------------
    def lock(self, timeout: float | None = 0.0) -> contextlib.AbstractContextManager[Any]:
        return self._advisory(timeout)

    @contextlib.contextmanager
    def _advisory(self, timeout: float | None) -> Iterator[PostgresBackend]:
        key = lock_key(self.scope)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._sql.hold() as conn:
            # The session of the run says who it is before it takes the lock (application_name:
            # what another run's message names, what pg_stat_activity shows), and no
            # idle_session_timeout ends it while the run works elsewhere. Both are put back
            # before the connection goes back to its pool.
            mine = {
                "application_name": f"{OWNER_PREFIX} pid {os.getpid()} on {socket.gethostname()}",
                "idle_session_timeout": "0",
            }
            old = {n: self._setting(conn, n, v[:63]) for n, v in mine.items()}
            released = True
            try:
                delay = 0.02
                while not conn.fetch("SELECT pg_try_advisory_lock(:k)", {"k": key})[0][0]:
                    if deadline is not None and time.monotonic() >= deadline:
                        msg = (
                            "another fine-tune or revert of this store is running (advisory "
                            f"lock {key} in {self.where}, held by {self._holder(conn, key)}); "
                            "wait for it, or pass lock_timeout=None to wait for it to finish"
                        )
                        raise StoreBusyError(msg)
                    left = None if deadline is None else deadline - time.monotonic()
                    time.sleep(delay if left is None else max(0.0, min(delay, left)))
                    delay = min(delay * 2, _POLL_MAX)
                released = False
                self._lock_conn = (conn, key)
                try:
                    yield self
                finally:
                    self._lock_conn = None
                    with contextlib.suppress(Exception):
                        released = bool(
                            conn.fetch("SELECT pg_advisory_unlock(:k)", {"k": key})[0][0]
                        )
            finally:
                if released:
                    for n, v in old.items():
                        if v is not None:
                            self._setting(conn, n, v)
                else:
                    conn.discard()  # never hand a connection holding our lock back to a pool

    _lock_conn: tuple[HeldConnection, int] | None = None

    @staticmethod
    def _setting(conn: HeldConnection, name: str, value: str) -> str | None:
        """Set a setting of the held session; what it was (None: this server has no such)."""
        try:
            was = conn.fetch("SELECT current_setting(:n, true)", {"n": name})[0][0]
            if was is not None:
                conn.fetch("SELECT set_config(:n, :v, false)", {"n": name, "v": value})
            return None if was is None else str(was)
        except Exception:
            return None

    def _check_lock(self) -> None:
        """While this backend holds the store's lock, every state write first checks that its
        session still holds it (a connection ended by the server, the network or a DBA takes
        the lock with it): a run that lost it stops before changing the state."""
        if self._lock_conn is None:
            return
        conn, key = self._lock_conn
        hi, lo = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
        try:
            held = conn.fetch(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND objsubid = 1 "
                "AND CAST(classid AS bigint) = :hi AND CAST(objid AS bigint) = :lo",
                {"hi": hi, "lo": lo},
            )[0][0]
        except Exception as exc:
            held, why = 0, f"its connection ended: {str(exc).splitlines()[0][:200]}"
        else:
            why = "its session no longer holds it"
        if not held:
            msg = (
                f"this run lost the store's lock in {self.where} ({why}); it stopped before "
                "changing the state: run it again (revert() restores whatever it wrote)"
            )
            raise StateError(msg)

    def _holder(self, conn: HeldConnection, key: int) -> str:
        """The session holding the advisory lock ``key``, as the server and we know it."""
        hi, lo = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
        try:
            rows = conn.fetch(
                "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND CAST(l.classid AS bigint) = :hi AND CAST(l.objid AS bigint) = :lo "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                {"hi": hi, "lo": lo},
            )
        except Exception:  # pg_stat_activity may be restricted: say what we can
            rows = []
        if not rows:
            return "another session (it could not be named)"
        pid, app, addr, start = rows[0]
        if app and str(app).startswith(OWNER_PREFIX + " "):
            who = str(app)[len(OWNER_PREFIX) + 1 :] + f", server process {pid}"
        else:
            who = f"server process {pid}" + (f" ({app})" if app else "")
        if addr:
            who += f" from {addr}"
        if start is not None:
            who += f", connected since {start}"
        return who
