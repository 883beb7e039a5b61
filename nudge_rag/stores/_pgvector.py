"""Adapter for PostgreSQL tables with a pgvector column, as LlamaIndex's ``PGVectorStore``
(llama-index-vector-stores-postgres) and LangChain's ``PGVectorStore`` / ``PGVector``
(langchain-postgres) keep them.

Facts it relies on (PostgreSQL 18, pgvector 0.8, SQLAlchemy 2.0; psycopg2, psycopg 3 and asyncpg):

- The vectors are a ``vector(d)`` column: float32, kept exactly as written. Read as ``real[]``
  (each float4 exact in a Python float); written as text ``[x,y,...]`` built from each float32's
  shortest round-trip decimal, which pgvector parses back to the same float32. ``halfvec``
  (LlamaIndex ``use_halfvec=True``) keeps 16-bit floats and is refused: a float32 would not read
  back as written.
- Where the ids live: LlamaIndex ``data_<table_name>`` has a bigint primary key ``id`` and the
  node id in ``node_id`` (not unique, not indexed); LangChain ``PGVectorStore`` has one table
  per store with the id column (UUID by default) as primary key; LangChain ``PGVector`` keeps
  every collection in ``langchain_pg_embedding`` (varchar primary key ``id``) with a
  ``collection_id``. Pages go by primary key (``WHERE key > last ORDER BY key LIMIT n``): a
  stable order that writes do not change, every record once, each page an index range.
- How each framework ranks: LlamaIndex always by cosine distance (``<=>``); LangChain by its
  ``distance_strategy``: ``<=>`` cosine, ``<->`` L2 (the distance, not squared), ``<#>``
  (minus the inner product). ``search`` uses the same operator, so the same index.
- An HNSW index returns at most ``hnsw.ef_search`` rows (40 by default): searches raise it per
  transaction (``SET LOCAL``, up to its maximum of 1000) and, on pgvector 0.8+, turn on
  iterative scans so that a filtered search still fills ``k``. An IVFFlat index visits
  ``ivfflat.probes`` lists (the server's setting, 1 by default): filtered searches turn on its
  iterative scan (pgvector 0.8+, ``relaxed_order``, the only one IVFFlat has), else a list
  emptied by the filter comes back short (1M rows, 1,000 lists: 32 of 250 queries). A query that
  still comes back short of what the table holds is run again without the index (exact).
- Writes: one ``UPDATE ... FROM unnest(ids, vectors)`` per batch, in one transaction that
  checks every id was updated before it commits. Only the vector column is set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nudge_rag.errors import StoreError
from nudge_rag.state._postgres import HeldConnection, PostgresBackend, hold_async, hold_sync
from nudge_rag.stores._base import (
    Metric,
    StoreIdentity,
    StorePage,
    VectorStoreAdapter,
    as_page_array,
    empty_page,
    name_ids,
)

__all__ = [
    "PgTable",
    "PgVectorAdapter",
    "async_sql",
    "langchain_pgvector",
    "langchain_pgvectorstore",
    "llamaindex_pgvector",
    "sync_sql",
]

#: metric -> (pgvector operator, HNSW / IVFFlat operator class)
_OPS: dict[str, tuple[str, str]] = {
    "cosine": ("<=>", "vector_cosine_ops"),
    "l2": ("<->", "vector_l2_ops"),
    "dot": ("<#>", "vector_ip_ops"),
}
_ID_CHUNK = 1000
_QUERY_BATCH = 32
_EF_SEARCH_DEFAULT = 40
_EF_SEARCH_MAX = 1000
_INT_TYPES = {"smallint", "integer", "bigint"}

Rows = list[tuple[Any, ...]]
Step = tuple[str, dict[str, Any]]
Check = Callable[[list[Rows]], None]


# -- running SQL -----------------------------------------------------------------------------


class _Sql:
    """Runs statements in one transaction on the store's own engine."""

    url: Any  # the sqlalchemy URL (host, port, database: the store's identity)

    def run(self, steps: list[Step], check: Check | None = None) -> list[Rows]:
        """Run ``steps`` in one transaction; ``check`` sees every result and may raise to roll
        the transaction back. Returns the rows of each step."""
        raise NotImplementedError

    def fetch(self, sql: str, params: dict[str, Any] | None = None) -> Rows:
        return self.run([(sql, params or {})])[0]

    def hold(self) -> contextlib.AbstractContextManager[HeldConnection]:
        """One connection of the engine for a whole run (autocommit): it carries our lock."""
        raise NotImplementedError


class _SyncSql(_Sql):
    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.url = engine.url

    def run(self, steps: list[Step], check: Check | None = None) -> list[Rows]:
        from sqlalchemy import text

        with self._engine.begin() as conn:
            out: list[Rows] = []
            for sql, params in steps:
                res = conn.execute(text(sql), params)
                out.append([tuple(r) for r in res.fetchall()] if res.returns_rows else [])
            if check is not None:
                check(out)
        return out

    def hold(self) -> contextlib.AbstractContextManager[HeldConnection]:
        return hold_sync(self._engine)


class _AsyncSql(_Sql):
    def __init__(
        self,
        pool: Any,
        runner: Callable[[Coroutine[Any, Any, list[Rows]]], Any],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._pool = pool
        self._runner = runner
        self._loop = loop  # the engine's own loop (None: each call on a loop of its own)
        self.url = pool.url

    def hold(self) -> contextlib.AbstractContextManager[HeldConnection]:
        return hold_async(self._pool, self._loop)

    async def _run(self, steps: list[Step], check: Check | None) -> list[Rows]:
        from sqlalchemy import text

        async with self._pool.begin() as conn:
            out: list[Rows] = []
            for sql, params in steps:
                res = await conn.execute(text(sql), params)
                out.append([tuple(r) for r in res.fetchall()] if res.returns_rows else [])
            if check is not None:
                check(out)
        return out

    def run(self, steps: list[Step], check: Check | None = None) -> list[Rows]:
        result: list[Rows] = self._runner(self._run(steps, check))
        return result


def sync_sql(engine: Any) -> _Sql:
    """SQL through a synchronous SQLAlchemy ``Engine`` (LlamaIndex, LangChain ``PGVector``)."""
    return _SyncSql(engine)


def async_sql(pool: Any, loop: asyncio.AbstractEventLoop | None) -> _Sql:
    """SQL through an ``AsyncEngine`` (LangChain ``PGVectorStore``'s ``PGEngine``).

    With the engine's background loop (``PGEngine.from_connection_string``) the statements run
    there, on the store's own pool. Without one, on a private pool-less engine to the same URL,
    in a thread of its own (pooled async connections belong to the loop that made them).
    """
    if loop is not None:
        running = loop

        def on_loop(coro: Coroutine[Any, Any, list[Rows]]) -> list[Rows]:
            return asyncio.run_coroutine_threadsafe(coro, running).result()

        return _AsyncSql(pool, on_loop, running)
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    private = create_async_engine(pool.url, poolclass=NullPool)

    def in_thread(coro: Coroutine[Any, Any, list[Rows]]) -> list[Rows]:
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, coro).result()

    return _AsyncSql(private, in_thread)


# -- the table -------------------------------------------------------------------------------


@dataclass
class PgTable:
    """Where a framework keeps its records.

    Attributes:
        schema: Schema of the table.
        table: The table.
        id_col: The record id the framework's retriever reports (LlamaIndex ``node_id``).
        key_col: A unique, indexed column to page by (the primary key).
        vector_col: The pgvector column.
        text_col: The text the framework shows (None: no text).
        json_col: A JSON column holding the metadata (None: none).
        meta_cols: Columns that are metadata too (LangChain ``PGVectorStore``), merged over
            the JSON column as LangChain does.
        scope: ``(column, value)`` restricting the table to one store (LangChain ``PGVector``'s
            ``collection_id``), or None.
        unique_ids: Whether ``id_col`` is unique (LlamaIndex's ``node_id`` is not enforced).
    """

    schema: str
    table: str
    id_col: str
    key_col: str
    vector_col: str
    text_col: str | None = None
    json_col: str | None = None
    meta_cols: list[str] = field(default_factory=list)
    scope: tuple[str, str] | None = None
    unique_ids: bool = True


def _q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _vector_text(row: np.ndarray) -> str:
    # float32 -> Python float is exact; repr is the shortest decimal that round-trips it, and
    # pgvector's strtof parses that back to the same float32.
    return "[" + ",".join(map(repr, row.tolist())) + "]"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


class PgVectorAdapter(VectorStoreAdapter):
    """A pgvector column of a PostgreSQL table, read and written in place.

    Args:
        sql: Runs statements on the store's own engine (``sync_sql`` / ``async_sql``).
        table: Where the records are (:class:`PgTable`).
        name: Which store this is (``"llamaindex-pgvector"``, ``"langchain-pgvector"``).
        metric: How the framework ranks (``"cosine"``, ``"l2"``, ``"dot"``).
    """

    normalizes_on_write = False  # a vector column keeps float32 exactly as written
    l2_squared = False  # <-> is the Euclidean distance

    def __init__(self, sql: _Sql, table: PgTable, *, name: str, metric: Metric) -> None:
        self._sql = sql
        self._t = table
        self.name = name
        self.metric = metric
        self._rel = f"{_q(table.schema)}.{_q(table.table)}"
        self._op, opclass = _OPS[metric]
        types = self._column_types()
        missing = [
            c
            for c in [table.id_col, table.key_col, table.vector_col, table.text_col, table.json_col]
            + table.meta_cols
            + ([table.scope[0]] if table.scope else [])
            if c is not None and c not in types
        ]
        if missing:
            msg = f"{name}: table {table.schema}.{table.table} has no column(s) {missing}"
            raise StoreError(msg)
        vtype = types[table.vector_col]
        m = re.fullmatch(r"vector(?:\((\d+)\))?", vtype)
        if m is None:
            msg = (
                f"{name}: column {table.vector_col!r} of {table.schema}.{table.table} is "
                f"{vtype}; only float32 vector columns can be written back without loss "
                "(halfvec keeps 16-bit floats)"
            )
            raise StoreError(msg)
        self._dim: int | None = int(m.group(1)) if m.group(1) else None
        self._id_type = types[table.id_col]
        self._scope_type = types[table.scope[0]] if table.scope else None
        version = self._sql.fetch("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        self._pgvector = _version_tuple(str(version[0][0])) if version else (0,)
        indexes = self._sql.fetch(
            "SELECT am.amname, opc.opcname FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "JOIN pg_opclass opc ON opc.oid = i.indclass[0] "
            "WHERE i.indrelid = CAST(:rel AS regclass) AND a.attname = :col",
            {"rel": self._rel, "col": table.vector_col},
        )
        ann = {am for am, opc in indexes if am in ("hnsw", "ivfflat") and opc == opclass}
        self._hnsw = "hnsw" in ann
        self._ivfflat = "ivfflat" in ann
        self.exact_search = not ann

    def _column_types(self) -> dict[str, str]:
        try:
            rows = self._sql.fetch(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = CAST(:rel AS regclass) AND a.attnum > 0 "
                "AND NOT a.attisdropped",
                {"rel": self._rel},
            )
        except Exception as exc:
            msg = f"{self.name}: cannot read table {self._t.schema}.{self._t.table} ({exc})"
            raise StoreError(msg) from exc
        return {str(n): str(t) for n, t in rows}

    def _server(self) -> str:
        """Identity: ``host:port/database`` (host or socket directory); never the password."""
        url = self._sql.url
        query = dict(getattr(url, "query", {}) or {})
        host = url.host or query.get("host") or "localhost"
        if isinstance(host, tuple | list):
            host = host[0]
        host = str(host)
        if host.startswith("/"):
            host = os.path.realpath(host)
        port = url.port or query.get("port") or 5432
        if isinstance(port, tuple | list):
            port = port[0]
        return f"{host}:{port}/{url.database or ''}"

    def _in_database(self) -> str:
        """The store within its database: the table (and a LangChain PGVector collection)."""
        key = f"{self._t.schema}.{self._t.table}"
        return key if self._t.scope is None else f"{key}/{self._t.scope[1]}"

    def identity(self) -> StoreIdentity:
        return StoreIdentity(f"pgvector:{self._server()}/{self._in_database()}", True)

    def state_backend(self, scope: str) -> PostgresBackend:
        """Our state in the table ``nudge_rag_state`` beside the store's, in its schema, through
        the store's own engine; the lock is an advisory lock (:mod:`nudge_rag.state._postgres`).
        The store's own identity is scoped within the database, so that replicas reaching it
        under other host names (a pooler, a service name) share one state and one lock."""
        if scope == self.identity().key:
            scope = f"pgvector:{self._in_database()}"
        return PostgresBackend(self._sql, self._t.schema, scope, self._server())

    # -- SQL pieces ---------------------------------------------------------------------------

    def _scope_sql(self, alias: str = "") -> str:
        if self._t.scope is None:
            return ""
        return (
            f" AND {alias}{_q(self._t.scope[0])} = CAST(CAST(:scope AS text) AS {self._scope_type})"
        )

    def _params(self, **params: Any) -> dict[str, Any]:
        if self._t.scope is not None:
            params["scope"] = self._t.scope[1]
        return params

    def _id_values(self, ids: Sequence[str]) -> dict[str, str]:
        """Our ids -> the text of a value the id column can hold (ids it cannot are left out)."""
        out: dict[str, str] = {}
        base = self._id_type.split("(")[0]
        for id_ in ids:
            if base == "uuid":
                try:
                    out[id_] = str(uuid.UUID(id_))
                except ValueError:
                    continue
            elif base in _INT_TYPES:
                if re.fullmatch(r"-?\d{1,19}", id_):
                    out[id_] = str(int(id_))
            else:
                out[id_] = id_
        return out

    def _ids_array(self, param: str) -> str:
        return f"CAST(CAST(:{param} AS text[]) AS {self._id_type}[])"

    def _columns(self, with_documents: bool) -> str:
        # Output names of our own: an output column named like a table column would make
        # ORDER BY on that column ambiguous.
        t = self._t
        cols = [
            f"{_q(t.key_col)} AS nudge_key",
            f"CAST({_q(t.id_col)} AS text) AS nudge_id",
            f"CAST({_q(t.vector_col)} AS real[]) AS nudge_vec",
        ]
        if with_documents:
            text = f"CAST({_q(t.text_col)} AS text)" if t.text_col else "NULL"
            meta = f"CAST({_q(t.json_col)} AS text)" if t.json_col else "NULL"
            cols += [f"{text} AS nudge_text", f"{meta} AS nudge_meta"]
            cols.extend(f"{_q(c)} AS nudge_m{j}" for j, c in enumerate(t.meta_cols))
        return ", ".join(cols)

    def _to_page(self, rows: Rows, with_documents: bool) -> StorePage:
        if not rows:
            return empty_page(self._dim or 0)
        ids = [str(r[1]) for r in rows]
        width = self._dim if self._dim is not None else len(rows[0][2])
        emb = as_page_array([r[2] for r in rows], width, stored_as_float32=True)
        if not with_documents:
            return StorePage(ids, emb, [None] * len(ids), [{} for _ in ids])
        texts: list[str | None] = [r[3] for r in rows]
        metas: list[dict[str, Any]] = []
        for r in rows:
            meta = json.loads(r[4]) if r[4] else {}
            meta = dict(meta) if isinstance(meta, dict) else {"metadata": meta}
            for name, value in zip(self._t.meta_cols, r[5:], strict=True):
                meta[name] = value
            metas.append(meta)
        return StorePage(ids, emb, texts, metas)

    # -- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        rows = self._sql.fetch(
            f"SELECT count(*) FROM {self._rel} WHERE TRUE{self._scope_sql()}", self._params()
        )
        return int(rows[0][0])

    def dim(self) -> int:
        if self._dim is None:
            rows = self._sql.fetch(
                f"SELECT vector_dims({_q(self._t.vector_col)}) FROM {self._rel} "
                f"WHERE TRUE{self._scope_sql()} LIMIT 1",
                self._params(),
            )
            if not rows:
                msg = f"the {self.name} store is empty, so it has no vector width yet"
                raise StoreError(msg)
            return int(rows[0][0])
        return self._dim

    def _check_unique(self) -> None:
        if self._t.unique_ids:
            return
        rows = self._sql.fetch(
            f"SELECT CAST({_q(self._t.id_col)} AS text) FROM {self._rel} "
            f"WHERE TRUE{self._scope_sql()} GROUP BY {_q(self._t.id_col)} "
            "HAVING count(*) > 1 LIMIT 11",
            self._params(),
        )
        if rows:
            dupes = [str(r[0]) for r in rows]
            msg = (
                f"{self.name}: table {self._t.schema}.{self._t.table} holds several rows for "
                f"the same {self._t.id_col} ({name_ids(dupes)}): the same node was added twice. "
                "Delete the extra rows, then fine-tune."
            )
            raise StoreError(msg)

    def iter_pages(
        self, page_size: int = 1000, *, with_documents: bool = True
    ) -> Iterator[StorePage]:
        self._check_page_size(page_size)
        self._check_unique()
        cols = self._columns(with_documents)
        key = _q(self._t.key_col)
        last: Any = None
        while True:
            after = "" if last is None else f" AND {key} > :last"
            params = self._params(n=page_size)
            if last is not None:
                params["last"] = last
            rows = self._sql.fetch(
                f"SELECT {cols} FROM {self._rel} WHERE TRUE{self._scope_sql()}{after} "
                f"ORDER BY {key} LIMIT :n",
                params,
            )
            if rows:
                yield self._to_page(rows, with_documents)
            if len(rows) < page_size:
                return
            last = rows[-1][0]

    def _fetch_by_id(self, ids: list[str], with_data: bool) -> dict[str, tuple[Any, ...]]:
        """The first row (by key) of each id found, keyed by our id."""
        values = self._id_values(ids)
        back = {v: i for i, v in values.items()}
        found: dict[str, tuple[Any, ...]] = {}
        wanted = list(values.values())
        cols = (
            self._columns(True)
            if with_data
            else f"NULL AS nudge_key, CAST({_q(self._t.id_col)} AS text) AS nudge_id"
        )
        order = f" ORDER BY {_q(self._t.key_col)}" if with_data else ""
        for start in range(0, len(wanted), _ID_CHUNK):
            rows = self._sql.fetch(
                f"SELECT {cols} FROM {self._rel} WHERE {_q(self._t.id_col)} = ANY("
                f"{self._ids_array('ids')}){self._scope_sql()}{order}",
                self._params(ids=wanted[start : start + _ID_CHUNK]),
            )
            for r in rows:
                ours = back.get(str(r[1]))
                if ours is not None and ours not in found:
                    found[ours] = r
        return found

    def get(self, ids: Sequence[str]) -> StorePage:
        ids = list(ids)
        if not ids:
            return empty_page(self._dim or 0)
        wanted = list(dict.fromkeys(ids))
        found = self._fetch_by_id(wanted, with_data=True)
        missing = [i for i in wanted if i not in found]
        if missing:
            self._raise_missing(missing)
        page = self._to_page([found[i] for i in ids], True)
        return page._replace(ids=ids)  # as asked (a UUID id may be spelled another way)

    # -- writing ----------------------------------------------------------------------------

    def _missing(self, ids: list[str]) -> list[str]:
        found = self._fetch_by_id(ids, with_data=False)
        return [i for i in ids if i not in found]

    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        values = self._id_values(ids)
        rows = np.asarray(vectors, dtype=np.float32)
        t = self._t
        sql = (
            f"UPDATE {self._rel} AS t SET {_q(t.vector_col)} = CAST(v.vec AS vector) "
            "FROM unnest(CAST(:ids AS text[]), CAST(:vecs AS text[])) AS v(id, vec) "
            f"WHERE t.{_q(t.id_col)} = CAST(v.id AS {self._id_type}){self._scope_sql('t.')} "
            f"RETURNING CAST(t.{_q(t.id_col)} AS text)"
        )
        params = self._params(ids=[values[i] for i in ids], vecs=[_vector_text(r) for r in rows])
        wanted = {values[i] for i in ids}

        def check(results: list[Rows]) -> None:
            done = {str(r[0]) for r in results[0]}
            if done != wanted:
                gone = [i for i in ids if values[i] not in done]
                msg = (
                    f"{self.name}: {len(gone)} record(s) disappeared while writing "
                    f"({name_ids(gone)}); this batch was rolled back"
                )
                raise StoreError(msg)

        self._sql.run([(sql, params)], check)

    # -- searching --------------------------------------------------------------------------

    def _settings(self, k: int, *, exact: bool = False) -> list[Step]:
        if exact:
            return [("SET LOCAL enable_indexscan = off", {})]
        if not self._hnsw:
            if self._ivfflat and self._pgvector >= (0, 8):
                return [("SET LOCAL ivfflat.iterative_scan = relaxed_order", {})]
            return []
        ef = min(max(k, _EF_SEARCH_DEFAULT), _EF_SEARCH_MAX)
        steps: list[Step] = [(f"SET LOCAL hnsw.ef_search = {ef}", {})]
        if self._pgvector >= (0, 8):
            steps.append(("SET LOCAL hnsw.iterative_scan = strict_order", {}))
        return steps

    def _score(self, d: float) -> float:
        """The ``search`` score of a pgvector distance (higher is better)."""
        if self.metric == "cosine":
            return 1.0 - float(d)
        return -float(d)  # <#> is minus the inner product; <-> the L2 distance

    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        t = self._t
        dist = f"{_q(t.vector_col)} {self._op} CAST(CAST(:q AS text) AS vector)"
        sql = (
            f"SELECT CAST({_q(t.id_col)} AS text) AS nudge_id, {dist} AS nudge_d FROM {self._rel} "
            f"WHERE TRUE{self._scope_sql()} ORDER BY {dist} LIMIT :k"
        )
        params = self._params(q=_vector_text(np.asarray(query, dtype=np.float32)), k=k)
        rows = self._sql.run([*self._settings(k), (sql, params)])[-1]
        return [(str(i), self._score(d)) for i, d in rows]

    def _top_hits(
        self, queries: np.ndarray, k: int, exclude: list[str]
    ) -> list[list[tuple[str, float]]]:
        # One statement per batch of queries (a LATERAL k-NN per query), the excluded ids left
        # out in the WHERE clause: n_queries × k rows come back. The query texts are cast to
        # vectors once, in the unnest: a cast inside the LATERAL distance would parse the query
        # again for every row an exact scan visits (100k rows: 22 s per query instead of 0.5 s).
        t = self._t
        ex = list(self._id_values(exclude).values())
        not_in = f" AND t.{_q(t.id_col)} <> ALL({self._ids_array('ex')})" if ex else ""
        dist = f"t.{_q(t.vector_col)} {self._op} q.v"
        sql = (
            "SELECT q.i, s.id, s.d FROM unnest(CAST(CAST(:qs AS text[]) AS vector[])) "
            "WITH ORDINALITY AS q(v, i) "
            f"CROSS JOIN LATERAL (SELECT CAST(t.{_q(t.id_col)} AS text) AS id, {dist} AS d "
            f"FROM {self._rel} AS t WHERE TRUE{self._scope_sql('t.')}{not_in} "
            f"ORDER BY {dist} LIMIT :k) AS s ORDER BY q.i, s.d"
        )
        rows32 = np.asarray(queries, dtype=np.float32)
        texts = [_vector_text(r) for r in rows32]

        def run(batch: list[int], exact: bool) -> dict[int, list[tuple[str, float]]]:
            params = self._params(qs=[texts[i] for i in batch], k=k)
            if ex:
                params["ex"] = ex
            got = self._sql.run([*self._settings(k, exact=exact), (sql, params)])[-1]
            found: dict[int, list[tuple[str, float]]] = {i: [] for i in batch}
            for pos, id_, d in got:
                found[batch[int(pos) - 1]].append((str(id_), self._score(d)))
            return found

        hits: dict[int, list[tuple[str, float]]] = {}
        for start in range(0, len(texts), _QUERY_BATCH):
            hits.update(run(list(range(start, min(start + _QUERY_BATCH, len(texts)))), False))
        short = [i for i, h in hits.items() if len(h) < k]
        if short and not self.exact_search:
            # An index scan can come back short (ef_search, filtered graph walks): how many
            # records are there to find? Those queries run again without the index.
            avail = self.count() - len(self._fetch_by_id(exclude, with_data=False))
            short = [i for i in short if len(hits[i]) < min(k, avail)]
            for start in range(0, len(short), _QUERY_BATCH):
                hits.update(run(short[start : start + _QUERY_BATCH], True))
        return [self._as_unit_dot(hits[i]) for i in range(len(texts))]


# -- the frameworks' stores ------------------------------------------------------------------

_LANGCHAIN_STRATEGIES: dict[str, Metric] = {"cosine": "cosine", "l2": "l2", "inner": "dot"}
_OPERATORS: dict[str, Metric] = {op: metric for metric, (op, _) in _OPS.items()}  # type: ignore[misc]


def llamaindex_pgvector(vs: Any) -> PgVectorAdapter:
    """LlamaIndex ``PGVectorStore``: table ``data_<table_name>``, node ids in ``node_id``,
    cosine distance always (its query orders by ``<=>``)."""
    if not getattr(vs, "_is_initialized", True):
        vs._initialize()  # what its first add or query does: connect (and set up, if asked)
    table = PgTable(
        schema=vs.schema_name,
        table=vs._table_class.__tablename__,
        id_col="node_id",
        key_col="id",
        vector_col="embedding",
        text_col="text",
        json_col="metadata_",
        unique_ids=False,
    )
    return PgVectorAdapter(sync_sql(vs._engine), table, name="llamaindex-pgvector", metric="cosine")


def langchain_pgvectorstore(vs: Any) -> PgVectorAdapter:
    """LangChain ``PGVectorStore`` (langchain-postgres' current API): one table per store, the
    id column its primary key, ranked by its ``distance_strategy``."""
    inner = getattr(vs, "_PGVectorStore__vs", vs)  # the sync wrapper holds the async store
    loop = getattr(getattr(vs, "_engine", None), "_loop", None)  # the wrapper's PGEngine's
    operator = str(inner.distance_strategy.operator)
    if operator not in _OPERATORS:  # pragma: no cover - the three strategies are covered
        msg = f"langchain-pgvectorstore: distance operator {operator!r} is not supported"
        raise StoreError(msg)
    table = PgTable(
        schema=inner.schema_name,
        table=inner.table_name,
        id_col=inner.id_column,
        key_col=inner.id_column,
        vector_col=inner.embedding_column,
        text_col=inner.content_column,
        json_col=inner.metadata_json_column,
        meta_cols=list(inner.metadata_columns),
    )
    sql = async_sql(inner.engine, loop)  # inner.engine: the PGEngine's AsyncEngine
    return PgVectorAdapter(sql, table, name="langchain-pgvectorstore", metric=_OPERATORS[operator])


def langchain_pgvector(vs: Any) -> PgVectorAdapter:
    """LangChain ``PGVector`` (langchain-postgres' older API): every collection in
    ``langchain_pg_embedding``, this one's rows by ``collection_id``."""
    if getattr(vs, "async_mode", False):
        sql = async_sql(vs._async_engine, None)
    else:
        sql = sync_sql(vs._engine)
    strategy = str(getattr(vs._distance_strategy, "value", vs._distance_strategy))
    if strategy not in _LANGCHAIN_STRATEGIES:
        msg = f"langchain-pgvector: distance strategy {strategy!r} is not supported"
        raise StoreError(msg)
    embeddings = vs.EmbeddingStore.__table__
    collections = vs.CollectionStore.__table__
    schema = embeddings.schema or "public"
    rows = sql.fetch(
        f"SELECT CAST(uuid AS text) FROM {_q(collections.schema or 'public')}."
        f"{_q(collections.name)} WHERE name = :name",
        {"name": vs.collection_name},
    )
    if not rows:
        msg = f"langchain-pgvector: collection {vs.collection_name!r} does not exist"
        raise StoreError(msg)
    table = PgTable(
        schema=schema,
        table=embeddings.name,
        id_col="id",
        key_col="id",
        vector_col="embedding",
        text_col="document",
        json_col="cmetadata",
        scope=("collection_id", str(rows[0][0])),
    )
    return PgVectorAdapter(
        sql, table, name="langchain-pgvector", metric=_LANGCHAIN_STRATEGIES[strategy]
    )
