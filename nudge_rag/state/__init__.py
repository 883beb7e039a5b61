"""A store's fine-tuning state: journal generations, the lock and the feedback log, kept with
the store (see :mod:`nudge_rag.state._base` for the contract and the places).

Where the state of a store lives (:func:`nudge_rag.state.places.backend_for`):

* a store with a database or a server (PostgreSQL + pgvector, a Chroma or Milvus server): tables
  or a collection beside the user's, in that database or server, named ``nudge_rag_state...``;
* a store saved to files (a Chroma folder, ``persist_dir``, a Qdrant or LanceDB path, a Milvus
  Lite file): a folder ``nudge_state`` inside or beside those files;
* otherwise (an in-memory store, or an explicit ``state_dir=``): a folder of the per-user data
  folder, or the folder given.
"""

from __future__ import annotations

from nudge_rag.state._base import KVBackend, StateBackend
from nudge_rag.state._folder import FolderBackend, StateLock
from nudge_rag.state._generations import (
    FORMAT,
    FinetuneState,
    as_backend,
    default_state_home,
    state_dir_for,
    vectors_match,
)

__all__ = [
    "FORMAT",
    "FinetuneState",
    "FolderBackend",
    "KVBackend",
    "StateBackend",
    "StateLock",
    "as_backend",
    "default_state_home",
    "state_dir_for",
    "vectors_match",
]
