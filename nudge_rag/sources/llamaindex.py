"""A LlamaIndex ``VectorStoreIndex`` persisted to a folder (``docstore.json``, ``index_store.json``,
``default__vector_store.json``), loaded with our embedder as its embedding model.

llama_index is imported when an index is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nudge_rag.errors import DatasetError, UnsupportedStoreError, require

__all__ = ["INDEX_FILES", "load_index"]

#: The files of a persisted LlamaIndex index, checked before anything is loaded.
INDEX_FILES = ("docstore.json", "index_store.json", "default__vector_store.json")


def load_index(path: Path, index_id: str | None, make_model: Callable[[], Any]) -> tuple[Any, Any]:
    """``(index, model)``: the index persisted in ``path`` (checked file by file first; the
    embedding model is made only then) and the embedding model it was loaded with.

    Raises:
        DependencyError: llama-index-core is not installed.
        DatasetError: A file is missing, a folder, or not JSON; or LlamaIndex cannot load it.
        UnsupportedStoreError: The index is not a ``VectorStoreIndex``.
    """
    require("llama_index.core", "llamaindex")
    for name in INDEX_FILES:
        f = path / name
        if not f.exists():
            msg = f"{str(path)!r} looks like a persisted LlamaIndex index but has no {name}"
            raise DatasetError(msg)
        if f.is_dir():
            msg = f"{str(f)!r} is a directory; expected LlamaIndex's {name} file"
            raise DatasetError(msg)
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            msg = f"{str(f)!r} cannot be read as JSON ({exc}); the index cannot be loaded"
            raise DatasetError(msg) from exc
    from llama_index.core import StorageContext, load_index_from_storage

    from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

    model = make_model()
    try:
        ctx = StorageContext.from_defaults(persist_dir=str(path))
        index = load_index_from_storage(
            ctx, index_id=index_id, embed_model=as_llamaindex_embedding(model)
        )
    except Exception as exc:
        msg = f"cannot load the LlamaIndex index in {str(path)!r}: {type(exc).__name__}: {exc}"
        raise DatasetError(msg) from exc
    if not getattr(index, "vector_store", None) or not hasattr(index, "as_retriever"):
        msg = f"the LlamaIndex index in {str(path)!r} is a {type(index).__name__}, not a VectorStoreIndex"
        raise UnsupportedStoreError(msg)
    return index, model
