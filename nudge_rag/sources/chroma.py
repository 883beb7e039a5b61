"""Chroma directories: open a collection, and build one from document chunks (embedded once,
inner-product space) or check that an existing one holds the same chunks.

chromadb is imported when a directory is opened.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path
from typing import Any

from nudge_rag.errors import ConfigError, DatasetError, NudgeError, require
from nudge_rag.sources.documents import shell_path

__all__ = [
    "build_collection",
    "chroma_client",
    "collection_name",
    "collection_names",
    "open_collection",
    "several_collections",
]

logger = logging.getLogger(__name__)


def collection_name(name: str) -> str:
    """A valid Chroma collection name (3-512 of [A-Za-z0-9._-], alphanumeric at both ends)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:200]
    if len(s) < 3:
        s = f"docs_{s}" if s else "documents"
    return s


def chroma_client(path: Path) -> Any:
    """A persistent client of the Chroma directory ``path``."""
    chromadb = require("chromadb", "chroma")
    # Absolute: chromadb shares one client system per path string within a process.
    return chromadb.PersistentClient(path=str(path.resolve()))  # type: ignore[attr-defined]


def collection_names(client: Any) -> list[str]:
    """The names of the client's collections, sorted."""
    return sorted(getattr(c, "name", c) for c in client.list_collections())


def open_collection(path: Path, collection: str | None) -> tuple[Any, str]:
    """``(collection, its name)`` in the Chroma directory ``path`` (its only one by default).

    Raises:
        DatasetError: The directory cannot be opened, or the collection holds no record.
        ConfigError: No collection named, and the directory holds several (or none); or the
            named one is not there.
    """
    try:
        client = chroma_client(path)
        names = collection_names(client)
    except NudgeError:
        raise
    except Exception as exc:
        msg = f"cannot open the Chroma directory {str(path)!r}: {type(exc).__name__}: {exc}"
        raise DatasetError(msg) from exc
    if collection is None:
        if len(names) != 1:
            msg = (
                f"the Chroma directory {str(path)!r} holds {len(names)} collections "
                f"({', '.join(names) or 'none'}); choose one with --collection NAME"
            )
            raise ConfigError(msg)
        collection = names[0]
    elif collection not in names:
        msg = (
            f"--collection {collection!r} is not in the Chroma directory {str(path)!r} "
            f"(it holds: {', '.join(names) or 'no collection'})"
        )
        raise ConfigError(msg)
    col = client.get_collection(collection)
    if col.count() == 0:
        msg = (
            f"empty corpus: the Chroma collection {collection!r} in {str(path)!r} holds no records"
        )
        raise DatasetError(msg)
    return col, collection


def build_collection(
    store: Path, name: str, chunks: dict[str, str], model: Any, *, source: Path
) -> Any:
    """The collection ``name`` of the Chroma directory ``store`` holding ``chunks``: built
    (embedded with ``model.embed_documents``, inner-product space) when missing, reused when it
    holds exactly these chunks.

    Raises:
        ConfigError: The collection exists but was built from other chunks (the message says
            how to build another one, or fine-tune the stored one as it is).
    """
    client = chroma_client(store)
    if name in collection_names(client):
        col = client.get_collection(name)
        got = col.get(include=["documents"])
        stored = dict(zip(got["ids"], got["documents"] or [], strict=False))
        if stored != chunks:
            changed = sum(1 for k, v in chunks.items() if stored.get(k) != v)
            as_is = f"nudge-rag finetune {shell_path(store)}"
            if len(collection_names(client)) > 1:
                as_is += f" --collection {shlex.quote(name)}"
            msg = (
                f"the store {str(store)!r} already holds a collection {name!r} built from other "
                f"documents ({len(stored)} stored chunks; {changed} of the folder's "
                f"{len(chunks)} chunks are new or changed; --chunk-size changes them too). To "
                "build a collection for these documents, pass another --store or --collection; "
                f"to fine-tune the stored collection as it is: {as_is}"
            )
            raise ConfigError(msg)
        logger.info("reusing collection %r in %s (%d chunks)", name, store, len(chunks))
        return col
    ids, texts = list(chunks), list(chunks.values())
    logger.info("embedding %d chunks of %s into %s (collection %r)", len(ids), source, store, name)
    vecs = model.embed_documents(texts)
    col = client.create_collection(name, configuration={"hnsw": {"space": "ip"}})
    batch = max(1, min(int(client.get_max_batch_size()), 1000))
    for s in range(0, len(ids), batch):
        col.add(
            ids=ids[s : s + batch],
            embeddings=[list(map(float, v)) for v in vecs[s : s + batch]],
            documents=texts[s : s + batch],
            metadatas=[{"source": i.rsplit("#", 1)[0]} for i in ids[s : s + batch]],
        )
    return col


def several_collections(store: Path) -> bool:
    """Whether the Chroma directory ``store`` holds more than one collection (True when it
    cannot be told: naming the collection is never wrong)."""
    try:
        return len(collection_names(chroma_client(store))) > 1
    except Exception:
        return True
