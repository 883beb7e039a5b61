"""A store's state in a companion collection on the Chroma server that holds the store.

One collection per database, ``nudge_rag_state``, in the same tenant and database as the
user's collection; each row belongs to one store (its identity key, ``scope``)::

    id         "<scope>|<key>"           e.g. "chroma:6f1c...|gen-000003/originals.npy#2"
    document   base64 of the value       (a chunk of at most ``chunk_bytes`` raw bytes)
    metadata   {"scope": ..., "key": ...}
    embedding  [1.0]                     (a dummy: Chroma requires one; never searched)

Why one collection for the database and not one per user collection: one plainly named thing
to see and to remove (``client.delete_collection("nudge_rag_state")`` forgets every store's
state at once; deleting its rows ``where={"scope": "chroma:<collection id>"}`` forgets one store's),
and Chroma's collection names need no digest suffix. Scoping by the identity key (the user
collection's id) keeps two collections of the database apart, and a collection deleted and made
again under the same name apart from its predecessor.

Limits measured on a Chroma 1.5 server (``chroma run``): a request body may be up to 32 MB
(48 MB is refused, "Payload too large"); ``get_max_batch_size()`` is 5,461 records; a 32 MB
document and a 1 MB metadata value are accepted. So blobs are cut in chunks of 1 MiB (1.4 MB of
base64), and each request carries at most ~8 MB and at most ``get_max_batch_size()`` rows.
Chroma Cloud documents its own, far smaller limits (16 KB documents, 300 records a write):
towards ``*.trychroma.com`` chunks are 12,000 bytes (16,000 characters of base64; not tested
here, no Cloud account).

The lock is :class:`KVBackend`'s lease (Chroma has no compare-and-set).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nudge_rag._faults import checkpoint
from nudge_rag.state._base import KVBackend, b64, unb64

__all__ = ["COMPANION_COLLECTION", "ChromaCompanion"]

COMPANION_COLLECTION = "nudge_rag_state"
_REQUEST_BYTES = 8 << 20  # base64 text per request (the server takes up to 32 MB)
_PAGE = 1000  # rows per listing call
_SEP = "|"


class ChromaCompanion(KVBackend):
    """A store's state in the ``nudge_rag_state`` collection beside it on a Chroma server.

    Args:
        collection: The user's chromadb collection (over an ``HttpClient``): the companion is
            made (or opened) in its tenant and database, through the same client.
        scope: The store's identity key (``"chroma:<collection id>"``).
        name: The companion collection's name.
    """

    kind = "chroma"
    chunk_bytes = 1 << 20

    def __init__(self, collection: Any, scope: str, *, name: str = COMPANION_COLLECTION) -> None:
        from chromadb.api.models.Collection import Collection

        server = collection._client
        model = server.get_or_create_collection(
            name,
            configuration={"hnsw": {"space": "l2"}},
            metadata={"nudge_rag": "fine-tuning state (https://pypi.org/project/nudge-rag)"},
            tenant=collection.tenant,
            database=collection.database,
        )
        self._col = Collection(client=server, model=model, embedding_function=None)
        self.scope = scope
        try:
            self._max_batch = max(1, int(server.get_max_batch_size()))
        except Exception:  # pragma: no cover - a server that cannot tell
            self._max_batch = 100
        settings = server.get_settings()
        host = f"{settings.chroma_server_host}:{settings.chroma_server_http_port}"
        if str(settings.chroma_server_host or "").endswith("trychroma.com"):
            self.chunk_bytes = 12_000
        self.where = (
            f"chroma server {host} {collection.tenant}/{collection.database} "
            f"collection {name} scope {scope}"
        )

    def _id(self, key: str) -> str:
        return f"{self.scope}{_SEP}{key}"

    # -- the key-value interface --------------------------------------------------------------
    def _get(self, keys: Sequence[str]) -> dict[str, bytes]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, bytes] = {}
        # A chunk holds up to chunk_bytes; any other value is small (a head, a manifest, a
        # feedback line): a few chunks per call, many small values per call.
        big = [k for k in keys if "#" in k]
        small = [k for k in keys if "#" not in k]
        per_big = max(1, _REQUEST_BYTES // (self.chunk_bytes * 4 // 3 + 4))
        for group, step in ((big, per_big), (small, min(self._max_batch, _PAGE))):
            for start in range(0, len(group), step):
                part = group[start : start + step]
                got = self._col.get(
                    ids=[self._id(k) for k in part], include=["documents", "metadatas"]
                )
                for meta, doc in zip(got["metadatas"] or [], got["documents"] or [], strict=True):
                    if meta and meta.get("scope") == self.scope and doc is not None:
                        out[str(meta["key"])] = unb64(doc)
        return out

    def _put(self, items: Mapping[str, bytes]) -> None:
        # Chunks first, then the keys that name them (a head, CURRENT, a manifest): a reader
        # never finds a head whose chunks are not there yet.
        order = sorted(items, key=lambda k: "#" not in k)
        batch: list[tuple[str, str]] = []
        size = 0
        for key in order:
            text = b64(items[key])
            if batch and (len(batch) >= self._max_batch or size + len(text) > _REQUEST_BYTES):
                self._upsert(batch)
                checkpoint("state.put")
                batch, size = [], 0
            batch.append((key, text))
            size += len(text)
        if batch:
            self._upsert(batch)
            checkpoint("state.put")

    def _upsert(self, batch: list[tuple[str, str]]) -> None:
        self._col.upsert(
            ids=[self._id(k) for k, _ in batch],
            documents=[t for _, t in batch],
            metadatas=[{"scope": self.scope, "key": k} for k, _ in batch],
            embeddings=np.ones((len(batch), 1), dtype=np.float32),
        )

    def _delete(self, keys: Sequence[str]) -> None:
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), self._max_batch):
            self._col.delete(ids=[self._id(k) for k in keys[start : start + self._max_batch]])

    def _keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        offset = 0
        while True:
            got = self._col.get(
                where={"scope": self.scope}, include=["metadatas"], limit=_PAGE, offset=offset
            )
            metas = got["metadatas"] or []
            out.extend(str(m["key"]) for m in metas if m and str(m["key"]).startswith(prefix))
            if len(got["ids"]) < _PAGE:
                return out
            offset += len(got["ids"])

    # -- the whole place ------------------------------------------------------------------------
    def forget(self) -> None:
        """Remove every row of this store (its whole state and feedback), not the collection."""
        self._col.delete(where={"scope": self.scope})
