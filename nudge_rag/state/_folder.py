"""The folder backend: a store's state as plain files (the format nudge_rag has always written).

::

    LOCK                   an OS file lock: one run per store at a time
    CURRENT                the name of the generation in force, switched by one atomic rename
    gen-000007/            manifest.json, ids.json, originals.npy, targets.npy, priors.npy, ...
    feedback.jsonl         the feedback log (see :mod:`nudge_rag.feedback`)

Used for the per-user folder, an explicit ``state_dir=``, and the folder that lives inside or
beside the files of a store saved to disk (so that a copy or a backup of those files carries its
own state).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nudge_rag._faults import checkpoint
from nudge_rag.errors import StateError, StoreBusyError
from nudge_rag.persist import atomic_write_bytes, fsync_dir
from nudge_rag.state._base import GEN_RE, StateBackend

__all__ = ["STATE_FOLDER", "FolderBackend", "StateLock"]

FEEDBACK_FILE = "feedback.jsonl"
#: The name of the folder we add inside (or beside) a store's files.
STATE_FOLDER = "nudge_state"


class StateLock:
    """An OS file lock on a state folder: one fine-tune or revert per store at a time.

    Args:
        directory: The store's state folder (created if missing).
        timeout: ``0`` fails at once if another run holds the lock; ``None`` waits for as long as
            it takes; a number waits up to that many seconds.

    Raises:
        StoreBusyError: Another process (or another finetuner in this one) holds the lock.
    """

    def __init__(self, directory: Path | str, timeout: float | None = 0.0) -> None:
        self.directory = Path(directory)
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delay = 0.01
        while True:
            if _try_lock(fd):
                break
            if deadline is not None and time.monotonic() >= deadline:
                holder = ""
                with contextlib.suppress(OSError):
                    holder = (self.directory / "LOCK.owner").read_text().strip()
                os.close(fd)
                msg = (
                    f"another fine-tune or revert of this store is running (lock {path}"
                    + (f", held by {holder}" if holder else "")
                    + "); wait for it, or pass lock_timeout=None to wait for it to finish"
                )
                raise StoreBusyError(msg)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        self._fd = fd
        with contextlib.suppress(OSError):
            (self.directory / "LOCK.owner").write_text(
                f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None


# Locks held by this process: flock is per open file description, so a second finetuner in the
# same process would get a second lock on the same file; fcntl-style (POSIX) locks would not
# even see it. Track paths too, so that two finetuners in one process exclude each other.
_HELD: set[tuple[int, int]] = set()


def _try_lock(fd: int) -> bool:
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    if key in _HELD:
        return False
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
    else:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
    _HELD.add(key)
    return True


def _unlock(fd: int) -> None:
    st = os.fstat(fd)
    _HELD.discard((st.st_dev, st.st_ino))
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_file(path: Path, data: bytes) -> None:
    """A new file inside a generation's temporary folder (made durable by fsync)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class FolderBackend(StateBackend):
    """A store's state in a folder of plain files (see the module docstring)."""

    kind = "folder"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.local_dir = Path(directory)
        self.where = str(self.local_dir)

    @property
    def directory(self) -> Path:
        d: Path = self.local_dir
        return d

    def lock(self, timeout: float | None = 0.0) -> StateLock:
        return StateLock(self.directory, timeout)

    # -- generations --------------------------------------------------------------------------
    def current(self) -> str | None:
        try:
            return (self.directory / "CURRENT").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            msg = f"cannot read {self.directory / 'CURRENT'} ({exc})"
            raise StateError(msg) from exc

    def generations(self) -> list[int]:
        d = self.directory
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = GEN_RE.match(p.name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def read(self, gen: str, name: str) -> bytes:
        try:
            return (self.directory / gen / name).read_bytes()
        except OSError as exc:
            msg = f"fine-tuning state {self.directory / gen}: {name} is missing ({exc})"
            raise StateError(msg) from exc

    def write_generation(self, gen: str, blobs: Mapping[str, bytes]) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{gen}.{os.getpid()}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for name, data in blobs.items():
            _write_file(tmp / name, data)
            if name != "manifest.json":
                checkpoint("journal.file")
        fsync_dir(tmp)
        os.rename(tmp, d / gen)
        fsync_dir(d)

    def switch(self, gen: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)  # the first step of a first commit
        atomic_write_bytes(self.directory / "CURRENT", (gen + "\n").encode("ascii"))

    def replace(self, gen: str, name: str, data: bytes) -> None:
        atomic_write_bytes(self.directory / gen / name, data)

    def drop(self, gen: str) -> None:
        shutil.rmtree(self.directory / gen, ignore_errors=True)

    def drop_partial(self) -> None:
        """Temporary folders of a generation that was never renamed into place (a killed run),
        and generations newer than CURRENT that were renamed but never made current."""
        d = self.directory
        if not d.is_dir():
            return
        current = None
        with contextlib.suppress(OSError):
            m = GEN_RE.match((d / "CURRENT").read_text(encoding="utf-8").strip())
            current = int(m.group(1)) if m else None
        for p in d.iterdir():
            if p.name.startswith(".gen-") and p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
            m = GEN_RE.match(p.name)
            if m and current is not None and int(m.group(1)) > current:
                shutil.rmtree(p, ignore_errors=True)

    def has_state(self) -> bool:
        d = self.directory
        return (d / "CURRENT").exists() or bool(self.generations()) or (d / FEEDBACK_FILE).exists()

    # -- feedback: a file, handled by FeedbackLog itself (O_APPEND, flock, compaction) --------
    @property
    def feedback_path(self) -> Path:
        return self.directory / FEEDBACK_FILE

    def feedback_append(self, line: str) -> None:  # pragma: no cover - FeedbackLog uses the file
        raise NotImplementedError

    def feedback_read(self, cursor: Any) -> tuple[list[str], Any, bool]:  # pragma: no cover
        raise NotImplementedError

    def feedback_rewrite(self, lines: Sequence[str]) -> None:  # pragma: no cover
        raise NotImplementedError
