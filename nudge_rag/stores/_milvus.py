"""Adapter for a Milvus collection (as LlamaIndex's ``MilvusVectorStore`` and LangChain's
``langchain_milvus.Milvus`` use it), on a server or in Milvus Lite.

Facts it relies on (pymilvus 2.6, Milvus Lite 2.5):

- Milvus has no "set this field" call: a vector is changed by an ``upsert`` of the whole
  entity. Writes read each entity with every field (dynamic fields included), replace the vector
  and upsert it back under the same primary key: the text and metadata go back as they were
  read. Fields a collection function computes (BM25 sparse vectors) are left out: Milvus
  computes them again from the same text. Collections with ``auto_id`` are refused: an upsert
  there gives the entity a new primary key.
- Pages go by primary key: ``pk > last``, ``limit = page`` with the query flags that make
  Milvus return hits sorted by primary key (what pymilvus's ``query_iterator`` relies on; the
  iterator itself writes the key into its next filter unescaped, so a key holding a quote loops
  forever). A stable order that writes do not change (an upsert keeps the key), every record
  once, memory one page. 5k × 384 on Milvus Lite: ~2 s, about what fetching the same pages by
  id takes. Keys in filters are written as JSON strings (escaped) or integers.
- The metric is the vector index's ``metric_type``: COSINE, IP (dot) or L2, whose search
  distance is the squared Euclidean distance. Milvus keeps vectors as written in every metric
  (measured: COSINE does not normalise them).
- Searches return at most 16,384 hits (Milvus's top-k cap); a larger ``k`` in ``top_scores`` is
  served by reading the collection page by page. Milvus Lite searches every index type flat
  (exact); a server's FLAT index is exact, the others (HNSW, IVF, AUTOINDEX) approximate.
- Reads and searches use Strong consistency, so a write is seen by the next call.
- Milvus Lite 2.5 answers a query or takes an insert/upsert in a time that grows with the
  square of its size in bytes (measured, 384-d float vectors: 100 rows 6 ms, 500 rows 0.1 s,
  1,000 rows 0.6 s, 2,000 rows 6.5 s; an insert of 5,000 rows 80-100 s): on Lite, reads that
  carry vectors are cut to about 256 kB each (~160 rows at d = 384), several per page. An
  upsert also pays a cost per call that grows with the collection (a delete, then an insert):
  1,000 existing rows upserted 160 per call took 1.8 s at 100k records and 6.8 s at 1M, 500
  per call 0.86 s and 2.3 s, 1,000 per call 0.79 s and 1.4 s. Upserts are cut to about
  1.5 MB each (1,000 rows at d = 384): a default write batch (500) is one call.
- Milvus Lite 2.5 cannot upsert a primary key that holds a single quote (the delete half of
  its upsert fails on it, "internal error"): such writes are refused before anything is sent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from nudge_rag.errors import StoreError
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
    "MilvusAdapter",
    "langchain_entity_docs",
    "langchain_milvus",
    "llamaindex_entity_docs",
    "llamaindex_milvus",
]

_METRICS: dict[str, Metric] = {"COSINE": "cosine", "IP": "dot", "L2": "l2"}
_EXACT_INDEXES = {"FLAT", "GPU_BRUTE_FORCE"}
_ID_CHUNK = 1000
_QUERY_BATCH = 64
_MAX_TOPK = 16384
_LITE_CALL_BYTES = 256 * 1024  # vectors per Lite read (see the module docstring)
_LITE_UPSERT_BYTES = 1536 * 1024  # vectors per Lite upsert (see the module docstring)
_STRONG = "Strong"

Docs = Callable[[dict[str, Any]], tuple[str | None, dict[str, Any]]]


def _type_name(field: dict[str, Any]) -> str:
    t = field.get("type")
    return str(getattr(t, "name", t))


def _literal(value: int | str) -> str:
    """A Milvus expression literal (a JSON string is a valid Milvus string literal)."""
    return str(value) if isinstance(value, int) else json.dumps(value, ensure_ascii=False)


def _location(client: Any) -> tuple[str, bool]:
    """(where the collection lives, whether it is Milvus Lite): the realpath of a Lite file, or
    the server's address."""
    from pymilvus import connections

    address = str(connections.get_connection_addr(client._using).get("address") or "")
    if address.startswith("unix:"):
        try:
            from milvus_lite.server_manager import server_manager_instance

            for path, server in dict(server_manager_instance._servers).items():
                if server.uds_path == address:
                    return os.path.realpath(path), True
        except ImportError:  # pragma: no cover - a unix socket without milvus-lite
            pass
    return address, False


class MilvusAdapter(VectorStoreAdapter):
    """One float vector field of a Milvus collection, read and written in place.

    Args:
        client: A ``pymilvus.MilvusClient`` (server or Milvus Lite).
        collection: The collection name.
        name: Which store this is (``"llamaindex-milvus"``, ``"langchain-milvus"``).
        vector_field: The framework's dense vector field (needed only when the collection has
            several float vector fields).
        docs: Turns an entity (every field but the primary key and the vector) into
            (text, metadata); default: no text, the fields as metadata.
    """

    normalizes_on_write = False

    def __init__(
        self,
        client: Any,
        collection: str,
        *,
        name: str = "milvus",
        vector_field: str | None = None,
        docs: Docs | None = None,
    ) -> None:
        self._client = client
        self._collection = collection
        self.name = name
        self._docs = docs or (lambda entity: (None, dict(entity)))
        desc = client.describe_collection(collection)
        fields = list(desc.get("fields") or [])
        pk = next((f for f in fields if f.get("is_primary")), None)
        if pk is None:  # pragma: no cover - Milvus requires one
            msg = f"{name}: collection {collection!r} has no primary key field"
            raise StoreError(msg)
        if desc.get("auto_id") or pk.get("auto_id"):
            msg = (
                f"{name}: collection {collection!r} assigns its primary keys (auto_id): Milvus "
                "changes a vector by upserting the entity, which there gives it a new primary "
                "key. Only collections whose ids the application sets can be fine-tuned in place."
            )
            raise StoreError(msg)
        self._pk = str(pk["name"])
        self._int_pk = _type_name(pk) == "INT64"
        floats = [f for f in fields if _type_name(f) == "FLOAT_VECTOR"]
        if vector_field is not None and any(f["name"] == vector_field for f in fields):
            vec = next(f for f in fields if f["name"] == vector_field)
        elif len(floats) == 1:
            vec = floats[0]
        else:
            msg = (
                f"{name}: collection {collection!r} has float vector fields "
                f"{[f['name'] for f in floats]} and none is {vector_field!r}; say which to use"
            )
            raise StoreError(msg)
        if _type_name(vec) != "FLOAT_VECTOR":
            msg = (
                f"{name}: field {vec['name']!r} of collection {collection!r} is "
                f"{_type_name(vec)}; only FLOAT_VECTOR fields can be written back without loss"
            )
            raise StoreError(msg)
        self._vec = str(vec["name"])
        self._dim = int((vec.get("params") or {}).get("dim", 0))
        self._vector_fields = {str(f["name"]) for f in fields if _type_name(f).endswith("VECTOR")}
        self._computed = {
            str(out)
            for fn in desc.get("functions") or []
            for out in (fn.get("output_field_names") or [])
        }
        index = self._index()
        metric = str(index.get("metric_type", "")).upper()
        if metric not in _METRICS:
            msg = (
                f"{name}: the index of field {self._vec!r} in collection {collection!r} uses "
                f"metric {metric!r}; supported metrics: {sorted(_METRICS)}"
            )
            raise StoreError(msg)
        self.metric = _METRICS[metric]
        self._index_type = str(index.get("index_type", "")).upper()
        self._where, lite = _location(client)
        self._lite = lite
        self.exact_search = lite or self._index_type in _EXACT_INDEXES

    def _index(self) -> dict[str, Any]:
        names = self._client.list_indexes(self._collection, field_name=self._vec)
        if not names:
            msg = (
                f"{self.name}: field {self._vec!r} of collection {self._collection!r} has no "
                "index, so Milvus cannot search it (and the metric is unknown)"
            )
            raise StoreError(msg)
        return dict(self._client.describe_index(self._collection, names[0]))

    # -- identity ---------------------------------------------------------------------------

    def identity(self) -> StoreIdentity:
        # The Lite file (its realpath) or the server's address, the database when not the
        # default one, and the collection name: the same through LlamaIndex and LangChain.
        db = "" if self._lite else str(getattr(self._client, "_db_name", "") or "")
        scope = f"/{db}" if db and db != "default" else ""
        return StoreIdentity(f"milvus:{self._where}{scope}/{self._collection}", True)

    def state_backend(self, scope: str) -> Any:
        """A server: the ``nudge_rag_state`` collection beside this one, in the same database
        (:class:`~nudge_rag.state._milvus.MilvusCompanion`); Milvus Lite: the folder
        ``<file>.nudge_state/<collection>`` beside the database file."""
        if self._lite:
            from nudge_rag.state._folder import STATE_FOLDER, FolderBackend

            place = FolderBackend(f"{self._where}.{STATE_FOLDER}/{self._collection}")
            place.with_store = True  # it travels with the store (a copy carries its own)
            return place
        from nudge_rag.state._milvus import MilvusCompanion

        return MilvusCompanion(self._client, scope, where=self._where)

    # -- ids --------------------------------------------------------------------------------

    def _key(self, id_: str) -> int | str | None:
        """The primary key value for one of our string ids, or None if it cannot be one."""
        if not self._int_pk:
            return id_
        try:
            value = int(id_)
        except ValueError:
            return None
        return value if str(value) == id_ else None

    def _in(self, keys: Sequence[int | str], negate: bool = False) -> str:
        op = "not in" if negate else "in"
        return f"{self._pk} {op} [{', '.join(_literal(k) for k in keys)}]"

    def _after(self, last: int | str | None, fields: list[str], limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` entities whose primary key comes after ``last``, in key order.

        ``iterator`` / ``reduce_stop_for_best`` make Milvus return a query's hits sorted by
        primary key (what pymilvus's own ``query_iterator`` relies on); the iterator itself is
        not used: it writes the last key into its next filter unescaped, so a key holding a
        quote never ends.
        """
        flt = "" if last is None else f"{self._pk} > {_literal(last)}"
        rows: list[dict[str, Any]] = self._client.query(
            self._collection,
            filter=flt,
            output_fields=fields,
            limit=limit,
            consistency_level=_STRONG,
            iterator="True",
            reduce_stop_for_best="True",
        )
        return rows

    def _call_rows(self, upsert: bool = False) -> int:
        """Entities with their vector per call: Milvus's top-k cap on a server; on Lite, about
        ``_LITE_CALL_BYTES`` of vectors per read and ``_LITE_UPSERT_BYTES`` per upsert (its
        calls slow down with the square of their size, and upserts also per call)."""
        if not self._lite:
            return _MAX_TOPK
        size = _LITE_UPSERT_BYTES if upsert else _LITE_CALL_BYTES
        return max(16, size // (4 * max(self._dim, 1)))

    def _rows(self, ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """The entities with these ids (those found), keyed by our id."""
        by_key = {k: i for i in ids if (k := self._key(i)) is not None}
        found: dict[str, dict[str, Any]] = {}
        keys = list(by_key)
        step = _ID_CHUNK if fields == [self._pk] else min(_ID_CHUNK, self._call_rows())
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            rows = self._client.query(
                self._collection,
                filter=self._in(chunk),
                output_fields=fields,
                consistency_level=_STRONG,
            )
            for row in rows:
                ours = by_key.get(row[self._pk])
                if ours is not None:
                    found[ours] = row
        return found

    # -- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        rows = self._client.query(
            self._collection,
            filter="",
            output_fields=["count(*)"],
            consistency_level=_STRONG,
        )
        return int(rows[0]["count(*)"])

    def dim(self) -> int:
        return self._dim

    def _to_page(
        self, ids: list[str], rows: list[dict[str, Any]], with_documents: bool
    ) -> StorePage:
        if not ids:
            return empty_page(self._dim)
        emb = as_page_array([r[self._vec] for r in rows], self._dim, stored_as_float32=True)
        if not with_documents:
            return StorePage(ids, emb, [None] * len(ids), [{} for _ in ids])
        texts: list[str | None] = []
        metas: list[dict[str, Any]] = []
        for r in rows:
            entity = {k: v for k, v in r.items() if k != self._pk and k not in self._vector_fields}
            text, meta = self._docs(entity)
            texts.append(text)
            metas.append(meta)
        return StorePage(ids, emb, texts, metas)

    def _fields(self, with_documents: bool) -> list[str]:
        return ["*"] if with_documents else [self._pk, self._vec]

    def iter_pages(
        self, page_size: int = 1000, *, with_documents: bool = True
    ) -> Iterator[StorePage]:
        self._check_page_size(page_size)
        fields = self._fields(with_documents)
        # Milvus 2.3 servers answer a first query in key order with nothing until another query
        # has run on the collection (measured on 2.3.5 standalone: an empty page, three times
        # in a row, then the rows once a count ran). The count runs first, and an empty first
        # page of a collection that holds records is an error, never a store read as empty.
        expected = self.count()
        last: int | str | None = None
        while True:
            rows: list[dict[str, Any]] = []
            while len(rows) < page_size:  # a page past a call's size takes several calls
                got = self._after(last, fields, min(page_size - len(rows), self._call_rows()))
                rows.extend(got)
                if not got:
                    break
                last = got[-1][self._pk]
            if not rows and last is None and expected > 0:
                msg = (
                    f"{self.name}: Milvus answered the first page of {self._collection!r} with "
                    f"no rows although it counts {expected}; nothing was read"
                )
                raise StoreError(msg)
            if rows:
                yield self._to_page([str(r[self._pk]) for r in rows], rows, with_documents)
            if len(rows) < page_size:
                return

    def get(self, ids: Sequence[str]) -> StorePage:
        ids = list(ids)
        if not ids:
            return empty_page(self._dim)
        wanted = list(dict.fromkeys(ids))
        found = self._rows(wanted, self._fields(True))
        missing = [i for i in wanted if i not in found]
        if missing:
            self._raise_missing(missing)
        return self._to_page(ids, [found[i] for i in ids], True)

    # -- writing ----------------------------------------------------------------------------

    def _missing(self, ids: list[str]) -> list[str]:
        found = self._rows(ids, [self._pk])
        return [i for i in ids if i not in found]

    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        if self._lite and not self._int_pk:
            quoted = [i for i in ids if "'" in i]
            if quoted:
                msg = (
                    f"{self.name}: Milvus Lite cannot upsert a primary key holding a single "
                    f"quote (its delete step breaks on it): {name_ids(quoted)}; nothing of this "
                    "batch was written"
                )
                raise StoreError(msg)
        found = self._rows(ids, ["*"])
        gone = [i for i in ids if i not in found]
        if gone:
            msg = (
                f"{self.name}: {len(gone)} record(s) disappeared while writing "
                f"({name_ids(gone)}); nothing of this batch was written"
            )
            raise StoreError(msg)
        rows = np.asarray(vectors, dtype=np.float32).tolist()
        entities = []
        for id_, row in zip(ids, rows, strict=True):
            entity = {k: v for k, v in found[id_].items() if k not in self._computed}
            entity[self._vec] = row
            entities.append(entity)
        done = 0
        step = self._call_rows(upsert=True)
        for start in range(0, len(entities), step):
            part = entities[start : start + step]
            res = self._client.upsert(self._collection, part)
            done += int((res or {}).get("upsert_count", len(part)))
        if done != len(entities):
            msg = f"{self.name}: Milvus upserted {done} of {len(entities)} entities"
            raise StoreError(msg)

    # -- searching --------------------------------------------------------------------------

    def _search_params(self, k: int) -> dict[str, Any]:
        metric = next(m for m, ours in _METRICS.items() if ours == self.metric)
        params: dict[str, Any] = {}
        if self._index_type == "HNSW":
            params["ef"] = max(k, 64)
        return {"metric_type": metric, "params": params}

    def _hits(self, res: Any) -> list[tuple[str, float]]:
        sign = -1.0 if self.metric == "l2" else 1.0
        return [(str(h["id"]), sign * float(h["distance"])) for h in res]

    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        k = min(k, _MAX_TOPK)
        res = self._client.search(
            self._collection,
            data=[np.asarray(query, dtype=np.float32).tolist()],
            limit=k,
            anns_field=self._vec,
            search_params=self._search_params(k),
            output_fields=[],
            consistency_level=_STRONG,
        )
        return self._hits(res[0])

    def _top_hits(
        self, queries: np.ndarray, k: int, exclude: list[str]
    ) -> list[list[tuple[str, float]]]:
        if k > _MAX_TOPK:
            return self._scan_top_hits(queries, k, exclude)
        keys = [key for i in exclude if (key := self._key(i)) is not None]
        flt = self._in(keys, negate=True) if keys else ""
        rows = np.asarray(queries, dtype=np.float32)
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(rows), _QUERY_BATCH):
            res = self._client.search(
                self._collection,
                data=rows[start : start + _QUERY_BATCH].tolist(),
                filter=flt,
                limit=k,
                anns_field=self._vec,
                search_params=self._search_params(k),
                output_fields=[],
                consistency_level=_STRONG,
            )
            out.extend(self._as_unit_dot(self._hits(r)) for r in res)
        short = [j for j, h in enumerate(out) if len(h) < k]
        if short and not self.exact_search:
            # An approximate search can come back short of what the collection holds: those
            # queries are answered by a full read instead.
            avail = self.count() - len(self._rows(exclude, [self._pk]))
            short = [j for j in short if len(out[j]) < min(k, avail)]
            if short:
                full = self._scan_top_hits(rows[short], k, exclude)
                for j, hits in zip(short, full, strict=True):
                    out[j] = hits
        return out


def llamaindex_entity_docs(text_key: str) -> Docs:
    """Text and metadata of a LlamaIndex node kept in a Milvus entity: the text field, and
    every other field (node bookkeeping and metadata) as metadata."""

    def docs(entity: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        text = entity.get(text_key)
        meta = {k: v for k, v in entity.items() if k != text_key}
        return (text if isinstance(text, str) else None), meta

    return docs


def langchain_entity_docs(text_field: str, metadata_field: str | None) -> Docs:
    """Text and metadata of a LangChain document kept in a Milvus entity."""

    def docs(entity: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        text = entity.get(text_field)
        if metadata_field:
            meta = dict(entity.get(metadata_field) or {})
        else:
            meta = {k: v for k, v in entity.items() if k != text_field}
        return (text if isinstance(text, str) else None), meta

    return docs


def llamaindex_milvus(vs: Any) -> MilvusAdapter:
    """LlamaIndex ``MilvusVectorStore``: node ids in the ``id`` primary key, its dense field."""
    return MilvusAdapter(
        vs.client,
        vs.collection_name,
        name="llamaindex-milvus",
        vector_field=vs.embedding_field,
        docs=llamaindex_entity_docs(vs.text_key),
    )


def langchain_milvus(vs: Any) -> MilvusAdapter:
    """LangChain ``Milvus`` (langchain_milvus): the primary key is the document id, the first
    vector field its embedding function fills."""
    fields = list(getattr(vs, "_vector_fields_from_embedding", None) or [])
    if not fields:
        vf = vs._vector_field
        fields = list(vf) if isinstance(vf, list) else [vf]
    return MilvusAdapter(
        vs.client,
        vs.collection_name,
        name="langchain-milvus",
        vector_field=fields[0] if fields else None,
        docs=langchain_entity_docs(vs._text_field, getattr(vs, "_metadata_field", None)),
    )
