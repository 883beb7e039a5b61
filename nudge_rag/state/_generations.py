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

import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import numpy as np

from nudge_rag._faults import checkpoint
from nudge_rag.errors import StateError
from nudge_rag.state._base import GEN_RE, NONE, StateBackend
from nudge_rag.state._folder import FolderBackend

__all__ = [
    "FinetuneState",
    "as_backend",
    "default_state_home",
    "state_dir_for",
    "vectors_match",
]

FORMAT = 2
_GEN = GEN_RE
_FILES = ("ids.json", "originals.npy", "targets.npy", "priors.npy")
_EXTRA = re.compile(r"^[a-z][a-z0-9_]*\.npy$")
_NONE = NONE  # what CURRENT says before the first generation


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
# The state
# ---------------------------------------------------------------------------------------------
@dataclass
class FinetuneState:
    """One generation of a store's fine-tuning state (see the module docstring).

    Attributes:
        backend: Where the state lives (a folder, a table in the store's database, ...).
        generation: The generation: its folder for a folder backend, else ``<where>/gen-NNNNNN``.
        manifest: Its manifest (identity, status, method, γ, counts, digests).
        ids: Journaled record ids, row ``i`` of each array below for ``ids[i]``.
        originals: ``(n, d)`` float64 original vectors.
        targets: ``(n, d)`` float64 vectors this generation writes.
        priors: ``(n, d)`` float64 vectors the records held when it was made.
    """

    backend: StateBackend
    generation: PurePath
    manifest: dict[str, Any]
    ids: list[str]
    originals: np.ndarray
    targets: np.ndarray
    priors: np.ndarray

    @property
    def directory(self) -> Path | str:
        """The state folder (a folder backend), else where the state lives, as text."""
        d = self.backend.local_dir
        return Path(d) if d is not None else self.backend.where

    @property
    def name(self) -> str:
        return self.generation.name

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
    def load(cls, place: str | os.PathLike[str] | StateBackend) -> FinetuneState | None:
        """The generation in force in ``place`` (a backend or a folder), or ``None``.

        Raises:
            StateError: Its files are missing, damaged (digest mismatch) or of another format.
        """
        be = as_backend(place)
        where = be.where
        d = be.local_dir
        if d is not None and (Path(d) / "manifest.json").exists() and be.current() is None:
            msg = (
                f"{d} holds a fine-tuning state of an older nudge_rag (format 1), which this "
                "version cannot verify; revert it with the version that wrote it, or move it away"
            )
            raise StateError(msg)
        name = be.current()
        if name is None:
            if be.generations():
                msg = (
                    f"CURRENT is missing in {where} but it holds state generations: the state is "
                    "damaged (CURRENT is written before the first generation, so it cannot be "
                    "missing after a crash); restore it from a backup, or name the generation "
                    "to use in CURRENT by hand"
                )
                raise StateError(msg)
            return None
        if name == _NONE:
            return None
        if not _GEN.match(name):
            msg = f"CURRENT in {where} names {name!r}, not a state generation: the state is damaged"
            raise StateError(msg)
        gen = _gen_path(be, name)
        try:
            manifest = json.loads(be.read(name, "manifest.json").decode("utf-8"))
        except (StateError, ValueError) as exc:
            msg = f"fine-tuning state {gen}: manifest.json is missing or damaged ({exc}); it cannot be used"
            raise StateError(msg) from exc
        try:
            blobs = be.read_all(name, _FILES)
        except StateError as exc:
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
        ids = json.loads(blobs["ids.json"])
        arrays = [
            np.load(io.BytesIO(blobs[f]), allow_pickle=False)
            for f in ("originals.npy", "targets.npy", "priors.npy")
        ]
        if not isinstance(ids, list) or any(a.shape[0] != len(ids) for a in arrays):
            msg = f"fine-tuning state {gen} is inconsistent ({len(ids)} ids)"
            raise StateError(msg)
        return cls(be, gen, manifest, [str(i) for i in ids], *arrays)

    # ------------------------------------------------------------------ writing
    @classmethod
    def commit(
        cls,
        place: str | os.PathLike[str] | StateBackend,
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

        Every blob is written durably (a folder: files fsynced in a temporary folder renamed into
        place; a table: one transaction), then ``CURRENT`` is switched. Older generations are
        removed afterwards. ``extra``: more arrays kept with the generation (``name.npy``: the
        query-side adaptor's weight), read back with :meth:`array`.
        """
        be = as_backend(place)
        if be.current() is None and not be.generations():
            # First generation: CURRENT exists from now on, so that a missing CURRENT beside
            # generations can only mean damage, never "no state yet".
            be.switch(_NONE)
        be.drop_partial()
        number = max(be.generations(), default=0) + 1
        name = f"gen-{number:06d}"
        arrays = {
            "originals.npy": np.ascontiguousarray(originals, dtype=np.float64),
            "targets.npy": np.ascontiguousarray(targets, dtype=np.float64),
            "priors.npy": np.ascontiguousarray(priors, dtype=np.float64),
        }
        blobs = {"ids.json": json.dumps(list(ids)).encode("utf-8")}
        blobs.update({f: _npy_bytes(a) for f, a in arrays.items()})
        for f, a in (extra or {}).items():
            if not _EXTRA.match(f) or f in _FILES:
                msg = f"extra state file name {f!r}: expected a new 'name.npy'"
                raise StateError(msg)
            blobs[f] = _npy_bytes(np.ascontiguousarray(a))
        man = {
            **manifest,
            "format": FORMAT,
            "generation": number,
            "status": status,
            "n_ids": len(ids),
            "sha256": {f: _sha(b) for f, b in blobs.items()},
            "updated": time.time(),
        }
        blobs["manifest.json"] = json.dumps(man, indent=2).encode("utf-8")
        be.write_generation(name, blobs)
        checkpoint("journal.switch")
        be.switch(name)
        checkpoint("journal.switched")
        for old in be.generations():
            if old < number:
                be.drop(f"gen-{old:06d}")
        return cls(
            be,
            _gen_path(be, name),
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
        want = (self.manifest.get("sha256") or {}).get(name)
        blob = self.backend.read(self.generation.name, name)
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
        self.backend.replace(
            self.generation.name,
            "manifest.json",
            json.dumps(self.manifest, indent=2).encode("utf-8"),
        )


def as_backend(place: str | os.PathLike[str] | StateBackend) -> StateBackend:
    """A backend as given, or the folder backend of a path."""
    return place if isinstance(place, StateBackend) else FolderBackend(place)


def _gen_path(be: StateBackend, name: str) -> PurePath:
    if be.local_dir is not None:
        return Path(be.local_dir) / name
    return PurePosixPath(be.where) / name
