"""A durable log of retrieval feedback: which records users confirmed for which query.

One JSON object per line, appended and fsynced (stdlib only)::

    {"v": 1, "q": "how do I rotate the key?", "ids": {"doc-42": 1.0}, "t": 1764547200.0,
     "src": "chat", "shown": ["doc-42", "doc-7", ...], "n": 1}

- Duplicates collapse: entries with the same query text and the same set of confirmed ids are
  one entry (the latest grades, timestamp, source and impressions win; ``count`` says how often
  it was confirmed). A repeated confirmation moves the entry to the newest end.
- Bounded: at most ``max_entries`` distinct entries are kept, the least recently confirmed are
  dropped. The file is compacted (distinct entries rewritten to a temporary sibling, fsynced,
  then ``os.replace``-d over the log) when it holds more than ``compact_factor`` times as many
  lines as live entries, or when entries were dropped.
- Safe against a kill: a line is written with one ``write`` call and fsynced; a half-written
  last line (no newline at the end) is ignored on read, and the next append starts a fresh line
  after it. A compaction either happened entirely or not at all.
- Several processes may append to the same log (whole lines, ``O_APPEND``, under a shared
  ``flock``; compaction takes it exclusively, where the platform has ``fcntl``); each reader
  picks up what the others wrote before it reads.

Example:
    >>> log = FeedbackLog("/tmp/fb.jsonl")                            # doctest: +SKIP
    >>> log.record("how do I rotate the key?", ["doc-42"], source="chat")   # doctest: +SKIP
    >>> log.training_pairs()                                          # doctest: +SKIP
    [('how do I rotate the key?', {'doc-42': 1.0})]
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nudge_rag.errors import ConfigError

try:  # pragma: no cover - platform dependent
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["FeedbackEntry", "FeedbackLog"]

logger = logging.getLogger(__name__)

_VERSION = 1
Key = tuple[str, frozenset[str]]


@dataclass(frozen=True)
class FeedbackEntry:
    """One piece of feedback.

    Attributes:
        query: The query text as the user asked it.
        ids: Confirmed record ids and their grades (> 0: relevant; <= 0: marked not relevant).
        timestamp: When it was (last) confirmed, seconds since the epoch.
        source: Where it came from (``"chat"``, ``"langchain-callback"``, ...).
        shown: Record ids the retriever showed for the query (impressions), when known.
        count: How many times this same confirmation was recorded.
        candidates: For a relevance judge's answer (``source="judge"``), the digest of the
            query and the candidate list the judge read (:func:`nudge_rag.judge.candidate_digest`);
            ``shown`` holds that list. ``""`` for users' feedback. Entries with a digest never
            collapse with users' entries, nor with the judge's answers over other candidates.
    """

    query: str
    ids: dict[str, float]
    timestamp: float
    source: str = ""
    shown: tuple[str, ...] = ()
    count: int = 1
    candidates: str = ""

    @property
    def key(self) -> Key:
        if self.candidates:  # a judge's answer: its own entry per candidate list
            return (self.query, frozenset([*self.ids, f"\x00judge:{self.candidates}"]))
        return (self.query, frozenset(self.ids))

    @property
    def relevant(self) -> dict[str, float]:
        """The confirmed ids with a positive grade."""
        return {i: g for i, g in self.ids.items() if g > 0}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": _VERSION,
            "q": self.query,
            "ids": self.ids,
            "t": self.timestamp,
            "src": self.source,
        }
        if self.shown:
            out["shown"] = list(self.shown)
        if self.count != 1:
            out["n"] = self.count
        if self.candidates:
            out["cd"] = self.candidates
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FeedbackEntry:
        ids = obj["ids"]
        if not isinstance(obj["q"], str) or not isinstance(ids, Mapping):
            msg = "malformed feedback entry"
            raise ValueError(msg)
        return cls(
            query=obj["q"],
            ids={str(k): float(v) for k, v in ids.items()},
            timestamp=float(obj["t"]),
            source=str(obj.get("src", "")),
            shown=tuple(str(x) for x in obj.get("shown", ())),
            count=int(obj.get("n", 1)),
            candidates=str(obj.get("cd", "")),
        )


@dataclass
class FeedbackLog:
    """An append-only, fsynced JSONL log of feedback, bounded and de-duplicated.

    Args:
        path: The log file (created with its folder on first write).
        max_entries: Distinct entries kept at most; the least recently confirmed go first.
        compact_factor: Compact when the file holds more than this many lines per live entry.
        fsync: fsync every append (turn off only for tests or throw-away logs).
        backend: Keep the log in this :class:`~nudge_rag.state.StateBackend` (a table in the
            store's database, a companion collection) instead of the file ``path``, so that
            every replica of an application appends to, and reads, the same log. ``path`` then
            only names it in messages. See :meth:`on`.
    """

    path: str | os.PathLike[str]
    max_entries: int = 100_000
    compact_factor: float = 2.0
    fsync: bool = True
    backend: Any = None
    _entries: OrderedDict[Key, FeedbackEntry] = field(default_factory=OrderedDict, init=False)
    _lines: int = field(default=0, init=False)
    _offset: int = field(default=0, init=False)
    _inode: tuple[int, int] | None = field(default=None, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _cursor: Any = field(default=None, init=False, repr=False)

    @classmethod
    def on(cls, backend: Any, **options: Any) -> FeedbackLog:
        """The feedback log kept in a state place: the file ``feedback.jsonl`` of a folder
        backend, else lines in the backend itself (shared by every process that reaches it)."""
        from nudge_rag.state import FolderBackend

        if isinstance(backend, FolderBackend):
            return cls(backend.feedback_path, **options)
        return cls(f"{backend.where}#feedback", backend=backend, **options)

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_entries, bool)
            or not isinstance(self.max_entries, int)
            or self.max_entries < 1
        ):
            msg = f"max_entries must be a positive int; received {self.max_entries!r}"
            raise ConfigError(msg)
        if not self.compact_factor >= 1.0:
            msg = f"compact_factor must be >= 1; received {self.compact_factor!r}"
            raise ConfigError(msg)
        if self.backend is None:
            self.path = Path(self.path)
        self._sync()

    # ------------------------------------------------------------------ writing
    def record(
        self,
        query: str,
        ids: Iterable[str] | Mapping[str, float],
        *,
        grade: float = 1.0,
        source: str = "",
        shown: Sequence[str] = (),
        timestamp: float | None = None,
        candidates: str = "",
    ) -> FeedbackEntry:
        """Append one piece of feedback and return the (collapsed) entry.

        Args:
            query: The query text.
            ids: Confirmed record ids (each gets ``grade``) or ``{id: grade}``. May be empty when
                ``shown`` is given (nothing shown was relevant: the impressions are negatives).
            grade: Grade of ids given as a list.
            source: A free label of where the feedback came from.
            shown: The ids the retriever showed (optional).
            timestamp: Defaults to now.
            candidates: A relevance judge's candidate-list digest (see
                :attr:`FeedbackEntry.candidates`); ``""`` for users' feedback.
        """
        if not isinstance(query, str) or not query.strip():
            msg = f"query must be a non-empty string; received {query!r:.60}"
            raise ConfigError(msg)
        if isinstance(ids, str):
            msg = "ids must be a list of record ids or a {id: grade} mapping, not a single string"
            raise ConfigError(msg)
        grades = (
            {str(k): float(v) for k, v in ids.items()}
            if isinstance(ids, Mapping)
            else {str(k): float(grade) for k in ids}
        )
        if not all(map(_finite, grades.values())):
            msg = f"grades must be finite numbers; received {grades}"
            raise ConfigError(msg)
        if not grades and not shown:
            msg = "feedback needs confirmed ids, or the shown ids when nothing was relevant"
            raise ConfigError(msg)
        entry = FeedbackEntry(
            query=query,
            ids=grades,
            timestamp=time.time() if timestamp is None else float(timestamp),
            source=str(source),
            shown=tuple(str(s) for s in shown),
            candidates=str(candidates),
        )
        with self._lock:
            self._sync()
            old = self._entries.get(entry.key)
            if old is not None:
                entry = replace(entry, count=old.count + 1)
            self._append_line(json.dumps(entry.to_json(), ensure_ascii=False))
            self._sync()  # reads our line back (and whatever other processes appended)
            self._maybe_compact()
            return entry

    def compact(self) -> None:
        """Rewrite the log with its live entries only (temporary sibling, fsync, replace)."""
        if self.backend is not None:
            with self._lock:
                self._sync()
                self._trim()
                lines = [json.dumps(e.to_json(), ensure_ascii=False) for e in self._entries.values()]
                self.backend.feedback_rewrite(lines)
                self._cursor = None
                self._sync()
            return
        with self._lock, self._file_lock():
            self._sync()
            self._trim()
            tmp = Path(self.path).with_name(f".{Path(self.path).name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                for e in self._entries.values():
                    fh.write(json.dumps(e.to_json(), ensure_ascii=False) + "\n")
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._fsync_dir()
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            self._offset = st.st_size
            self._lines = len(self._entries)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return len(self._entries)

    def __iter__(self) -> Iterator[FeedbackEntry]:
        """Entries from the least to the most recently confirmed."""
        with self._lock:
            self._sync()
            return iter(list(self._entries.values()))

    def entries(self) -> list[FeedbackEntry]:
        return list(self)

    def training_pairs(self, *, min_grade: float = 0.0) -> list[tuple[str, dict[str, float]]]:
        """``[(query, {id: grade})]`` of entries with at least one grade above ``min_grade``,
        one per distinct query (grades of the same query merged, the highest kept)."""
        merged: dict[str, dict[str, float]] = {}
        for e in self:
            for i, g in e.ids.items():
                if g > min_grade:
                    d = merged.setdefault(e.query, {})
                    d[i] = max(g, d.get(i, g))
        return list(merged.items())

    # ------------------------------------------------------------------ internals
    def _apply(self, entry: FeedbackEntry) -> None:
        self._entries.pop(entry.key, None)
        self._entries[entry.key] = entry
        self._lines += 1

    def _trim(self) -> int:
        dropped = 0
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            dropped += 1
        return dropped

    def _maybe_compact(self) -> None:
        dropped = self._trim()
        if dropped or self._lines > self.compact_factor * max(len(self._entries), 1) + 16:
            self.compact()

    def _append_line(self, line: str) -> None:
        """One ``write`` of one whole line, fsynced. If the file ends in a torn line (a writer
        killed mid-line), a newline first closes it off: it is skipped on read, never glued to
        ours."""
        if self.backend is not None:
            self.backend.feedback_append(line)
            return
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (line + "\n").encode("utf-8")
        with _Flock(self._lock_path(), shared=True):
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                os.write(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        if created:
            self._fsync_dir()

    def _sync(self) -> None:
        """Read what was appended since the last look (by us or another process); reload
        everything if the file was replaced (compacted); cut off a torn last line."""
        if self.backend is not None:
            lines, self._cursor, reset = self.backend.feedback_read(self._cursor)
            if reset:
                self._entries.clear()
                self._lines = 0
            for raw in lines:
                self._apply_raw(raw)
            self._trim()
            return
        path = Path(self.path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._entries.clear()
            self._lines = self._offset = 0
            self._inode = None
            return
        inode = (st.st_dev, st.st_ino)
        if inode != self._inode or st.st_size < self._offset:
            self._entries.clear()
            self._lines = self._offset = 0
            self._inode = inode
        if st.st_size == self._offset:
            return
        with open(path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a torn last line waits (closed off by the next append)
        for raw in data[:end].splitlines():
            self._apply_raw(raw)
        self._offset += end
        self._trim()

    def _apply_raw(self, raw: bytes | str) -> None:
        if not raw.strip():
            return
        try:
            entry = FeedbackEntry.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("feedback log %s: skipping an unreadable line (%s)", self.path, exc)
            return
        self._apply(entry)

    def _lock_path(self) -> Path:
        return Path(self.path).with_name(f".{Path(self.path).name}.lock")

    def _file_lock(self) -> _Flock:
        return _Flock(self._lock_path())

    def _fsync_dir(self) -> None:
        if not self.fsync:
            return
        try:
            fd = os.open(Path(self.path).parent, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(fd)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(fd)


class _Flock:
    """An advisory lock on a sibling file: shared for appends, exclusive for compaction (no-op
    where ``fcntl`` is missing)."""

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self.fd: int | None = None

    def __enter__(self) -> _Flock:
        if fcntl is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))
