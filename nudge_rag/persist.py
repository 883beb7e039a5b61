"""Crash-safe files: atomic writes, and crash-safe saves of the stores users keep on disk.

A save that is killed part-way (SIGKILL, the OOM killer, a power cut) must never leave a user's
file empty or truncated. The frameworks' own savers truncate and rewrite each file in place
(LlamaIndex ``StorageContext.persist``, LangChain ``FAISS.save_local`` and
``InMemoryVectorStore.dump``), so a crash during them loses the whole index. Here every file is
written beside its target first, made durable, then switched in with one ``os.replace``: at every
moment each file is either its whole old version or its whole new one.

* :func:`atomic_write_bytes` / :func:`atomic_write`: one file (temporary sibling, flush, fsync,
  ``os.replace``, fsync of the directory).
* :func:`save_store`: what the finetuner was given (a LlamaIndex ``VectorStoreIndex`` or
  ``StorageContext``, a bare LlamaIndex ``SimpleVectorStore`` / ``FaissVectorStore``, a LangChain
  ``FAISS`` or ``InMemoryVectorStore``). The framework writes everything into a fresh temporary
  folder on the same filesystem, every file is fsynced, then the files are moved over their
  counterparts one at a time, the old copy staying until its replacement is in place.

The files of one save are switched one after another, not all at once (the frameworks' loaders
read fixed file names, so there is no single rename that switches a whole folder): a crash between
two files leaves some new and some old files, each whole. When only vectors changed (what a
fine-tune writes), any such mix loads and holds every record, each with its old or new vector.

Temporary names start with ``.nudge-tmp-<pid>-``; what a killed save left behind is removed by
the next save in the same place (only when the process that made it is gone).

Importing this module imports the standard library only; frameworks are imported when a store of
theirs is saved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from nudge_rag._faults import checkpoint
from nudge_rag._util import framework_of
from nudge_rag.errors import ConfigError, StoreError, UnsupportedStoreError

__all__ = ["SAVABLE_STORES", "atomic_write", "atomic_write_bytes", "fsync_dir", "save_store"]

logger = logging.getLogger(__name__)

TMP_PREFIX = ".nudge-tmp-"

SAVABLE_STORES = (
    "LlamaIndex VectorStoreIndex (its storage context: docstore, index store, vector stores), "
    "LlamaIndex StorageContext, LlamaIndex SimpleVectorStore / FaissVectorStore / "
    "FaissMapVectorStore, LangChain FAISS (save_local), LangChain InMemoryVectorStore (dump)"
)

PathArg = str | os.PathLike[str]


# ---------------------------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------------------------
def fsync_dir(path: PathArg) -> None:
    """Make the entries of directory ``path`` (creations, renames, removals) durable.

    A no-op on Windows, where a directory cannot be opened for fsync (NTFS journals renames).
    """
    if os.name == "nt":  # pragma: no cover - not run on the CI platform
        return
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_token() -> str:
    return f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


def _pid_of(name: str, prefix: str) -> int | None:
    """The pid in a temporary name ``<prefix><pid>-<random>``, or None if it is not one."""
    if not name.startswith(prefix):
        return None
    pid, sep, _ = name[len(prefix) :].partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (True when it cannot be told: never remove a live save's files)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) is not a probe on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _remove_stale(folder: Path, prefix: str) -> None:
    """Remove temporaries named ``<prefix><pid>-...`` in ``folder`` whose process is gone."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        pid = _pid_of(p.name, prefix)
        if pid is None or _alive(pid):
            continue
        logger.info("removing %s, left by a save that did not finish (process %d)", p, pid)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _copy_mode(src: Path, dst: Path) -> None:
    """Give the new file ``dst`` the permission bits of the file ``src`` it replaces."""
    with contextlib.suppress(OSError):
        os.chmod(dst, stat.S_IMODE(os.stat(src).st_mode))


def atomic_write(path: PathArg, write: Callable[[IO[bytes]], object]) -> Path:
    """Replace the file ``path`` with what ``write(f)`` writes to a binary file object, atomically.

    ``write`` writes to a temporary sibling; it is flushed and fsynced, renamed over ``path``
    (``os.replace``), and the directory is fsynced. Readers, and whatever survives a crash, see
    the whole old file or the whole new one, never a mix or an empty file. The new file keeps the
    permission bits of the one it replaces. A temporary left by a killed write is removed the next
    time the same file is written.

    Example:
        >>> import numpy as np                                              # doctest: +SKIP
        >>> atomic_write("originals.npy", lambda f: np.save(f, arr, allow_pickle=False))  # doctest: +SKIP

    Args:
        path: The file to (re)write. Its folder must exist.
        write: Called once with the open temporary file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    dest = Path(path)
    folder = dest.parent
    prefix = f".{dest.name}{TMP_PREFIX}"
    _remove_stale(folder, prefix)
    tmp = folder / f".{dest.name}{_tmp_token()}"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if dest.exists():
            _copy_mode(dest, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(folder)
    return dest


def atomic_write_bytes(path: PathArg, data: bytes) -> Path:
    """Replace the file ``path`` with ``data`` atomically (see :func:`atomic_write`).

    Example:
        >>> atomic_write_bytes("manifest.json", b'{"status": "applied"}')  # doctest: +SKIP
        PosixPath('manifest.json')
    """
    return atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------------------------
# Whole stores
# ---------------------------------------------------------------------------------------------
def _saver(store: Any) -> tuple[str, bool, Callable[[Path, str], None]]:
    """``(what, is_file, write(tmp_folder, file_name))`` for ``store``.

    ``is_file``: ``persist_dir`` names a file (LangChain ``InMemoryVectorStore.dump``), not a
    folder.
    """
    if framework_of(store) == "llamaindex":
        from llama_index.core import StorageContext
        from llama_index.core.indices.base import BaseIndex

        if isinstance(store, BaseIndex):
            ctx = store.storage_context
            return (type(store).__name__, False, lambda d, _: ctx.persist(persist_dir=str(d)))
        if isinstance(store, StorageContext):
            return ("StorageContext", False, lambda d, _: store.persist(persist_dir=str(d)))
        from llama_index.core.vector_stores import SimpleVectorStore

        file_stores: tuple[Any, ...] = (SimpleVectorStore,)
        with contextlib.suppress(ImportError):
            from llama_index.vector_stores.faiss import FaissVectorStore

            file_stores += (FaissVectorStore,)  # FaissMapVectorStore subclasses it
        if isinstance(store, file_stores):
            from llama_index.core.vector_stores.simple import DEFAULT_VECTOR_STORE, NAMESPACE_SEP
            from llama_index.core.vector_stores.types import DEFAULT_PERSIST_FNAME

            # what StorageContext.persist writes, and from_persist_dir(persist_dir) reads
            fname = f"{DEFAULT_VECTOR_STORE}{NAMESPACE_SEP}{DEFAULT_PERSIST_FNAME}"
            return (
                type(store).__name__,
                False,
                lambda d, _: store.persist(persist_path=str(d / fname)),
            )
    if framework_of(store) == "langchain":
        name = type(store).__name__
        if hasattr(store, "save_local") and hasattr(store, "index_to_docstore_id"):
            return (name, False, lambda d, _: store.save_local(str(d)))
        from langchain_core.vectorstores import InMemoryVectorStore

        if isinstance(store, InMemoryVectorStore):
            return (name, True, lambda d, fname: store.dump(str(d / fname)))
    msg = (
        f"save_store cannot save a {type(store).__module__}.{type(store).__name__}: it saves a "
        f"{SAVABLE_STORES}. Stores that live in a database (Chroma, Qdrant) need no saving"
    )
    raise UnsupportedStoreError(msg)


def _files(folder: Path) -> Iterator[Path]:
    """Every regular file under ``folder``, in a stable order."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            yield Path(root) / f


def _sync_tree(folder: Path) -> list[Path]:
    """fsync every file under ``folder`` and every folder in it; return the files."""
    files = list(_files(folder))
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for root, _, _ in os.walk(folder, topdown=False):
        fsync_dir(root)
    return files


def save_store(store: Any, persist_dir: PathArg) -> list[Path]:
    """Save ``store`` to ``persist_dir`` so that a crash at any moment loses no file.

    The framework's own saver writes into a fresh temporary folder on the same filesystem
    (``<persist_dir>/.nudge-tmp-<pid>-<random>``; beside the file for a file target); every file
    is fsynced; each is then moved over its counterpart in ``persist_dir`` with ``os.replace``,
    one at a time; the folder is fsynced and the temporary folder removed. Every file in
    ``persist_dir`` is at all times either its whole old version or its whole new one; files the
    framework does not write are left alone. What a killed save left behind is removed by the
    next one. The result loads with the framework's own loader, as if its saver had written it.

    ===============================  ==========================  ==================================
    store                            ``persist_dir``              load it back with
    ===============================  ==========================  ==================================
    LlamaIndex ``VectorStoreIndex``  a folder                     ``load_index_from_storage``
    LlamaIndex ``StorageContext``    a folder                     ``StorageContext.from_defaults``
    LlamaIndex ``SimpleVectorStore`` a folder                     ``SimpleVectorStore.from_persist_dir``
    LlamaIndex ``FaissVectorStore``  a folder                     ``FaissVectorStore.from_persist_dir``
    LangChain ``FAISS``              a folder                     ``FAISS.load_local``
    LangChain ``InMemoryVectorStore`` a file (``dump(path)``)     ``InMemoryVectorStore.load``
    ===============================  ==========================  ==================================

    Example:
        >>> save_store(index, "storage")            # instead of index.storage_context.persist  # doctest: +SKIP
        [PosixPath('storage/default__vector_store.json'), PosixPath('storage/docstore.json'), ...]

    Args:
        store: What the finetuner was given (see the table).
        persist_dir: Where the framework would persist it (created if missing).

    Returns:
        The files written, in the order they were switched in.

    Raises:
        UnsupportedStoreError: ``store`` is of a kind this function cannot save.
        ConfigError: ``persist_dir`` is a file where a folder is needed, or the reverse.
        StoreError: The framework failed to write (nothing in ``persist_dir`` was changed), or
            moving a file into place failed (each file is still whole: old or new).
    """
    what, is_file, write = _saver(store)
    target = Path(persist_dir)
    if is_file:
        if target.is_dir():
            msg = f"persist_dir {str(target)!r} is a folder; a {what} is dumped to a file path"
            raise ConfigError(msg)
        folder, fname = target.parent, target.name
    else:
        if target.exists() and not target.is_dir():
            msg = f"persist_dir {str(target)!r} is a file; a {what} is saved to a folder"
            raise ConfigError(msg)
        folder, fname = target, ""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(folder.parent)
    _remove_stale(folder, TMP_PREFIX)
    tmp = folder / _tmp_token()
    tmp.mkdir()
    try:
        try:
            write(tmp, fname)
            files = _sync_tree(tmp)
        except Exception as exc:
            msg = (
                f"saving the {what} to {str(target)!r} failed while writing its temporary copy "
                f"({type(exc).__name__}: {exc}); no file in {str(folder)!r} was changed"
            )
            raise StoreError(msg) from exc
        checkpoint("persist.written")
        done: list[Path] = []
        for f in files:
            dest = folder / f.relative_to(tmp)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    _copy_mode(dest, f)
                os.replace(f, dest)
            except OSError as exc:
                msg = (
                    f"saving the {what} to {str(target)!r}: moving {dest.name} into place failed "
                    f"({exc}); {len(done)} of {len(files)} files are new, the others old (each "
                    "whole); save again"
                )
                raise StoreError(msg) from exc
            done.append(dest)
            checkpoint("persist.file")
        for d in sorted({p.parent for p in done}, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.debug("saved the %s to %s (%d files)", what, target, len(done))
    return done
