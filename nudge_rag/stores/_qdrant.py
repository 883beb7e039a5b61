"""Adapter for a Qdrant collection (as LlamaIndex's and LangChain's ``QdrantVectorStore`` use it).

Facts it relies on (qdrant-client 1.20, local ``:memory:`` mode and server alike):

- ``client.scroll(..., limit=, offset=, with_vectors=)`` pages through every point ordered by
  id and hands back the offset of the next page (``None`` at the end). LlamaIndex's
  ``get_nodes()`` is not used: it silently stops at 9,999 points.
- ``client.retrieve`` and ``client.update_vectors`` leave out / ignore ids that do not exist,
  hence the checks first. ``update_vectors`` replaces the named vector only and keeps the
  payload (text and metadata) as it is.
- The distance is in the collection config: Cosine -> "cosine", Dot -> "dot", Euclid -> "l2".
  With Cosine, Qdrant normalises every vector on write: what reads back is the unit vector.
- Point ids are unsigned ints or UUIDs; they are handed out as strings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import weakref
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
    process_identity,
)

__all__ = ["QdrantAdapter", "langchain_payload_docs", "llamaindex_payload_docs"]

_DISTANCES: dict[str, Metric] = {"Cosine": "cosine", "Dot": "dot", "Euclid": "l2"}
_ID_CHUNK = 1000
_QUERY_BATCH = 64

PayloadDocs = Callable[[dict[str, Any]], tuple[str | None, dict[str, Any]]]


def llamaindex_payload_docs(text_key: str | None = "text") -> PayloadDocs:
    """Text and metadata of a LlamaIndex node kept in a Qdrant payload.

    The text is the node's text, as LlamaIndex rebuilds the node from the payload's
    ``_node_content`` (falling back to ``payload[text_key]`` for legacy points); the metadata is
    the payload as stored.
    """

    def docs(payload: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        text: str | None = None
        content = payload.get("_node_content")
        if isinstance(content, str):
            try:
                from llama_index.core.schema import MetadataMode
                from llama_index.core.vector_stores.utils import metadata_dict_to_node

                node = metadata_dict_to_node(payload)
                text = node.get_content(metadata_mode=MetadataMode.NONE)
            except Exception:  # not a node LlamaIndex can rebuild: read the JSON directly
                try:
                    raw = json.loads(content).get("text")
                    text = raw if isinstance(raw, str) else None
                except (ValueError, AttributeError):
                    text = None
        if text is None and text_key and isinstance(payload.get(text_key), str):
            text = payload[text_key]
        return text, dict(payload)

    return docs


def langchain_payload_docs(content_key: str, metadata_key: str) -> PayloadDocs:
    """Text and metadata of a LangChain document kept in a Qdrant payload."""

    def docs(payload: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        text = payload.get(content_key)
        meta = payload.get(metadata_key) or {}
        return (text if isinstance(text, str) else None), dict(meta)

    return docs


def _point_id(id_: str) -> int | str | None:
    """The Qdrant point id for one of our string ids, or None if it cannot be one."""
    if id_.isascii() and id_.isdigit():
        return int(id_)
    try:
        return str(uuid.UUID(id_))
    except ValueError:
        return None


_RESOLVED: dict[int, tuple[Any, str]] = {}


def _resolved_once(client: Any, location: str) -> str:
    """The absolute path of a local client's folder, resolved the first time the client is seen:
    a relative path names the folder the client opened, whatever the working directory is later."""
    held = _RESOLVED.get(id(client))
    if held is not None and held[0]() is client:
        return str(held[1])
    path = os.path.realpath(location)
    key = id(client)

    def forget(_ref: Any) -> None:
        _RESOLVED.pop(key, None)

    try:
        ref: Any = weakref.ref(client, forget)
    except TypeError:  # pragma: no cover - not weak-referenceable
        return path
    _RESOLVED[key] = (ref, path)
    return path


class QdrantAdapter(VectorStoreAdapter):
    """One dense vector of the points of a Qdrant collection, read and written in place.

    Searches report Qdrant's scores: cosine, dot, or the Euclidean distance (not squared).

    Args:
        client: A ``qdrant_client.QdrantClient`` (``":memory:"``, on-disk local, or server).
        collection_name: The collection.
        name: Which store this is (``"llamaindex-qdrant"``, ``"langchain-qdrant"``).
        vector_name: The framework's name for its dense vector; used when the collection has
            named vectors (an unnamed collection has one vector and needs no name).
        payload_docs: Turns a payload into (text, metadata); default: no text, payload as is.
    """

    def __init__(
        self,
        client: Any,
        collection_name: str,
        *,
        name: str = "qdrant",
        vector_name: str | None = None,
        payload_docs: PayloadDocs | None = None,
    ) -> None:
        if client is None:
            msg = f"{name}: the store has no synchronous Qdrant client (pass client= to it)"
            raise StoreError(msg)
        self._client = client
        self._collection = collection_name
        self.name = name
        self._docs = payload_docs or (lambda payload: (None, dict(payload)))
        info = client.get_collection(collection_name)
        vectors = info.config.params.vectors
        if isinstance(vectors, dict):
            if vector_name and vector_name in vectors:
                self._vname: str | None = vector_name
            elif len(vectors) == 1:
                self._vname = next(iter(vectors))
            else:
                msg = (
                    f"{name}: collection {collection_name!r} has named vectors "
                    f"{sorted(vectors)} and none is {vector_name!r}; say which to use"
                )
                raise StoreError(msg)
            params = vectors[self._vname]
        elif vectors is None:
            msg = f"{name}: collection {collection_name!r} has no dense vectors"
            raise StoreError(msg)
        else:
            self._vname = None
            params = vectors
        if getattr(params, "multivector_config", None) is not None:
            msg = (
                f"{name}: collection {collection_name!r} holds multivectors; "
                "only single dense vectors are supported"
            )
            raise StoreError(msg)
        datatype = getattr(params, "datatype", None)
        datatype = getattr(datatype, "value", datatype)
        if datatype not in (None, "float32"):
            msg = (
                f"{name}: collection {collection_name!r} stores vectors as {datatype}; only "
                "float32 vectors can be written back without loss"
            )
            raise StoreError(msg)
        distance = getattr(params.distance, "value", params.distance)
        if distance not in _DISTANCES:
            msg = (
                f"{name}: collection {collection_name!r} uses distance {distance!r}; "
                f"supported distances: {sorted(_DISTANCES)}"
            )
            raise StoreError(msg)
        self.metric = _DISTANCES[str(distance)]
        self.normalizes_on_write = self.metric == "cosine"
        self.l2_squared = False  # Euclid scores are the distance itself
        self._dim = int(params.size)
        # Local mode (":memory:" or a folder) scores every point; a server searches HNSW.
        inner = getattr(client, "_client", client)
        self.exact_search = type(inner).__name__ == "QdrantLocal"

    def identity(self) -> StoreIdentity:
        # Where the collection lives (an on-disk folder or a server) and its name. A collection
        # in a ":memory:" client lives as long as that client object.
        inner = getattr(self._client, "_client", self._client)
        if type(inner).__name__ == "QdrantLocal":
            location = getattr(inner, "location", None)
            if not getattr(inner, "persistent", False) or location in (None, ":memory:"):
                ident = process_identity(inner, "qdrant")
                return StoreIdentity(f"{ident.key}/{self._collection}", False)
            where = "local:" + _resolved_once(inner, str(location))
        else:
            where = str(
                getattr(inner, "rest_uri", None)
                or f"{getattr(inner, '_host', '?')}:{getattr(inner, '_port', '?')}"
            )
        return StoreIdentity(f"qdrant:{where}/{self._collection}", True)

    def state_backend(self, scope: str) -> Any:
        """Local mode on disk (``QdrantClient(path=...)``): ``<path>/nudge_state/<collection>``
        inside the Qdrant folder. A server or ``:memory:``: None (the per-user folder; a
        companion collection on a Qdrant server is not written yet)."""
        inner = getattr(self._client, "_client", self._client)
        if type(inner).__name__ != "QdrantLocal" or not getattr(inner, "persistent", False):
            return None
        location = getattr(inner, "location", None)
        if location in (None, ":memory:"):
            return None
        from nudge_rag.state._folder import STATE_FOLDER, FolderBackend

        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self._collection).strip("-.") or "collection"
        if name != self._collection:
            name += "-" + hashlib.sha256(self._collection.encode("utf-8")).hexdigest()[:12]
        root = Path(_resolved_once(inner, str(location)))
        place = FolderBackend(root / STATE_FOLDER / name)
        place.with_store = True  # it travels with the store (a copy carries its own)
        return place

    def count(self) -> int:
        return int(self._client.count(self._collection, exact=True).count)

    def dim(self) -> int:
        return self._dim

    def _with_vectors(self) -> bool | list[str]:
        return True if self._vname is None else [self._vname]

    def _vector_of(self, point: Any) -> Any:
        vec = point.vector
        if isinstance(vec, dict):
            key = self._vname if self._vname is not None else ""
            if key not in vec:
                msg = f"{self.name}: point {point.id} has no vector {key!r}"
                raise StoreError(msg)
            return vec[key]
        return vec

    def _to_page(self, points: list[Any], with_documents: bool) -> StorePage:
        if not points:
            return empty_page(self._dim)
        ids = [str(p.id) for p in points]
        emb = as_page_array([self._vector_of(p) for p in points], self._dim, stored_as_float32=True)
        if with_documents:
            pairs = [self._docs(p.payload or {}) for p in points]
            texts = [t for t, _ in pairs]
            metas = [m for _, m in pairs]
        else:
            texts, metas = [None] * len(ids), [{} for _ in ids]
        return StorePage(ids, emb, texts, metas)

    def iter_pages(
        self, page_size: int = 1000, *, with_documents: bool = True
    ) -> Iterator[StorePage]:
        self._check_page_size(page_size)
        offset = None
        while True:
            points, offset = self._client.scroll(
                self._collection,
                limit=page_size,
                offset=offset,
                with_payload=with_documents,
                with_vectors=self._with_vectors(),
            )
            if points:
                yield self._to_page(points, with_documents)
            if offset is None:
                return

    def _retrieve(self, ids: list[str], *, with_data: bool) -> dict[str, Any]:
        found: dict[str, Any] = {}
        valid = [(i, p) for i in ids if (p := _point_id(i)) is not None]
        for start in range(0, len(valid), _ID_CHUNK):
            chunk = valid[start : start + _ID_CHUNK]
            points = self._client.retrieve(
                self._collection,
                ids=[p for _, p in chunk],
                with_payload=with_data,
                with_vectors=self._with_vectors() if with_data else False,
            )
            by_str = {str(p.id): p for p in points}
            for id_, pid in chunk:
                point = by_str.get(str(pid))
                if point is not None:
                    found[id_] = point
        return found

    def get(self, ids: Sequence[str]) -> StorePage:
        ids = list(ids)
        if not ids:
            return empty_page(self._dim)
        wanted = list(dict.fromkeys(ids))
        found = self._retrieve(wanted, with_data=True)
        missing = [i for i in wanted if i not in found]
        if missing:
            self._raise_missing(missing)
        page = self._to_page([found[i] for i in ids], True)
        # Qdrant canonicalises UUIDs (lower case, dashes): hand back the ids as asked.
        return page._replace(ids=ids)

    def _missing(self, ids: list[str]) -> list[str]:
        found = self._retrieve(ids, with_data=False)
        return [i for i in ids if i not in found]

    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        from qdrant_client import models

        rows = np.asarray(vectors, dtype=np.float32).tolist()
        points = [
            models.PointVectors(
                id=_point_id(id_),  # type: ignore[arg-type]
                vector=row if self._vname is None else {self._vname: row},
            )
            for id_, row in zip(ids, rows, strict=True)
        ]
        self._client.update_vectors(self._collection, points=points, wait=True)

    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        res = self._client.query_points(
            self._collection,
            query=np.asarray(query, dtype=np.float32).tolist(),
            using=self._vname,
            limit=k,
            with_payload=False,
        )
        sign = -1.0 if self.metric == "l2" else 1.0
        return [(str(p.id), sign * float(p.score)) for p in res.points]

    def _top_hits(
        self, queries: np.ndarray, k: int, exclude: list[str]
    ) -> list[list[tuple[str, float]]]:
        # The excluded points are left out inside the query (must_not has_id), batched.
        from qdrant_client import models

        point_ids = [p for i in exclude if (p := _point_id(i)) is not None]
        flt = (
            models.Filter(must_not=[models.HasIdCondition(has_id=point_ids)])  # type: ignore[arg-type]
            if point_ids
            else None
        )
        sign = -1.0 if self.metric == "l2" else 1.0
        out: list[list[tuple[str, float]]] = []
        rows = np.asarray(queries, dtype=np.float32)
        for start in range(0, len(rows), _QUERY_BATCH):
            requests = [
                models.QueryRequest(
                    query=row.tolist(), using=self._vname, limit=k, filter=flt, with_payload=False
                )
                for row in rows[start : start + _QUERY_BATCH]
            ]
            for res in self._client.query_batch_points(self._collection, requests=requests):
                hits = [(str(p.id), sign * float(p.score)) for p in res.points]
                out.append(self._as_unit_dot(hits))
        return out
