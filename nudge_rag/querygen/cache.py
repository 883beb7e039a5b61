"""The JSONL cache that lets an interrupted generation resume without paying for a chunk twice.

One line per generated chunk, appended and flushed as soon as the chunk is done, so killing the
process loses at most the chunks in flight::

    {"chunk_id": "n-17", "text_sha256": "9f2c...", "config": "5be0...", "questions": ["...", "..."]}

An entry is reused only if the chunk id, the sha256 of the chunk's text *and* the configuration
hash (prompt template, queries per chunk, generator tag) all match: a chunk whose text changed, or
a run with another prompt, is generated again. Entries are keyed by id, never by position, so
adding, removing or reordering chunks never shifts answers onto the wrong chunk (the flaw of
LlamaIndex's ``generate_qa_embedding_pairs`` resume). A later line for the same chunk wins. A
torn last line (the process died mid-write) is ignored.

Odd Unicode cannot break it. Lines are UTF-8 JSON; a line whose text holds a lone surrogate
(``"\\ud800"``, which UTF-8 cannot encode) is written with ``\\uXXXX`` escapes instead, and reads
back to the same string. Hashes encode with ``surrogatepass``. On reading, a line that is not
valid UTF-8 or not a well-formed entry (``questions`` a list of strings) is skipped and counted,
never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = ["QueryCache", "config_hash", "text_sha256"]

logger = logging.getLogger(__name__)


def text_sha256(text: str) -> str:
    """sha256 hex digest of a chunk's text (UTF-8; lone surrogates pass through as such)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def config_hash(*parts: object) -> str:
    """A short stable hash of the settings that shape the answers (prompt, n, generator tag)."""
    blob = json.dumps([str(p) for p in parts], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _json_line(obj: object) -> str:
    """One JSON line, readable UTF-8 when possible, ``\\uXXXX``-escaped when the text holds
    what UTF-8 cannot encode (lone surrogates); both read back to the same strings."""
    line = json.dumps(obj, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(obj, ensure_ascii=True)
    return line


def _entry(obj: object) -> tuple[str, str, str, list[str]]:
    """``(chunk id, text sha256, config, questions)`` of a parsed line, or ValueError."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    qs = obj["questions"]
    if not isinstance(qs, list) or not all(isinstance(q, str) for q in qs):
        raise ValueError("questions is not a list of strings")
    return str(obj["chunk_id"]), str(obj["text_sha256"]), str(obj["config"]), qs


class QueryCache:
    """Append-only JSONL store of generated questions, keyed by chunk id + text hash + config.

    Args:
        path: The JSONL file (created with its folder on the first write).
        config: The configuration hash of this run (:func:`config_hash`).

    Example:
        >>> cache = QueryCache("queries.jsonl", config="abc")
        >>> cache.put("c1", "some chunk text", ["What is it?"])
        >>> cache.get("c1", "some chunk text")
        ['What is it?']
        >>> cache.get("c1", "changed text") is None
        True
        >>> cache.close()
    """

    def __init__(self, path: str | os.PathLike[str], config: str) -> None:
        self.path = Path(path).expanduser()
        self.config = config
        self._entries: dict[str, tuple[str, list[str]]] = {}
        self._fh: IO[str] | None = None
        self.n_lines = 0
        self.n_stale = 0
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        torn = 0
        with open(self.path, "rb") as fh:  # decoded line by line: one bad byte spoils one line
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                self.n_lines += 1
                try:
                    cid, digest, cfg, qs = _entry(json.loads(raw.decode("utf-8")))
                except (ValueError, KeyError, TypeError, RecursionError):
                    torn += 1
                    logger.warning("%s:%d: unreadable cache line ignored", self.path, lineno)
                    continue
                if cfg != self.config:
                    self.n_stale += 1
                    continue
                self._entries[cid] = (digest, qs)
        logger.info(
            "query cache %s: %d usable entries (%d lines, %d for other settings, %d unreadable)",
            self.path, len(self._entries), self.n_lines, self.n_stale, torn,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, chunk_id: str, text: str) -> list[str] | None:
        """The cached questions of this chunk, if its text and the settings are unchanged."""
        hit = self._entries.get(chunk_id)
        if hit is None or hit[0] != text_sha256(text):
            return None
        return list(hit[1])

    def put(self, chunk_id: str, text: str, questions: Sequence[str]) -> None:
        """Record the questions of one chunk: one line, appended and flushed at once.

        Raises:
            OSError: The file cannot be written (the entry is still kept in memory).
        """
        digest = text_sha256(text)
        line = _json_line(
            {
                "chunk_id": chunk_id,
                "text_sha256": digest,
                "config": self.config,
                "questions": list(questions),
            }
        )
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = False
            if self.path.is_file() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    needs_newline = fh.read(1) != b"\n"  # a torn line: start on a fresh one
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            if needs_newline:
                self._fh.write("\n")
        self._entries[chunk_id] = (digest, list(questions))
        self._fh.write(line + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (further :meth:`put` calls reopen it)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> QueryCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
