"""Adapter for a local LanceDB table (as LlamaIndex's ``LanceDBVectorStore`` and
LangChain's ``langchain_community`` ``LanceDB`` use it).

Facts it relies on (lancedb 0.40, pylance 14):

- The vectors are a ``fixed_size_list<float>`` column, kept as written. Both frameworks keep an
  ``id`` column (the node id / the LangChain document id), the text, and a ``metadata`` struct.
- ``merge_insert(id).when_matched_update_all()`` with only the id and vector columns rewrites the
  vectors of those rows and keeps every other column; one commit (one table version) per batch.
  The rewritten rows move to the end of the table's scan order, so pages do not follow the scan
  order: the ids are read once from a pinned version of the table, sorted, and each page is
  taken by row position from that version. A stable order that writes do not change, every
  record once, memory one id per record. A table holding the same id twice is refused.
- How searches rank: without a vector index, LanceDB searches flat (exact) by L2 (the squared
  distance), whatever LangChain's ``distance=`` says (it only picks the relevance-score
  function); with a vector index, by the index's metric, approximately (IVF partitions, PQ codes;
  searches here re-rank their candidates by the stored vectors, so their scores are exact even
  where the set found is not). Cosine and dot distances are ``1 - cos`` and ``1 - dot``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
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

__all__ = ["LanceDBAdapter", "lancedb_docs", "langchain_lancedb", "llamaindex_lancedb"]

_METRICS: dict[str, Metric] = {"l2": "l2", "cosine": "cosine", "dot": "dot"}
_ID_CHUNK = 1000
_QUERY_BATCH = 64
_REFINE = 2

Docs = Callable[[dict[str, Any]], tuple[str | None, dict[str, Any]]]


def lancedb_docs(text_col: str | None, metadata_col: str | None = "metadata") -> Docs:
    """Text and metadata of a row as the frameworks keep them: the text column, and the
    ``metadata`` struct as a dict."""

    def docs(row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        text = row.get(text_col) if text_col else None
        meta = row.get(metadata_col) if metadata_col else None
        return (text if isinstance(text, str) else None), dict(meta or {})

    return docs


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class LanceDBAdapter(VectorStoreAdapter):
    """A vector column of a local LanceDB table, read and written in place.

    Args:
        table: A local ``lancedb`` table (``LanceTable``).
        uri: The database's location (the connection's ``uri``), for the identity.
        name: Which store this is (``"llamaindex-lancedb"``, ``"langchain-lancedb"``).
        id_col: The record id column.
        vector_col: The vector column.
        doc_cols: Columns holding the text and metadata (read with documents).
        docs: Turns those columns of a row into (text, metadata).
    """

    normalizes_on_write = False

    def __init__(
        self,
        table: Any,
        uri: str,
        *,
        name: str = "lancedb",
        id_col: str = "id",
        vector_col: str = "vector",
        doc_cols: Sequence[str] = (),
        docs: Docs | None = None,
    ) -> None:
        import pyarrow as pa

        self.name = name
        if table is None:
            msg = f"{name}: the store has no table yet (add documents first)"
            raise StoreError(msg)
        if not hasattr(table, "to_lance"):
            msg = (
                f"{name}: {type(table).__name__} is not a local LanceDB table; only local "
                "tables can be read and written in place"
            )
            raise StoreError(msg)
        self._table = table
        self._uri = uri
        schema = table.schema
        for col in (id_col, vector_col):
            if col not in schema.names:
                msg = f"{name}: table {table.name!r} has no column {col!r}"
                raise StoreError(msg)
        vtype = schema.field(vector_col).type
        if not pa.types.is_fixed_size_list(vtype) or vtype.value_type not in (
            pa.float32(),
            pa.float64(),
        ):
            msg = (
                f"{name}: column {vector_col!r} of table {table.name!r} is {vtype}; only "
                "fixed-size lists of float32 (or float64) can be written back without loss"
            )
            raise StoreError(msg)
        self._vtype = vtype
        self._float32 = vtype.value_type == pa.float32()
        self._dim = int(vtype.list_size)
        self._id_col = id_col
        self._id_type = schema.field(id_col).type
        self._int_ids = pa.types.is_integer(self._id_type)
        self._vec = vector_col
        self._doc_cols = [c for c in doc_cols if c in schema.names and c not in (id_col,)]
        self._docs = docs or (lambda row: (None, dict(row)))
        metric: str = "l2"
        self.exact_search = True
        for index in table.list_indices():
            if vector_col in list(getattr(index, "columns", [])):
                details = getattr(index, "index_details", None) or {}
                kind = str(getattr(index, "index_type", ""))
                if "metric_type" not in details and "Ivf" not in kind and "Hnsw" not in kind:
                    continue  # a scalar index on the column
                metric = str(details.get("metric_type", "l2")).lower()
                self.exact_search = False
        if metric not in _METRICS:
            msg = (
                f"{name}: the vector index of table {table.name!r} uses metric {metric!r}; "
                f"supported metrics: {sorted(_METRICS)}"
            )
            raise StoreError(msg)
        self.metric = _METRICS[metric]
        self._distance_type = metric

    # -- identity ---------------------------------------------------------------------------

    def identity(self) -> StoreIdentity:
        uri = str(self._uri)
        if uri.startswith("file://"):
            uri = uri[len("file://") :]
        if "://" not in uri:
            uri = os.path.realpath(uri)
        return StoreIdentity(f"lancedb:{uri}/{self._table.name}", True)

    def state_backend(self, scope: str) -> Any:
        """A local database folder: ``<uri>/nudge_state/<table>`` inside it (LanceDB lists
        only ``*.lance`` folders as tables); a remote URI: None (the per-user folder)."""
        uri = str(self._uri)
        if uri.startswith("file://"):
            uri = uri[len("file://") :]
        if "://" in uri:
            return None
        from nudge_rag.state._folder import STATE_FOLDER, FolderBackend

        place = FolderBackend(Path(os.path.realpath(uri)) / STATE_FOLDER / str(self._table.name))
        place.with_store = True  # it travels with the store (a copy carries its own)
        return place

    # -- reading ----------------------------------------------------------------------------

    def _key(self, id_: str) -> int | str | None:
        if not self._int_ids:
            return id_
        try:
            value = int(id_)
        except ValueError:
            return None
        return value if str(value) == id_ else None

    def count(self) -> int:
        return int(self._table.count_rows())

    def dim(self) -> int:
        return self._dim

    def _columns(self, with_documents: bool) -> list[str]:
        cols = [self._id_col, self._vec]
        if with_documents:
            cols += [c for c in self._doc_cols if c not in cols]
        return cols

    def _to_page(self, rows: Any, with_documents: bool) -> StorePage:
        ids = [str(i) for i in rows.column(self._id_col).to_pylist()]
        if not ids:
            return empty_page(self._dim)
        flat = rows.column(self._vec).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        emb = as_page_array(
            flat.reshape(len(ids), self._dim), self._dim, stored_as_float32=self._float32
        )
        if not with_documents:
            return StorePage(ids, emb, [None] * len(ids), [{} for _ in ids])
        texts: list[str | None] = []
        metas: list[dict[str, Any]] = []
        docs_cols = {c: rows.column(c).to_pylist() for c in self._doc_cols}
        for j in range(len(ids)):
            text, meta = self._docs({c: v[j] for c, v in docs_cols.items()})
            texts.append(text)
            metas.append(meta)
        return StorePage(ids, emb, texts, metas)

    def iter_pages(
        self, page_size: int = 1000, *, with_documents: bool = True
    ) -> Iterator[StorePage]:
        import pyarrow.compute as pc

        self._check_page_size(page_size)
        ds = self._table.to_lance()  # this version of the table, for the whole pass
        ids = ds.to_table(columns=[self._id_col]).column(self._id_col)
        order = pc.sort_indices(ids).to_numpy()
        ordered = pc.take(ids, order).to_pylist()
        dupes = sorted({a for a, b in itertools.pairwise(ordered) if a == b})
        if dupes:
            msg = (
                f"{self.name}: table {self._table.name!r} holds several rows with the same "
                f"{self._id_col} ({name_ids([str(d) for d in dupes])}); delete the extra rows, "
                "then fine-tune"
            )
            raise StoreError(msg)
        cols = self._columns(with_documents)
        for start in range(0, len(order), page_size):
            rows = ds.take(order[start : start + page_size], columns=cols)
            yield self._to_page(rows, with_documents)

    def _rows(self, ids: list[str], cols: list[str]) -> dict[str, Any]:
        """Rows with these ids (those found) as ``(table, row)`` pairs, keyed by our id."""
        by_key = {k: i for i in ids if (k := self._key(i)) is not None}
        keys = list(by_key)
        found: dict[str, Any] = {}
        ds = self._table.to_lance()
        for start in range(0, len(keys), _ID_CHUNK):
            chunk = keys[start : start + _ID_CHUNK]
            flt = f"{_ident(self._id_col)} IN ({', '.join(_literal(k) for k in chunk)})"
            got = ds.to_table(columns=cols, filter=flt)
            for j, key in enumerate(got.column(self._id_col).to_pylist()):
                ours = by_key.get(key)
                if ours is not None and ours not in found:
                    found[ours] = (got, j)
        return found

    def get(self, ids: Sequence[str]) -> StorePage:
        import pyarrow as pa

        ids = list(ids)
        if not ids:
            return empty_page(self._dim)
        wanted = list(dict.fromkeys(ids))
        found = self._rows(wanted, self._columns(True))
        missing = [i for i in wanted if i not in found]
        if missing:
            self._raise_missing(missing)
        rows = pa.concat_tables([found[i][0].slice(found[i][1], 1) for i in ids])
        page = self._to_page(rows, True)
        return page._replace(ids=ids)

    # -- writing ----------------------------------------------------------------------------

    def _missing(self, ids: list[str]) -> list[str]:
        found = self._rows(ids, [self._id_col])
        return [i for i in ids if i not in found]

    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        import pyarrow as pa

        dtype = np.float32 if self._float32 else np.float64
        rows = np.asarray(vectors, dtype=dtype)
        keys = [self._key(i) for i in ids]
        src = pa.table(
            {
                self._id_col: pa.array(keys, type=self._id_type),
                self._vec: pa.FixedSizeListArray.from_arrays(
                    pa.array(rows.ravel()), type=self._vtype
                ),
            }
        )
        res = self._table.merge_insert(self._id_col).when_matched_update_all().execute(src)
        done = getattr(res, "num_updated_rows", len(ids))
        if done != len(ids):
            msg = (
                f"{self.name}: LanceDB updated {done} of {len(ids)} rows (records deleted "
                "while writing?); the others of this batch were written"
            )
            raise StoreError(msg)

    # -- searching --------------------------------------------------------------------------

    def _score(self, d: float) -> float:
        if self.metric == "l2":
            return -float(d)  # the squared distance
        return 1.0 - float(d)  # cosine: 1 - cos; dot: 1 - dot

    def _query(self, rows: np.ndarray, k: int, flt: str | None) -> Any:
        data = rows.tolist()
        q = self._table.search(data if len(data) > 1 else data[0], vector_column_name=self._vec)
        q = q.distance_type(self._distance_type).limit(k)
        if not self.exact_search:
            # PQ codes give approximate distances: re-rank twice k candidates by the vectors
            # themselves, so that the scores handed out are the true ones.
            q = q.refine_factor(_REFINE)
        if flt:
            q = q.where(flt, prefilter=True)
        return q.select([self._id_col, "_distance"]).to_arrow()

    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        got = self._query(np.asarray(query, dtype=np.float32)[None, :], k, None)
        ids = got.column(self._id_col).to_pylist()
        dists = got.column("_distance").to_pylist()
        return [(str(i), self._score(d)) for i, d in zip(ids, dists, strict=True)]

    def _top_hits(
        self, queries: np.ndarray, k: int, exclude: list[str]
    ) -> list[list[tuple[str, float]]]:
        keys = [key for i in exclude if (key := self._key(i)) is not None]
        flt = (
            f"{_ident(self._id_col)} NOT IN ({', '.join(_literal(k_) for k_ in keys)})"
            if keys
            else None
        )
        rows = np.asarray(queries, dtype=np.float32)
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(rows), _QUERY_BATCH):
            batch = rows[start : start + _QUERY_BATCH]
            got = self._query(batch, k, flt)
            which = (
                got.column("query_index").to_pylist()
                if "query_index" in got.column_names
                else [0] * got.num_rows
            )
            per: list[list[tuple[str, float]]] = [[] for _ in range(len(batch))]
            ids = got.column(self._id_col).to_pylist()
            dists = got.column("_distance").to_pylist()
            for j, i, d in zip(which, ids, dists, strict=True):
                per[int(j)].append((str(i), self._score(d)))
            out.extend(self._as_unit_dot(h) for h in per)
        short = [j for j, h in enumerate(out) if len(h) < k]
        if short and not self.exact_search:
            # An index search can come back short (few partitions probed): a full read answers.
            avail = self.count() - len(self._rows(exclude, [self._id_col]))
            short = [j for j in short if len(out[j]) < min(k, avail)]
            if short:
                full = self._scan_top_hits(rows[short], k, exclude)
                for j, hits in zip(short, full, strict=True):
                    out[j] = hits
        return out


def llamaindex_lancedb(vs: Any) -> LanceDBAdapter:
    """LlamaIndex ``LanceDBVectorStore``: node ids in ``id``, text in its ``text_key`` column."""
    return LanceDBAdapter(
        vs._table,
        str(vs._connection.uri),
        name="llamaindex-lancedb",
        id_col="id",
        vector_col=vs.vector_column_name,
        doc_cols=[vs.text_key, "metadata"],
        docs=lancedb_docs(vs.text_key),
    )


def langchain_lancedb(vs: Any) -> LanceDBAdapter:
    """LangChain ``LanceDB`` (langchain_community): ids in its ``id_key`` column."""
    return LanceDBAdapter(
        vs.get_table(),
        str(vs._connection.uri),
        name="langchain-lancedb",
        id_col=vs._id_key,
        vector_col=vs._vector_key,
        doc_cols=[vs._text_key, "metadata"],
        docs=lancedb_docs(vs._text_key),
    )
