"""Fine-tuning state on disk: per record, the original vector and what we wrote, in generations.

A state folder belongs to one store (its :class:`~nudge_rag.stores.StoreIdentity`) and holds
plain files only (no pickle)::

    LOCK                   an OS file lock: one run per store at a time
    CURRENT                the name of the generation in force, switched by one atomic rename
    gen-000007/
        manifest.json      identity, status, method, γ, counts, sha256 of every file below
        ids.json           the journaled record ids, in row order
        originals.npy      each record's original vector (float64: lossless for float32)
        targets.npy        the vector this generation writes (the original, to restore one)
        priors.npy         what the record held when this generation was made (ours or original)

A generation is written beside the one in force (a temporary folder, every file fsynced),
renamed into place, and only then made current by replacing ``CURRENT``; a crash at any point
leaves either the old or the new generation in force, never a mix. Its files are checked
against the manifest's digests on every read: a damaged state is refused, not guessed at.

Per record, the store's current vector tells whose it is: equal to the target, the prior or
the original → ours (restore it on revert, start from the original on the next fine-tune);
anything else → the user changed it since (re-embedded, edited): it is theirs, left alone,
adopted as the new original and reported. Status goes ``writing`` (the store may hold a mix of
priors, targets and originals) → ``applied`` → ``reverted``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag._faults import checkpoint
from nudge_rag.errors import StateError, StoreBusyError
from nudge_rag.persist import atomic_write_bytes, fsync_dir

__all__ = [
    "FinetuneState",
    "StateLock",
    "default_state_home",
    "state_dir_for",
    "vectors_match",
]

FORMAT = 2
_GEN = re.compile(r"^gen-(\d{6,})$")
_FILES = ("ids.json", "originals.npy", "targets.npy", "priors.npy")
_EXTRA = re.compile(r"^[a-z][a-z0-9_]*\.npy$")
_NONE = "none"  # what CURRENT says before the first generation


# ---------------------------------------------------------------------------------------------
# Where states live
# ---------------------------------------------------------------------------------------------
def default_state_home() -> Path:
    """The per-user folder that holds one state folder per store.

    ``$NUDGE_RAG_HOME/state`` when that is set; otherwise the platform's per-user data folder
    (``$XDG_DATA_HOME/nudge_rag/state``, by default ``~/.local/share/nudge_rag/state`` on Linux;
    ``~/Library/Application Support/nudge_rag/state`` on macOS; ``%LOCALAPPDATA%\\nudge_rag\\state``
    on Windows). It never depends on the working directory.
    """
    env = os.environ.get("NUDGE_RAG_HOME")
    if env:
        return Path(env).expanduser() / "state"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "nudge_rag" / "state"


def state_dir_for(identity_key: str) -> Path:
    """The default state folder of the store with this identity key (readable name + digest)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", identity_key).strip("-.")[:48]
    digest = hashlib.sha256(identity_key.encode("utf-8")).hexdigest()[:16]
    return default_state_home() / f"{readable}-{digest}"


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _write_file(path: Path, data: bytes) -> None:
    """A new file inside a generation's temporary folder (made durable by fsync)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float64), allow_pickle=False)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vectors_match(current: np.ndarray, expected: np.ndarray, *, tol: float = 0.0) -> np.ndarray:
    """Row-wise: is ``current[i]`` (as read from the store) the vector ``expected[i]``?

    ``tol == 0``: exact, after casting ``expected`` to the dtype the store hands out (a float32
    store holds exactly the float32 value of what was written). ``tol > 0`` (stores that
    renormalise what is written): the unit directions agree within ``tol`` per component.
    """
    cur = np.asarray(current)
    exp = np.asarray(expected)
    if cur.shape != exp.shape:
        msg = f"vectors_match: shapes differ {cur.shape} vs {exp.shape}"
        raise ValueError(msg)
    if cur.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if tol == 0.0:
        dtype = cur.dtype if np.issubdtype(cur.dtype, np.floating) else np.float64
        same: np.ndarray = np.all(exp.astype(dtype) == cur, axis=1)
        return same
    c = cur.astype(np.float64)
    e = exp.astype(np.float64)
    cn = np.linalg.norm(c, axis=1, keepdims=True)
    en = np.linalg.norm(e, axis=1, keepdims=True)
    c = np.divide(c, cn, out=np.zeros_like(c), where=cn > 0)
    e = np.divide(e, en, out=np.zeros_like(e), where=en > 0)
    close: np.ndarray = np.all(np.abs(c - e) <= tol, axis=1)
    return close


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------
class StateLock:
    """An OS file lock on a state folder: one fine-tune or revert per store at a time.

    Args:
        directory: The store's state folder (created if missing).
        timeout: ``0`` fails at once if another run holds the lock; ``None`` waits for as long as
            it takes; a number waits up to that many seconds.

    Raises:
        StoreBusyError: Another process (or another finetuner in this one) holds the lock.
    """

    def __init__(self, directory: Path, timeout: float | None = 0.0) -> None:
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


# ---------------------------------------------------------------------------------------------
# The state
# ---------------------------------------------------------------------------------------------
@dataclass
class FinetuneState:
    """One generation of a store's fine-tuning state (see the module docstring).

    Attributes:
        directory: The store's state folder.
        generation: The generation's folder (``directory / "gen-NNNNNN"``).
        manifest: Its manifest (identity, status, method, γ, counts, digests).
        ids: Journaled record ids, row ``i`` of each array below for ``ids[i]``.
        originals: ``(n, d)`` float64 original vectors.
        targets: ``(n, d)`` float64 vectors this generation writes.
        priors: ``(n, d)`` float64 vectors the records held when it was made.
    """

    directory: Path
    generation: Path
    manifest: dict[str, Any]
    ids: list[str]
    originals: np.ndarray
    targets: np.ndarray
    priors: np.ndarray

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", ""))

    @property
    def active(self) -> bool:
        """True when the store may hold vectors we wrote (applied, or a write that did not finish)."""
        return self.status in ("writing", "applied")

    @property
    def identity(self) -> str:
        return str(self.manifest.get("identity", ""))

    def row_of(self) -> dict[str, int]:
        return {i: r for r, i in enumerate(self.ids)}

    def ours(self, rows: np.ndarray, current: np.ndarray, tol: float) -> np.ndarray:
        """For journaled ``rows`` read back as ``current``: is each vector one we wrote or the
        original (True), rather than one the user set since (False)?"""
        rows = np.asarray(rows, dtype=np.int64)
        match: np.ndarray = (
            vectors_match(current, self.targets[rows], tol=tol)
            | vectors_match(current, self.priors[rows], tol=tol)
            | vectors_match(current, self.originals[rows], tol=tol)
        )
        return match

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FinetuneState | None:
        """The generation in force in ``directory``, or ``None`` when there is none.

        Raises:
            StateError: Its files are missing, damaged (digest mismatch) or of another format.
        """
        d = Path(directory)
        if (d / "manifest.json").exists() and not (d / "CURRENT").exists():
            msg = (
                f"{d} holds a fine-tuning state of an older nudge_rag (format 1), which this "
                "version cannot verify; revert it with the version that wrote it, or move it away"
            )
            raise StateError(msg)
        try:
            name = (d / "CURRENT").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            if any(True for _ in _generations(d)) if d.is_dir() else False:
                msg = (
                    f"{d / 'CURRENT'} is missing but {d} holds state generations: the state is "
                    "damaged (CURRENT is written before the first generation, so it cannot be "
                    "missing after a crash); restore it from a backup, or name the generation "
                    "to use in a file CURRENT by hand"
                )
                raise StateError(msg) from None
            return None
        except OSError as exc:
            msg = f"cannot read {d / 'CURRENT'} ({exc})"
            raise StateError(msg) from exc
        if name == _NONE:
            return None
        if not _GEN.match(name):
            msg = f"{d / 'CURRENT'} names {name!r}, not a state generation: the state is damaged"
            raise StateError(msg)
        gen = d / name
        try:
            manifest = json.loads((gen / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            msg = f"fine-tuning state {gen}: manifest.json is missing or damaged ({exc}); it cannot be used"
            raise StateError(msg) from exc
        try:
            blobs = {f: (gen / f).read_bytes() for f in _FILES}
        except OSError as exc:
            msg = f"fine-tuning state {gen} is incomplete ({exc}); it cannot be used"
            raise StateError(msg) from exc
        if manifest.get("format") != FORMAT:
            msg = f"fine-tuning state {gen} has format {manifest.get('format')!r}; this nudge_rag reads format {FORMAT}"
            raise StateError(msg)
        digests = manifest.get("sha256") or {}
        bad = [f for f in _FILES if digests.get(f) != _sha(blobs[f])]
        if bad:
            msg = f"fine-tuning state {gen} is damaged: {', '.join(bad)} do not match the digests in its manifest"
            raise StateError(msg)
        import io

        ids = json.loads(blobs["ids.json"])
        arrays = [
            np.load(io.BytesIO(blobs[f]), allow_pickle=False)
            for f in ("originals.npy", "targets.npy", "priors.npy")
        ]
        if not isinstance(ids, list) or any(a.shape[0] != len(ids) for a in arrays):
            msg = f"fine-tuning state {gen} is inconsistent ({len(ids)} ids)"
            raise StateError(msg)
        return cls(d, gen, manifest, [str(i) for i in ids], *arrays)

    # ------------------------------------------------------------------ writing
    @classmethod
    def commit(
        cls,
        directory: str | os.PathLike[str],
        *,
        ids: list[str],
        originals: np.ndarray,
        targets: np.ndarray,
        priors: np.ndarray,
        manifest: dict[str, Any],
        status: str = "writing",
        extra: dict[str, np.ndarray] | None = None,
    ) -> FinetuneState:
        """Write a new generation beside the one in force and switch to it atomically.

        Every file is written and fsynced in a temporary folder, the folder is renamed into
        place, then ``CURRENT`` is replaced. Older generations are removed afterwards.
        ``extra``: more arrays kept with the generation (``name.npy``: the query-side adaptor's
        weight), read back with :meth:`array`.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "CURRENT").exists() and not any(True for _ in _generations(d)):
            # First generation: CURRENT exists from now on, so that a missing CURRENT beside
            # generations can only mean damage, never "no state yet".
            atomic_write_bytes(d / "CURRENT", (_NONE + "\n").encode("ascii"))
        _remove_stale(d)
        number = _last_generation(d) + 1
        name = f"gen-{number:06d}"
        tmp = d / f".{name}.{os.getpid()}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        arrays = {
            "originals.npy": np.ascontiguousarray(originals, dtype=np.float64),
            "targets.npy": np.ascontiguousarray(targets, dtype=np.float64),
            "priors.npy": np.ascontiguousarray(priors, dtype=np.float64),
        }
        blobs = {"ids.json": json.dumps(list(ids)).encode("utf-8")}
        blobs.update({f: _npy_bytes(a) for f, a in arrays.items()})
        for f in _FILES:
            _write_file(tmp / f, blobs[f])
            checkpoint("journal.file")
        for f, a in (extra or {}).items():
            if not _EXTRA.match(f) or f in _FILES:
                msg = f"extra state file name {f!r}: expected a new 'name.npy'"
                raise StateError(msg)
            blobs[f] = _npy_bytes(np.ascontiguousarray(a))
            _write_file(tmp / f, blobs[f])
        man = {
            **manifest,
            "format": FORMAT,
            "generation": number,
            "status": status,
            "n_ids": len(ids),
            "sha256": {f: _sha(b) for f, b in blobs.items()},
            "updated": time.time(),
        }
        _write_file(tmp / "manifest.json", json.dumps(man, indent=2).encode("utf-8"))
        fsync_dir(tmp)
        os.rename(tmp, d / name)
        fsync_dir(d)
        checkpoint("journal.switch")
        atomic_write_bytes(d / "CURRENT", (name + "\n").encode("ascii"))
        checkpoint("journal.switched")
        for old in d.iterdir():
            m = _GEN.match(old.name)
            if m and int(m.group(1)) < number:
                shutil.rmtree(old, ignore_errors=True)
        return cls(
            d,
            d / name,
            man,
            list(ids),
            arrays["originals.npy"],
            arrays["targets.npy"],
            arrays["priors.npy"],
        )

    def has(self, name: str) -> bool:
        """Whether this generation keeps the extra array ``name`` (see :meth:`commit`)."""
        return name not in _FILES and name in (self.manifest.get("sha256") or {})

    def array(self, name: str) -> np.ndarray:
        """An extra array of this generation, checked against its digest.

        Raises:
            StateError: It is missing or damaged.
        """
        import io

        want = (self.manifest.get("sha256") or {}).get(name)
        try:
            blob = (self.generation / name).read_bytes()
        except OSError as exc:
            msg = f"fine-tuning state {self.generation}: {name} is missing ({exc})"
            raise StateError(msg) from exc
        if want is None or _sha(blob) != want:
            msg = (
                f"fine-tuning state {self.generation} is damaged: {name} does not match its digest"
            )
            raise StateError(msg)
        out: np.ndarray = np.load(io.BytesIO(blob), allow_pickle=False)
        return out

    def mark(self, status: str, **extra: Any) -> None:
        """Change this generation's status (one atomic replace of its manifest)."""
        checkpoint("journal.mark")
        self.manifest = {**self.manifest, **extra, "status": status, "updated": time.time()}
        atomic_write_bytes(
            self.generation / "manifest.json",
            json.dumps(self.manifest, indent=2).encode("utf-8"),
        )


def _generations(d: Path) -> Iterator[int]:
    for p in d.iterdir():
        m = _GEN.match(p.name)
        if m:
            yield int(m.group(1))


def _last_generation(d: Path) -> int:
    return max(_generations(d), default=0)


def _remove_stale(d: Path) -> None:
    """Temporary folders of a generation that was never renamed into place (a killed run), and
    generations newer than CURRENT that were renamed but never made current."""
    current = None
    with contextlib.suppress(OSError):
        m = _GEN.match((d / "CURRENT").read_text(encoding="utf-8").strip())
        current = int(m.group(1)) if m else None
    for p in d.iterdir():
        if p.name.startswith(".gen-") and p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True)
        m = _GEN.match(p.name)
        if m and current is not None and int(m.group(1)) > current:
            shutil.rmtree(p, ignore_errors=True)
