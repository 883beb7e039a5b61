"""Fine-tuning state on disk: the originals of every record NUDGE moved, and a write-back journal.

A state folder holds plain files only (no pickle)::

    manifest.json   store, fingerprint, method, γ, config, status, counts
    ids.json        the ids whose original vectors are kept, in row order
    originals.npy   their vectors as first read from the store (float64, lossless for float32)
    targets.npy     what the last write-back set out to write for the same ids

Status goes ``writing`` (journal open: the store may hold a mix of originals and targets) →
``applied`` (every target written) → ``reverted`` (every original written back). With the
originals kept before anything is written, a failure at any point leaves the store restorable.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import StateError

__all__ = ["FinetuneState"]

FORMAT = 1


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr, allow_pickle=False)
    os.replace(tmp, path)


@dataclass
class FinetuneState:
    """The originals and journal of one store's fine-tuning."""

    directory: Path
    manifest: dict[str, Any]
    ids: list[str]
    originals: np.ndarray
    targets: np.ndarray

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", ""))

    @property
    def active(self) -> bool:
        """True when the store may hold moved vectors (applied, or a write that did not finish)."""
        return self.status in ("writing", "applied")

    def original_map(self) -> dict[str, int]:
        return {i: r for r, i in enumerate(self.ids)}

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], fingerprint: str | None = None
    ) -> FinetuneState | None:
        """The state in ``directory``, or ``None`` when there is none.

        Raises:
            StateError: The files are incomplete or corrupt, or belong to another store.
        """
        d = Path(directory)
        mpath = d / "manifest.json"
        if not mpath.exists():
            return None
        try:
            manifest = json.loads(mpath.read_text())
            ids = json.loads((d / "ids.json").read_text())
            originals = np.load(d / "originals.npy", allow_pickle=False)
            targets = np.load(d / "targets.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            msg = f"fine-tuning state in {d} is incomplete or corrupt ({exc}); it cannot be used"
            raise StateError(msg) from exc
        if manifest.get("format") != FORMAT:
            msg = f"fine-tuning state in {d} has format {manifest.get('format')!r}; this nudge_rag reads format {FORMAT}"
            raise StateError(msg)
        if (
            not isinstance(ids, list)
            or originals.shape[0] != len(ids)
            or targets.shape != originals.shape
        ):
            msg = f"fine-tuning state in {d} is inconsistent: {len(ids)} ids, originals {originals.shape}, targets {targets.shape}"
            raise StateError(msg)
        if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
            msg = (
                f"fine-tuning state in {d} belongs to another store (fingerprint "
                f"{manifest.get('fingerprint')!r}, this store {fingerprint!r}); pass another state_dir"
            )
            raise StateError(msg)
        return cls(d, manifest, [str(i) for i in ids], originals, targets)

    # ------------------------------------------------------------------ writing
    @classmethod
    def begin(
        cls,
        directory: str | os.PathLike[str],
        *,
        ids: list[str],
        originals: np.ndarray,
        targets: np.ndarray,
        manifest: dict[str, Any],
    ) -> FinetuneState:
        """Open the journal: originals and targets reach the disk before the store is touched."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        originals = np.ascontiguousarray(originals, dtype=np.float64)
        targets = np.ascontiguousarray(targets, dtype=np.float64)
        man = {
            **manifest,
            "format": FORMAT,
            "status": "writing",
            "n_ids": len(ids),
            "updated": time.time(),
        }
        # The manifest goes last: until it says "writing", an older state stays authoritative.
        _save_npy(d / "originals.npy", originals)
        _save_npy(d / "targets.npy", targets)
        _atomic_write(d / "ids.json", json.dumps(ids).encode())
        _atomic_write(d / "manifest.json", json.dumps(man, indent=2).encode())
        return cls(d, man, list(ids), originals, targets)

    def mark(self, status: str, **extra: Any) -> None:
        self.manifest = {**self.manifest, **extra, "status": status, "updated": time.time()}
        _atomic_write(
            self.directory / "manifest.json", json.dumps(self.manifest, indent=2).encode()
        )
