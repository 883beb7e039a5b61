"""Adapter for flat FAISS indexes (as LangChain's ``FAISS`` and LlamaIndex's ``FaissVectorStore``
/ ``FaissMapVectorStore`` use them).

Facts it relies on (faiss-cpu 1.15):

- A flat index (``IndexFlatIP``, ``IndexFlatL2``, ``IndexFlat``), possibly wrapped in
  ``IndexIDMap`` / ``IndexIDMap2``, keeps the float32 vectors as written, row by row, in one
  buffer. ``reconstruct_n`` reads them; writing a row of that buffer overwrites a vector in place,
  so positions, FAISS ids and the frameworks' position -> id maps all stay valid (no reset, no
  re-add, memory bounded by the rows written).
- Other indexes cannot be overwritten in place and are refused: IVF indexes file each vector
  under its nearest centroid, PQ / SQ / LSH keep lossy codes instead of the vectors, and HNSW
  keeps a graph built from the vectors, which a changed vector would silently invalidate.
- Record ids: LangChain maps positions to docstore ids (``index_to_docstore_id``); LlamaIndex's
  ``FaissVectorStore`` names records by position (``"0"``, ``"1"``, ...) and a
  ``VectorStoreIndex`` maps those to node ids (``index_struct.nodes_dict``);
  ``FaissMapVectorStore`` maps FAISS ids to node ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from nudge_rag.errors import StoreError, require
from nudge_rag.stores._base import (
    Metric,
    StoreIdentity,
    StorePage,
    VectorStoreAdapter,
    empty_page,
    process_identity,
)

__all__ = ["FaissFlatAdapter"]

LabelIds = Callable[[np.ndarray], list[str]]
Docs = Callable[[list[str]], tuple[list[str | None], list[dict[str, Any]]]]


def _unwrap(index: Any, name: str) -> tuple[Any, Any, bool]:
    """(outer index, inner flat index, whether an id map wraps it), or StoreError."""
    faiss: Any = require("faiss", "faiss")
    outer = faiss.downcast_index(index)
    id_mapped = isinstance(outer, faiss.IndexIDMap | faiss.IndexIDMap2)
    inner = faiss.downcast_index(outer.index) if id_mapped else outer
    if not isinstance(inner, faiss.IndexFlat):
        kind = type(inner).__name__
        msg = (
            f"{name}: FAISS index {kind} cannot be written in place; only flat indexes "
            "(IndexFlatIP, IndexFlatL2, optionally inside IndexIDMap) keep every vector as "
            "written. IVF indexes file vectors under their nearest centroid, PQ/SQ/LSH keep "
            "lossy codes, HNSW keeps a graph built from the vectors: overwriting a vector there "
            "would corrupt or silently stale the index. Rebuild it as a flat index to fine-tune."
        )
        raise StoreError(msg)
    return outer, inner, id_mapped


def _faiss_metric(inner: Any, name: str) -> Metric:
    import faiss

    if inner.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "dot"
    if inner.metric_type == faiss.METRIC_L2:
        return "l2"
    msg = (
        f"{name}: FAISS index metric {inner.metric_type} is not supported; "
        "expected METRIC_INNER_PRODUCT or METRIC_L2"
    )
    raise StoreError(msg)


class FaissFlatAdapter(VectorStoreAdapter):
    """A flat FAISS index whose rows are overwritten in place.

    Args:
        index: The FAISS index (flat, or flat inside ``IndexIDMap`` / ``IndexIDMap2``).
        label_ids: Maps FAISS labels (positions, or the id map's ids) to record ids.
        name: Which store this is (``"langchain-faiss"``, ``"llamaindex-faiss"``).
        docs: Maps record ids to (texts, metadatas); None: no text, empty metadata.
    """

    normalizes_on_write = False
    exact_search = True  # flat indexes only

    def __init__(
        self,
        index: Any,
        label_ids: LabelIds,
        *,
        name: str = "faiss",
        docs: Docs | None = None,
    ) -> None:
        self.name = name
        self._given = index  # the caller's object: _unwrap's downcasts are new proxies each time
        self._outer, self._inner, self._id_mapped = _unwrap(index, name)
        self.metric = _faiss_metric(self._inner, name)
        self._label_ids = label_ids
        self._docs = docs
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self._label_pos: dict[int, int] = {}

    # -- maps -------------------------------------------------------------------------------

    def _refresh(self) -> None:
        # Rebuilt on every call (O(n) dict work, small next to reading the vectors): a stale map
        # after a framework delete + add would read, or worse write, the wrong rows.
        import faiss

        n = int(self._inner.ntotal)
        if self._id_mapped:
            labels = faiss.vector_to_array(self._outer.id_map).astype(np.int64)
        else:
            labels = np.arange(n, dtype=np.int64)
        ids = self._label_ids(labels)
        if len(ids) != n:
            msg = f"{self.name}: the id map covers {len(ids)} records but the index holds {n}"
            raise StoreError(msg)
        self._labels = labels
        self._ids = ids
        self._pos = {id_: p for p, id_ in enumerate(ids)}
        self._label_pos = {int(lab): p for p, lab in enumerate(labels)}

    def _buffer(self) -> np.ndarray:
        import faiss

        n, d = int(self._inner.ntotal), int(self._inner.d)
        return faiss.rev_swig_ptr(self._inner.get_xb(), n * d).reshape(n, d)

    # -- reading ----------------------------------------------------------------------------

    def identity(self) -> StoreIdentity:
        # A FAISS index is an in-memory object; saved to disk it has a path only the caller
        # knows (pass store_id= or persist_dir= to the finetuner).
        return process_identity(self._given, "faiss")

    def count(self) -> int:
        return int(self._inner.ntotal)

    def dim(self) -> int:
        return int(self._inner.d)

    def _page(self, ids: list[str], emb: np.ndarray, with_documents: bool) -> StorePage:
        if with_documents and self._docs is not None:
            texts, metas = self._docs(ids)
        else:
            texts, metas = [None] * len(ids), [{} for _ in ids]
        return StorePage(ids, emb, texts, metas)

    def iter_pages(
        self, page_size: int = 1000, *, with_documents: bool = True
    ) -> Iterator[StorePage]:
        self._check_page_size(page_size)
        self._refresh()
        n = self.count()
        for start in range(0, n, page_size):
            stop = min(start + page_size, n)
            emb = self._inner.reconstruct_n(start, stop - start)
            yield self._page(self._ids[start:stop], emb, with_documents)

    def get(self, ids: Sequence[str]) -> StorePage:
        ids = list(ids)
        self._refresh()
        missing = [i for i in dict.fromkeys(ids) if i not in self._pos]
        if missing:
            self._raise_missing(missing)
        if not ids:
            return empty_page(self.dim())
        positions = np.fromiter((self._pos[i] for i in ids), dtype=np.int64, count=len(ids))
        emb = self._buffer()[positions].copy()
        return self._page(ids, emb, True)

    # -- writing ----------------------------------------------------------------------------

    def _missing(self, ids: list[str]) -> list[str]:
        self._refresh()  # write_vectors calls this first: the batches then use fresh maps
        return [i for i in ids if i not in self._pos]

    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        positions = np.fromiter((self._pos[i] for i in ids), dtype=np.int64, count=len(ids))
        self._buffer()[positions] = np.asarray(vectors, dtype=np.float32)
        cached = getattr(self._inner, "cached_l2norms", None)
        if cached is not None and cached.size() > 0:
            self._inner.sync_l2norms()  # IndexFlatL2's optional norm cache: keep it true

    # -- searching --------------------------------------------------------------------------

    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        self._refresh()
        n = self.count()
        if n == 0:
            return []
        q = np.ascontiguousarray(query, dtype=np.float32)[None, :]
        dists, labels = self._outer.search(q, min(k, n))
        sign = -1.0 if self.metric == "l2" else 1.0
        out: list[tuple[str, float]] = []
        for dist, label in zip(dists[0], labels[0], strict=True):
            if label < 0:
                continue
            out.append((self._ids[self._label_pos[int(label)]], sign * float(dist)))
        return out
