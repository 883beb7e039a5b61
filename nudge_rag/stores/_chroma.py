"""Adapter for a Chroma collection (as LlamaIndex's ``ChromaVectorStore`` and LangChain's
``Chroma`` use it, or passed directly).

Facts it relies on (chromadb 1.5):

- ``collection.get(include=["embeddings", "documents", "metadatas"], limit=, offset=)`` pages
  through the records in insertion order; updating a record does not move it.
- ``get(ids=...)`` returns the records in the store's order, not the order asked for, and
  silently leaves out ids that do not exist; so does ``update``, hence the checks first.
- Chroma keeps float32. In process its client hands out float64 copies; over HTTP, float64
  parsed from JSON decimals (not the same float64 values). Cast to float32, both give back
  exactly what is stored, so pages are float32.
- The space (``"l2"`` by default, ``"cosine"``, ``"ip"``) is fixed at creation and read from the
  collection's configuration (``configuration_json`` in 1.x, ``"hnsw:space"`` metadata before).
- In cosine space Chroma does not keep vectors bit for bit: it hands back a vector of the same
  norm (not the unit vector) within ~1e-7 relative of what was written, ~3e-8 for unit vectors.
  In l2 and ip spaces it keeps them exactly.
- LangChain's ``Chroma.update_documents`` re-embeds the text; this adapter calls
  ``collection.update(ids=, embeddings=)``, which changes the vectors only.
- Stale vectors in a Chroma folder shared by processes (measured, chromadb 1.5
  ``PersistentClient``): a process loads a collection's vectors the first time it reads the
  collection (any read: ``count()``, ``get()``, ``query()``) and keeps them as loaded until it
  writes to that collection itself. Writes by another process are invisible to it until then:
  ``get(include=["embeddings"])`` (by id or by page) and ``query`` hand back the vectors as they
  were when it first read (documents, metadata and ``count()`` are fresh: they are read from
  SQLite on every call; a record another process added is listed, but its embeddings raise
  "Error finding id"). Another ``PersistentClient`` or ``get_collection`` on the same path in
  that process shares the same stale view (chromadb keeps one system per path); after
  ``SharedSystemClient.clear_system_cache()`` a new client reads fresh (but that stops the
  user's clients too); the process's own next write to the collection brings its view up to
  date with every write before it. Nothing is lost on disk: writes go to one shared log, the
  last one wins. So whoever holds the store's lock reads fresh: the lock of the state folder
  (inside the Chroma folder, shared by every process on it) makes the adapter read through a
  private client of the folder, opened when the lock is taken (it loads what is on disk then),
  until the adapter's first write or the lock's release (:meth:`ChromaAdapter.refresh`);
  :meth:`ChromaAdapter.fresh_get` reads once through such a client.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import StoreError
from nudge_rag.state._folder import FolderBackend, StateLock
from nudge_rag.stores._base import (
    Metric,
    StoreIdentity,
    StorePage,
    VectorStoreAdapter,
    as_page_array,
    empty_page,
)

__all__ = ["ChromaAdapter", "chroma_metric"]

_SPACES: dict[str, Metric] = {"cosine": "cosine", "ip": "dot", "l2": "l2"}
_ID_CHUNK = 1000


def chroma_metric(collection: Any) -> Metric:
    """The space a Chroma collection ranks by, as ``"cosine"``, ``"dot"`` or ``"l2"``."""
    space: object = None
    config = getattr(collection, "configuration", None)
    if isinstance(config, dict):
        for key in ("hnsw", "spann"):
            sub = config.get(key)
            if isinstance(sub, dict) and sub.get("space"):
                space = sub["space"]
                break
    if space is None:
        meta = getattr(collection, "metadata", None) or {}
        space = meta.get("hnsw:space", "l2")
    space = getattr(space, "value", space)
    if space not in _SPACES:
        msg = (
            f"Chroma collection {collection.name!r} uses space {space!r}; "
            f"supported spaces: {sorted(_SPACES)}"
        )
        raise StoreError(msg)
    return _SPACES[str(space)]


class ChromaAdapter(VectorStoreAdapter):
    """A Chroma collection: ids, vectors, documents (the text) and metadata, in place.

    For LlamaIndex's ``ChromaVectorStore`` the document is the node's text and the metadata is
    the store's record as kept (including LlamaIndex's ``_node_content`` bookkeeping).

    Args:
        collection: A ``chromadb`` collection (local, persistent or HTTP client).
        name: Which store this is (``"llamaindex-chroma"``, ``"langchain-chroma"``, ``"chroma"``).
    """

    exact_search = False  # Chroma searches an HNSW graph

    def __init__(self, collection: Any, *, name: str = "chroma") -> None:
        self._col = collection
        self._private: tuple[Any, Any, Any] | None = None  # (system, collection, finalizer)
        self.name = name
        self.metric = chroma_metric(collection)
        self.normalizes_on_write = self.metric == "cosine"
        self._dim: int | None = None

    def identity(self) -> StoreIdentity:
        # The collection's own id: the same through every wrapper (raw chromadb, LlamaIndex,
        # LangChain), unique to this collection (a collection deleted and made again under the
        # same name is another store).
        return StoreIdentity(f"chroma:{self._col.id}", True)

    # -- where our state lives ----------------------------------------------------------------

    def _client_kind(self) -> tuple[str, Any]:
        """("http", settings), ("persistent", settings) or ("ephemeral", settings)."""
        server = getattr(self._col, "_client", None)
        settings = server.get_settings() if server is not None else None
        impl = str(getattr(settings, "chroma_api_impl", "") or "")
        if impl.endswith(("FastAPI", "AsyncFastAPI")):
            return "http", settings
        if settings is not None and settings.is_persistent and settings.persist_directory:
            return "persistent", settings
        return "ephemeral", settings

    def state_folder(self) -> Path | None:
        """The state folder inside the Chroma folder of a ``PersistentClient`` collection:
        ``<chroma path>/nudge_state/<collection name>`` (where the command line keeps it too;
        a copy of the Chroma folder carries its own), or None for a server or an in-memory
        client."""
        kind, settings = self._client_kind()
        if kind != "persistent":
            return None
        from nudge_rag.state._folder import STATE_FOLDER

        root = Path(str(settings.persist_directory)).resolve()
        return root / STATE_FOLDER / str(self._col.name)

    def state_backend(self, scope: str) -> Any:
        """A server (``HttpClient``): the ``nudge_rag_state`` collection beside this one
        (:class:`~nudge_rag.state._chroma.ChromaCompanion`); a ``PersistentClient``: the folder
        :meth:`state_folder`; an ``EphemeralClient``: None (the per-user folder)."""
        kind, _ = self._client_kind()
        if kind == "http":
            from nudge_rag.state._chroma import ChromaCompanion

            return ChromaCompanion(self._col, scope)
        folder = self.state_folder()
        if folder is None:
            return None
        # Not with_store: a copy keeps the collection id, so the identity check still holds,
        # and tells a collection made again under the same name from the one we fine-tuned.
        return _ChromaFolderState(folder, self)

    def _open_private(self) -> tuple[Any, Any]:
        """A client of this collection's folder of our own, not chromadb's shared one: it loads
        the folder as it is now."""
        from chromadb.api import ServerAPI
        from chromadb.api.models.Collection import Collection
        from chromadb.config import System

        _, settings = self._client_kind()
        system = System(settings)
        api = system.instance(ServerAPI)  # type: ignore[type-abstract]
        system.start()
        try:
            model = api.get_collection(
                str(self._col.name), tenant=self._col.tenant, database=self._col.database
            )
        except BaseException:
            system.stop()
            raise
        return system, Collection(client=api, model=model, embedding_function=None)

    @property
    def _reader(self) -> Any:
        return self._private[1] if self._private is not None else self._col

    def _close_private(self) -> None:
        held, self._private = self._private, None
        if held is not None:
            held[2]()  # stops the private system (once)

    def refresh(self) -> None:
        """Read what the store holds now, from here until this adapter's next write: for a
        ``PersistentClient``, reads go through a private client of the folder opened now (this
        process's own client may hand back vectors as they were before another process wrote,
        see the module docstring); the first write closes it (the write itself brings the
        process's client up to date). Call it right after taking the store's lock. Elsewhere
        a no-op."""
        self._close_private()
        if self._client_kind()[0] != "persistent":
            return
        system, col = self._open_private()
        self._private = (system, col, weakref.finalize(self, system.stop))

    def fresh_get(self, ids: Sequence[str]) -> StorePage:
        """Like :meth:`get`, read as the store holds them now: for a ``PersistentClient``,
        through a private client of the same folder opened for this read (this process's own
        client may hand back vectors as they were before another process wrote; see the module
        docstring); elsewhere the same as :meth:`get`."""
        if self._client_kind()[0] != "persistent":
            return self.get(ids)
        system, col = self._open_private()
        try:
            fresh = ChromaAdapter(col, name=self.name)
            fresh._dim = self._dim
            return fresh.get(ids)
        finally:
            system.stop()

    def count(self) -> int:
        return int(self._reader.count())

    def dim(self) -> int:
        if self._dim is None:
            got = self._reader.get(limit=1, include=["embeddings"])
            emb = got["embeddings"]
            if emb is None or len(emb) == 0:
                msg = (
                    f"the {self.name} collection {self._col.name!r} is empty, "
                    "so it has no vector width yet"
                )
                raise StoreError(msg)
            self._dim = len(emb[0])
        return self._dim

    def _include(self, with_documents: bool) -> list[str]:
        return ["embeddings", "documents", "metadatas"] if with_documents else ["embeddings"]

    def _to_page(self, got: Any, with_documents: bool) -> StorePage:
        ids = list(got["ids"])
        if not ids:
            return empty_page(self._dim or 0)
        emb = as_page_array(got["embeddings"], self.dim(), stored_as_float32=True)
        if with_documents:
            texts = list(got["documents"] or [None] * len(ids))
            metas = [dict(m) if m else {} for m in (got["metadatas"] or [None] * len(ids))]
        else:
            texts, metas = [None] * len(ids), [{} for _ in ids]
        return StorePage(ids, emb, texts, metas)

    def iter_pages(
        self, page_size: int = 1000, *, with_documents: bool = True
    ) -> Iterator[StorePage]:
        self._check_page_size(page_size)
        include = self._include(with_documents)
        offset = 0
        while True:
            got = self._reader.get(include=include, limit=page_size, offset=offset)
            page = self._to_page(got, with_documents)
            if page.ids:
                yield page
            if len(page.ids) < page_size:
                return
            offset += len(page.ids)

    def get(self, ids: Sequence[str]) -> StorePage:
        ids = list(ids)
        if not ids:
            return empty_page(self.dim() if self.count() else 0)
        wanted = list(dict.fromkeys(ids))
        rows: dict[str, tuple[np.ndarray, str | None, dict[str, Any]]] = {}
        for start in range(0, len(wanted), _ID_CHUNK):
            got = self._reader.get(
                ids=wanted[start : start + _ID_CHUNK], include=self._include(True)
            )
            page = self._to_page(got, True)
            for j, id_ in enumerate(page.ids):
                rows[id_] = (page.embeddings[j], page.texts[j], page.metadatas[j])
        missing = [i for i in wanted if i not in rows]
        if missing:
            self._raise_missing(missing)
        emb = np.stack([rows[i][0] for i in ids])
        return StorePage(ids, emb, [rows[i][1] for i in ids], [dict(rows[i][2]) for i in ids])

    def _missing(self, ids: list[str]) -> list[str]:
        found: set[str] = set()
        for start in range(0, len(ids), _ID_CHUNK):
            found.update(self._reader.get(ids=ids[start : start + _ID_CHUNK], include=[])["ids"])
        return [i for i in ids if i not in found]

    def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
        # This process's own write brings its client's view up to date with every write
        # before it (see the module docstring): from here on it reads fresh by itself.
        self._close_private()
        step = len(ids)
        max_batch = _max_batch_size(self._col)
        if max_batch:
            step = min(step, max_batch)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), step):
            self._col.update(ids=ids[start : start + step], embeddings=vecs[start : start + step])

    def _search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        n = self.count()
        if n == 0:
            return []
        got = self._reader.query(
            query_embeddings=[np.asarray(query, dtype=np.float32)],
            n_results=min(k, n),
            include=["distances"],
        )
        ids, dists = got["ids"][0], got["distances"][0]
        if self.metric == "l2":
            scores = [-float(d) for d in dists]
        else:  # cosine distance = 1 - cos; ip distance = 1 - dot
            scores = [1.0 - float(d) for d in dists]
        return list(zip(ids, scores, strict=True))


class _RefreshingLock(StateLock):
    """The state folder's lock; whoever holds it reads the collection as it is on disk now
    (:meth:`ChromaAdapter.refresh`), never through a view loaded before another process wrote."""

    def __init__(self, directory: Path, timeout: float | None, adapter: ChromaAdapter) -> None:
        super().__init__(directory, timeout)
        self._adapter = weakref.ref(adapter)

    def __enter__(self) -> _RefreshingLock:
        super().__enter__()
        ad = self._adapter()
        try:
            if ad is not None:
                ad.refresh()
        except BaseException:
            super().__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        ad = self._adapter()
        try:
            if ad is not None:
                ad._close_private()
        finally:
            super().__exit__(*exc)


class _ChromaFolderState(FolderBackend):
    """The state folder inside a Chroma folder, whose lock makes its adapter read fresh."""

    def __init__(self, directory: Path, adapter: ChromaAdapter) -> None:
        super().__init__(directory)
        self._adapter = adapter

    def lock(self, timeout: float | None = 0.0) -> StateLock:
        return _RefreshingLock(self.directory, timeout, self._adapter)


def _max_batch_size(collection: Any) -> int | None:
    client = getattr(collection, "_client", None)
    getter = getattr(client, "get_max_batch_size", None)
    if getter is None:
        return None
    try:
        return int(getter())
    except Exception:  # pragma: no cover - a client that cannot tell: no extra split
        return None
