"""The adapter contract every store implements, and the checks they share."""

from __future__ import annotations

import abc
import logging
import os
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from nudge_rag._faults import checkpoint
from nudge_rag._util import check_positive_int
from nudge_rag.core.topk import RunningTopK
from nudge_rag.errors import (
    DimensionMismatchError,
    NonFiniteError,
    NudgeInputError,
    ShapeError,
    StoreError,
    ZeroVectorError,
)

__all__ = ["Metric", "StoreIdentity", "StorePage", "VectorStoreAdapter"]

logger = logging.getLogger(__name__)

Metric = Literal["cosine", "dot", "l2"]

_MAX_NAMED = 10


class StorePage(NamedTuple):
    """One page of records read from a vector store.

    Attributes:
        ids: Record ids, as the framework's retriever reports them (node ids, document ids).
        embeddings: ``(len(ids), d)`` array of the stored vectors, exactly as the store returns
            them. float32 for the stores that keep float32 (Chroma, Qdrant, FAISS): Chroma's
            client hands out float64 (copies of the float32 values in process, decimals parsed
            from JSON over HTTP), and casting them to float32 gives back exactly what is stored.
            The pure-Python stores (LlamaIndex ``SimpleVectorStore``, LangChain
            ``InMemoryVectorStore``) keep Python floats: float32 when that is lossless, and
            float64 for a page holding values float32 cannot represent, so nothing is lost.
        texts: The text the framework would show for each record (``None`` where the store keeps
            no text, or when read with ``with_documents=False``).
        metadatas: The metadata of each record as the store keeps it, untouched (``{}`` when read
            with ``with_documents=False``).
    """

    ids: list[str]
    embeddings: np.ndarray
    texts: list[str | None]
    metadatas: list[dict[str, Any]]


class StoreIdentity(NamedTuple):
    """Which store this is, taken from the store itself (never from its contents).

    Attributes:
        key: A string no other store shares: ``"chroma:<collection uuid>"``,
            ``"qdrant:<path or url>/<collection>"``, ``"path:<persist dir>"``, ``"user:<name>"``
            (``store_id=``), or ``"process:<token>"`` for a store that lives only in this
            process. Adding, deleting or editing records does not change it, and two wrappers
            over the same store (a raw chromadb collection and LangChain's ``Chroma`` over it)
            give the same key.
        durable: True when the key outlives this process (a collection id, a path, a server
            address); False for an in-memory object, whose key is a token made for it.
    """

    key: str
    durable: bool


_TOKENS: dict[int, tuple[object, str]] = {}
_TOKENS_LOCK = threading.Lock()


def process_identity(obj: object, kind: str) -> StoreIdentity:
    """A key for an in-memory store object that lives only in this process.

    The same object gets the same key for as long as it lives; two live objects never share one
    (a fresh random token per object, dropped when the object is collected).
    """
    with _TOKENS_LOCK:
        held = _TOKENS.get(id(obj))
        if held is not None:
            ref, token = held
            target = ref() if isinstance(ref, weakref.ref) else ref
            if target is obj:
                return StoreIdentity(f"process:{kind}:{token}", False)
        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        key = id(obj)
        try:
            ref = weakref.ref(obj, lambda _r, key=key: _TOKENS.pop(key, None))  # type: ignore[misc]
            _TOKENS[key] = (ref, token)
        except TypeError:  # not weak-referenceable: keep it alive with its token
            _TOKENS[key] = (obj, token)
        return StoreIdentity(f"process:{kind}:{token}", False)


def as_page_array(rows: object, dim: int, *, stored_as_float32: bool = False) -> np.ndarray:
    """Rows of floats as a 2-D array.

    A store that keeps float32 (``stored_as_float32``) gets float32: whatever its client hands
    out (float64 copies, or decimals parsed from JSON over HTTP), casting to float32 gives back
    exactly the stored values. Otherwise float32 when that is lossless, float64 when it is not.
    """
    arr = np.asarray(rows)
    if arr.size == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if arr.ndim != 2:
        msg = f"the store returned vectors of inconsistent widths (expected {dim} each)"
        raise StoreError(msg)
    if arr.dtype == np.float32 or stored_as_float32:
        return arr.astype(np.float32, copy=False)
    as32 = arr.astype(np.float32)
    if np.array_equal(as32.astype(arr.dtype), arr):
        return as32
    return arr.astype(np.float64)


def empty_page(dim: int) -> StorePage:
    return StorePage([], np.zeros((0, dim), dtype=np.float32), [], [])


def name_ids(ids: Sequence[str]) -> str:
    """A short, readable list of ids for an error message."""
    shown = ", ".join(repr(i) for i in list(ids)[:_MAX_NAMED])
    more = len(ids) - _MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


class VectorStoreAdapter(abc.ABC):
    """Reads the vectors of a vector store page by page and writes vectors back in place.

    Subclasses implement one store each. Writes overwrite the vector of existing records under
    the same id: records are never deleted and re-added, and their texts and metadata are never
    touched.

    Attributes:
        name: Which store this is, e.g. ``"llamaindex-chroma"`` (one of ``SUPPORTED_STORES``).
        metric: How the store ranks: ``"cosine"``, ``"dot"`` (inner product) or ``"l2"``.
        normalizes_on_write: True when the store normalises the vectors it is given, so that
            what reads back is not bit for bit what was written: Qdrant with Cosine distance
            keeps the unit vector; Chroma in cosine space normalises internally and hands back
            the written vector to within ~1e-7 relative. Write unit vectors to such a store (they
            read back within 1e-7); every other store keeps vectors exactly as written.
        exact_search: True when the store's own search is exact (a flat scan: FAISS flat, the
            in-memory stores, Qdrant's local mode, tables without a vector index); False when it
            is approximate (HNSW, IVF, ...), so that ``search`` and ``top_scores`` may miss a
            record a full scan would rank in.
        l2_squared: For an l2 store, whether the distance its search reports is squared (Chroma,
            FAISS, Milvus, LanceDB) or not (Qdrant, pgvector); ``search`` scores are minus it.
    """

    name: str
    metric: Metric
    normalizes_on_write: bool = False
    exact_search: bool = True
    l2_squared: bool = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} metric={self.metric}>"

    # -- identity -----------------------------------------------------------------------------

    def identity(self) -> StoreIdentity:
        """Which store this is (see :class:`StoreIdentity`).

        The default names the adapter object itself for this process only; adapters over a store
        with an identity of its own (a collection id, a path, a server) override it.
        """
        return process_identity(self, self.name)

    def state_backend(self, scope: str) -> Any:
        """Where this store keeps our state, with the store itself: a
        :class:`~nudge_rag.state.StateBackend` (a table beside the user's in its database, a
        companion collection on its server, a folder inside or beside its files), or None when
        the store has no such place (an in-memory store: the per-user folder is used).

        ``scope`` is the store's identity key: one place may hold the state of several stores
        (one table per database), each under its own scope.
        """
        return None

    # -- reading ------------------------------------------------------------------------------

    @abc.abstractmethod
    def count(self) -> int:
        """Number of records in the store."""

    @abc.abstractmethod
    def dim(self) -> int:
        """Width of the stored vectors (StoreError for an empty store that has none yet)."""

    @abc.abstractmethod
    def iter_pages(
        self, page_size: int = 1000, *, with_documents: bool = True
    ) -> Iterator[StorePage]:
        """Yield every record exactly once, in a stable order, ``page_size`` records at a time.

        Args:
            page_size: Records per page (the last page may be shorter).
            with_documents: Also read texts and metadata; False reads ids and vectors only.
        """

    @abc.abstractmethod
    def get(self, ids: Sequence[str]) -> StorePage:
        """The records with these ids, in this order (StoreError naming any missing id)."""

    def fresh_get(self, ids: Sequence[str]) -> StorePage:
        """Like :meth:`get`, but read as the store holds the records now, past any view this
        process keeps of them (a Chroma folder: a process's client may hand back vectors as they
        were before another process wrote). Slower than :meth:`get` where it differs; use it to
        settle a doubt (after taking the store's lock). The default is :meth:`get`."""
        return self.get(ids)

    def refresh(self) -> None:  # noqa: B027 - optional hook
        """Read the store as it is now from here on, past any view this process keeps of it
        (a Chroma folder; see :meth:`fresh_get`). Called right after taking the store's lock.
        The default does nothing: most stores are read fresh on every call."""

    # -- writing ------------------------------------------------------------------------------

    def write_vectors(
        self, ids: Sequence[str], vectors: np.ndarray, *, batch_size: int = 500
    ) -> None:
        """Overwrite the vectors of existing records, in place, under the same ids.

        Everything is checked before anything is written: the shape and width of ``vectors``,
        finiteness, distinct ids, and that every id exists (StoreError naming the missing ones).
        Then the vectors are written ``batch_size`` records at a time. Texts and metadata are
        never touched; no record is deleted or added.

        Args:
            ids: The records to overwrite.
            vectors: ``(len(ids), dim)`` array, row ``i`` for ``ids[i]``.
            batch_size: Records written per call to the store.
        """
        ids, vectors = self._check_write(ids, vectors, batch_size)
        if not ids:
            return
        missing = self._missing(ids)
        if missing:
            msg = (
                f"write_vectors: {len(missing)} id(s) are not in the {self.name} store: "
                f"{name_ids(missing)}; nothing was written"
            )
            raise StoreError(msg)
        for start in range(0, len(ids), batch_size):
            stop = start + batch_size
            self._write_batch(ids[start:stop], vectors[start:stop])
            checkpoint("store.batch")
        logger.debug("wrote %d vectors to %s", len(ids), self.name)

    @abc.abstractmethod
    def _missing(self, ids: list[str]) -> list[str]:
        """The ids (from ``ids``, all distinct) that are not in the store."""

    @abc.abstractmethod
    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        """Overwrite these existing records' vectors (already checked)."""

    # -- searching ----------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The store's own k-nearest-neighbour search: ``(id, score)`` pairs, best first.

        The score is higher for a better match: the cosine similarity or the inner product the
        store reports, or minus the L2 distance the store reports (squared for Chroma and FAISS,
        as they report it) for an l2 store.
        """
        q = np.asarray(query)
        if q.ndim != 1:
            msg = f"query: expected one vector (1-D array), received shape {q.shape}"
            raise ShapeError(msg)
        d = self.dim()
        if q.shape[0] != d:
            msg = f"query: expected width {d} (the store's), received {q.shape[0]}"
            raise DimensionMismatchError(msg)
        if not np.all(np.isfinite(q)):
            msg = "query: expected finite values, received NaN or inf"
            raise NonFiniteError(msg)
        k = check_positive_int(k, "k")
        return self._search(q, int(k))

    @abc.abstractmethod
    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Native k-NN on a checked query."""

    def top_scores(self, queries: np.ndarray, k: int, exclude: Sequence[str] = ()) -> np.ndarray:
        """The best ``k`` scores of each query among the records not in ``exclude``.

        The store runs the search (where the data lives), excluding the records inside the query
        where it can (a SQL ``WHERE``, a filter expression), so only ``n_queries × k`` numbers
        come back. Scores are converted to the dot product of unit vectors whatever the metric:
        cosine as is, dot as is, l2 as ``1 - d²/2`` (``d²`` the squared distance), which is the
        cosine of the two vectors when both are unit length (what NUDGE-N keeps).

        Args:
            queries: ``(n_queries, dim)`` array of unit query vectors.
            k: How many scores per query.
            exclude: Record ids left out of the search (ids the store does not hold are ignored).

        Returns:
            ``(n_queries, k)`` float32 array, best first in each row, padded with ``-inf`` where
            the store holds fewer than ``k`` records outside ``exclude``. On an approximate
            store (``exact_search`` False) a row can miss a record a full scan would include.
        """
        q = self._check_queries(queries)
        k = check_positive_int(k, "k")
        if isinstance(exclude, str):
            msg = "exclude: expected a sequence of ids, received a single str"
            raise NudgeInputError(msg)
        k = int(k)
        out = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        if q.shape[0] == 0 or self.count() == 0:
            return out
        hits = self._top_hits(q, k, list(dict.fromkeys(str(i) for i in exclude)))
        for row, found in enumerate(hits):
            scores = np.sort(np.asarray([s for _, s in found[:k]], dtype=np.float32))[::-1]
            out[row, : len(scores)] = scores
        return out

    def _top_hits(
        self, queries: np.ndarray, k: int, exclude: list[str]
    ) -> list[list[tuple[str, float]]]:
        """Per query, up to ``k`` (id, unit dot product) pairs outside ``exclude``, best first.

        The generic way: ask the store's own search for ``k + len(exclude)`` records (at most
        all of them), drop the excluded ones, and ask for more when a query still runs short (an
        approximate search can return fewer than asked). Adapters whose store can exclude inside
        the query override this.
        """
        total = self.count()
        skip = set(exclude)
        out: list[list[tuple[str, float]]] = []
        for query in queries:
            want = min(k + len(skip), total)
            while True:
                hits = self._search(query, want)
                kept = [(i, s) for i, s in hits if i not in skip]
                if len(kept) >= k or want >= total:
                    break
                want = min(total, max(2 * want, want + k))
            out.append(self._as_unit_dot(kept[:k]))
        return out

    def _as_unit_dot(self, hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """``search`` scores as dot products of unit vectors (see ``top_scores``), best first."""
        if self.metric != "l2":
            pairs = [(i, float(s)) for i, s in hits]
        elif self.l2_squared:
            pairs = [(i, 1.0 + float(s) / 2.0) for i, s in hits]  # s = -d²
        else:
            pairs = [(i, 1.0 - float(s) * float(s) / 2.0) for i, s in hits]  # s = -d
        return sorted(pairs, key=lambda p: -p[1])

    def _scan_top_hits(
        self, queries: np.ndarray, k: int, exclude: list[str], page_size: int = 2000
    ) -> list[list[tuple[str, float]]]:
        """Exact top hits by reading every record page by page (for a ``k`` past what the
        store's own search can return). Memory: one page and ``n_queries × k`` best scores."""
        skip = set(exclude)
        q = np.asarray(queries, dtype=np.float64)
        top = RunningTopK(q.shape[0], k)
        kept_ids: list[str] = []
        for page in self.iter_pages(page_size, with_documents=False):
            keep = [j for j, i in enumerate(page.ids) if i not in skip]
            if not keep:
                continue
            x = np.asarray(page.embeddings[keep], dtype=np.float64)
            if self.metric == "cosine":
                x = x / np.linalg.norm(x, axis=1, keepdims=True)
            s = q @ x.T
            if self.metric == "l2":
                d2 = (q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * s
                s = 1.0 - d2 / 2.0
            top.update(s)
            kept_ids.extend(page.ids[j] for j in keep)
        return [
            [(kept_ids[i], float(s)) for i, s in zip(rows, s_row, strict=True)]
            for rows, s_row in zip(top.rows.tolist(), top.scores, strict=True)
        ]

    def _check_write(
        self, ids: Sequence[str], vectors: np.ndarray, batch_size: int
    ) -> tuple[list[str], np.ndarray]:
        check_positive_int(batch_size, "batch_size")
        if isinstance(ids, str):
            msg = "ids: expected a sequence of ids, received a single str"
            raise NudgeInputError(msg)
        ids = list(ids)
        bad = [i for i in ids if not isinstance(i, str)]
        if bad:
            msg = f"ids: expected str ids, received {type(bad[0]).__name__} ({bad[0]!r})"
            raise NudgeInputError(msg)
        if len(set(ids)) != len(ids):
            dupes = [i for i, n in Counter(ids).items() if n > 1]
            msg = f"ids: expected distinct ids, received duplicates: {name_ids(dupes)}"
            raise NudgeInputError(msg)
        arr = np.asarray(vectors)
        if arr.ndim != 2:
            msg = f"vectors: expected a 2-D array (n, d), received shape {arr.shape}"
            raise ShapeError(msg)
        if arr.shape[0] != len(ids):
            msg = f"vectors: expected {len(ids)} rows (one per id), received {arr.shape[0]}"
            raise ShapeError(msg)
        if not np.issubdtype(arr.dtype, np.floating):
            msg = f"vectors: expected a float array, received dtype {arr.dtype}"
            raise NudgeInputError(msg)
        if not ids:
            return ids, arr
        d = self.dim()
        if arr.shape[1] != d:
            msg = f"vectors: expected width {d} (the store's), received {arr.shape[1]}"
            raise DimensionMismatchError(msg)
        finite = np.all(np.isfinite(arr), axis=1)
        if not finite.all():
            bad_ids = [ids[i] for i in np.flatnonzero(~finite)]
            msg = f"vectors: expected finite values, received NaN or inf for {name_ids(bad_ids)}"
            raise NonFiniteError(msg)
        if self.metric == "cosine":
            zero = ~np.any(arr != 0, axis=1)
            if zero.any():
                msg = (
                    "vectors: all-zero rows cannot be ranked by cosine similarity, received "
                    f"them for {name_ids([ids[i] for i in np.flatnonzero(zero)])}"
                )
                raise ZeroVectorError(msg)
        return ids, arr

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries)
        if q.ndim != 2:
            msg = f"queries: expected a 2-D array (n_queries, d), received shape {q.shape}"
            raise ShapeError(msg)
        if not np.issubdtype(q.dtype, np.floating):
            msg = f"queries: expected a float array, received dtype {q.dtype}"
            raise NudgeInputError(msg)
        if q.shape[0] == 0:
            return q.reshape(0, q.shape[1])
        d = self.dim()
        if q.shape[1] != d:
            msg = f"queries: expected width {d} (the store's), received {q.shape[1]}"
            raise DimensionMismatchError(msg)
        if not np.all(np.isfinite(q)):
            msg = "queries: expected finite values, received NaN or inf"
            raise NonFiniteError(msg)
        return q

    def _check_page_size(self, page_size: int) -> int:
        return check_positive_int(page_size, "page_size")

    def _raise_missing(self, missing: Sequence[str]) -> None:
        msg = f"get: {len(missing)} id(s) are not in the {self.name} store: {name_ids(missing)}"
        raise StoreError(msg)
