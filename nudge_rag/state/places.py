"""Which place keeps a store's state, and moving states out of the per-user folder.

:func:`backend_for` decides, in this order:

1. ``state_dir=`` given: that folder (and a store that already keeps a state of ours in a place
   of its own is refused, so that two places never hold two states of one store);
2. ``persist_dir=`` given (a store saved to files by the framework): the folder
   ``nudge_state`` inside it (where the command line keeps it too; ``<file>.nudge_state``
   beside a single file), so that a copy or a backup of those files carries its own state;
3. the store's own place (:meth:`~nudge_rag.stores.VectorStoreAdapter.state_backend`): a table in
   its PostgreSQL database, a companion collection on its server, a folder inside its files;
4. otherwise the per-user folder (a store that lives in memory only).

A state found in the per-user folder where an earlier version kept it is moved to the new place
on first use (its generation in force and its feedback log are copied, checked, switched in; the
old folder is renamed ``<name>.moved`` with a note saying where it went).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from nudge_rag.errors import StateError
from nudge_rag.state._base import NONE, StateBackend
from nudge_rag.state._folder import FEEDBACK_FILE, STATE_FOLDER, FolderBackend, StateLock
from nudge_rag.state._generations import default_state_home, state_dir_for
from nudge_rag.stores import StoreIdentity

__all__ = [
    "STATE_FOLDER",
    "backend_for",
    "migrate_folder",
    "persist_state_folder",
    "user_state_dir",
]

logger = logging.getLogger(__name__)


def persist_state_folder(persist_dir: str | os.PathLike[str]) -> Path:
    """The state folder of a store saved at ``persist_dir``: inside a folder, beside a file."""
    p = Path(persist_dir).expanduser()
    if p.is_file() or (not p.exists() and p.suffix):
        return p.with_name(p.name + "." + STATE_FOLDER)
    return p / STATE_FOLDER


def user_state_dir(identity: StoreIdentity, state_dir: str | os.PathLike[str] | None) -> Path:
    """The folder of a store in the per-user data folder (``state_dir`` if given)."""
    if state_dir is not None:
        return Path(state_dir).expanduser()
    if identity.durable:
        return state_dir_for(identity.key)
    # A store that dies with this process: its state has no use after it, so it goes to a
    # temporary folder rather than the user's data folder.
    home = (
        default_state_home().parent
        if os.environ.get("NUDGE_RAG_HOME")
        else Path(tempfile.gettempdir()) / f"nudge_rag-{_user()}"
    )
    return home / "process" / state_dir_for(identity.key).name


def _user() -> str:
    try:
        return str(os.getuid())
    except AttributeError:  # pragma: no cover - Windows
        return os.environ.get("USERNAME", "user")


def backend_for(
    adapter: Any,
    identity: StoreIdentity,
    *,
    state_dir: str | os.PathLike[str] | None,
    persist_dir: str | os.PathLike[str] | None,
    legacy: Path,
    lock_timeout: float | None = 0.0,
) -> StateBackend:
    """The place of this store's state (see the module docstring)."""
    own: StateBackend | None = None
    if state_dir is not None or persist_dir is None:  # the guard below, or the place itself
        own = adapter.state_backend(identity.key)
    if state_dir is not None:
        chosen: StateBackend = FolderBackend(Path(state_dir).expanduser())
        if own is not None and _same_folder(own, chosen):
            # The store's own place, named (the command line names a Chroma folder's): that
            # place, with its own lock (a Chroma folder's makes whoever holds it read fresh).
            return own
        if own is not None and own.current() not in (None, NONE):
            msg = (
                f"this {adapter.name} store keeps a fine-tuning state of ours in {own.where}, "
                f"and state_dir={str(state_dir)!r} names another place: two states of one store "
                "would each take the other's vectors for originals. Drop state_dir= (the state "
                "in the store is used), or revert() without it first"
            )
            raise StateError(msg)
        return chosen
    if persist_dir is not None:
        chosen = FolderBackend(persist_state_folder(persist_dir))
        chosen.with_store = True
    elif own is not None:
        chosen = own
    else:
        return FolderBackend(legacy)
    if chosen.where != str(legacy) and legacy.is_dir() and chosen.current() is None:
        migrate_folder(legacy, chosen, lock_timeout)
    return chosen


def _same_folder(a: StateBackend, b: StateBackend) -> bool:
    if a.local_dir is None or b.local_dir is None:
        return False
    return bool(os.path.realpath(a.local_dir) == os.path.realpath(b.local_dir))


def migrate_folder(old: Path, new: StateBackend, lock_timeout: float | None = 0.0) -> bool:
    """Move the state kept in folder ``old`` (an earlier version's per-user folder) to ``new``.

    Under both locks: the feedback log's lines are appended to the new place, then the
    generation in force is copied blob by blob, read back and checked against its digests,
    and only then switched in; the old folder is renamed ``<name>.moved`` last, so that until
    the switch the new place holds no state and the next run moves it again (feedback lines
    copied twice collapse into one entry). This order is not yet covered by the fault-injection
    suite. Returns whether anything was moved.
    """
    from nudge_rag.state._generations import FinetuneState

    src = FolderBackend(old)
    if not src.has_state():
        return False
    with StateLock(old, lock_timeout), new.lock(lock_timeout):
        if new.current() is not None or not old.is_dir():
            return False  # another process moved it meanwhile
        state = FinetuneState.load(src)  # checked against its digests
        fb = old / FEEDBACK_FILE
        if fb.exists():
            _copy_feedback(fb, new)
        if state is not None:
            names = [*(state.manifest.get("sha256") or {}), "manifest.json"]
            blobs = src.read_all(state.name, names)
            new.write_generation(state.name, blobs)
            new.switch(state.name)
            check = FinetuneState.load(new)
            if check is None or check.ids != state.ids:
                msg = f"moving the fine-tuning state from {old} to {new.where} did not read back"
                raise StateError(msg)
        else:
            new.switch(NONE)
        moved = old.with_name(old.name + ".moved")
        if moved.exists():
            moved = old.with_name(f"{old.name}.moved-{int(time.time())}")
        note = (
            f"This fine-tuning state was moved to {new.where} on {time.ctime()}: nudge_rag now "
            "keeps a store's state with the store. This folder is no longer read; delete it "
            "when you no longer need it.\n"
        )
        (old / "MOVED.txt").write_text(note, encoding="utf-8")
    os.rename(old, moved)
    logger.warning("moved the fine-tuning state of this store from %s to %s", old, new.where)
    return True


def _copy_feedback(path: Path, new: StateBackend) -> None:
    if isinstance(new, FolderBackend):
        dest = new.feedback_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src, open(dest, "ab") as out:
            data = src.read()
            end = data.rfind(b"\n") + 1
            out.write(data[:end])
            out.flush()
            os.fsync(out.fileno())
        return
    data = path.read_bytes()
    for raw in data[: data.rfind(b"\n") + 1].splitlines():
        if raw.strip():
            new.feedback_append(raw.decode("utf-8"))
