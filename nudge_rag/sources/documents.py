"""Documents on disk as chunks: ``.txt`` / ``.md`` files read, split by paragraphs; and the
checks and quoting of the paths a user typed.

Imports the standard library only.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from pathlib import Path

from nudge_rag.errors import DatasetError

__all__ = [
    "DEFAULT_CHUNK_CHARS",
    "DOC_SUFFIXES",
    "chunk_text",
    "doc_files",
    "input_file",
    "read_documents",
    "shell_path",
]

DOC_SUFFIXES = (".txt", ".md", ".markdown")
DEFAULT_CHUNK_CHARS = 1000


_PARA = re.compile(r"\n\s*\n")
_SENT = re.compile(r"(?<=[.!?])\s+")


def _pack(pieces: Iterable[str], max_chars: int, sep: str) -> list[str]:
    """Greedily join pieces (each at most ``max_chars``) with ``sep`` into chunks."""
    out: list[str] = []
    cur = ""
    for p in pieces:
        if not cur:
            cur = p
        elif len(cur) + len(sep) + len(p) <= max_chars:
            cur = cur + sep + p
        else:
            out.append(cur)
            cur = p
    if cur:
        out.append(cur)
    return out


def _hard_split(text: str, max_chars: int) -> list[str]:
    """Split on whitespace into pieces of at most ``max_chars`` (a word longer than that is cut)."""
    pieces: list[str] = []
    for w in text.split():
        while len(w) > max_chars:
            pieces.append(w[:max_chars])
            w = w[max_chars:]
        pieces.append(w)
    return _pack(pieces, max_chars, " ")


def chunk_text(text: str, max_chars: int = DEFAULT_CHUNK_CHARS) -> list[str]:
    """Split ``text`` into chunks of whole paragraphs, each at most ``max_chars`` characters.

    Paragraphs (separated by blank lines) are joined while they fit; a longer paragraph is split
    at sentence ends, and a longer sentence at spaces.

    Example:
        >>> chunk_text("One.\\n\\nTwo.\\n\\n" + "x " * 30, max_chars=20)
        ['One.\\n\\nTwo.', 'x x x x x x x x x x', 'x x x x x x x x x x', 'x x x x x x x x x x']
    """
    pieces: list[str] = []
    for para in _PARA.split(text.replace("\r\n", "\n")):
        para = para.strip()
        if not para:
            continue
        if len(para) <= max_chars:
            pieces.append(para)
            continue
        sentences: list[str] = []
        for s in _SENT.split(para):
            s = s.strip()
            if len(s) <= max_chars:
                sentences.append(s)
            else:
                sentences.extend(_hard_split(s, max_chars))
        pieces.extend(_pack([s for s in sentences if s], max_chars, " "))
    return _pack(pieces, max_chars, "\n\n")


def doc_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    """``.txt`` / ``.md`` files under ``folder`` (hidden folders and ``exclude`` skipped)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if exclude is not None and (p.resolve() == exclude or exclude in p.resolve().parents):
            continue
        if p.suffix.lower() in DOC_SUFFIXES and not p.is_dir():
            out.append(p)
    return out


def read_documents(
    source: str | os.PathLike[str],
    max_chars: int = DEFAULT_CHUNK_CHARS,
    *,
    exclude: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Chunk every ``.txt`` / ``.md`` file under ``source`` (or the one file ``source``).

    Example:
        >>> read_documents("docs/", max_chars=500)                  # doctest: +SKIP
        {'a.txt#0': 'The mitochondria is ...', 'a.txt#1': '...', 'sub/b.md#0': '# Rivers ...'}

    Args:
        source: A folder (searched recursively; hidden folders skipped) or one file.
        max_chars: Maximum chunk length (see :func:`chunk_text`).
        exclude: A folder under ``source`` to skip (e.g. the store built from it).

    Returns:
        ``{"relative/path.md#n": chunk text}`` in file order, ``n`` counting from 0 per file.

    Raises:
        DatasetError: A file cannot be read or is not UTF-8 text (the message names it), or
            there is no text at all.
    """
    root = Path(source)
    if root.is_file():
        files, base = [root], root.parent
    else:
        files, base = doc_files(root, Path(exclude).resolve() if exclude else None), root
    if not files:
        msg = f"empty corpus: {str(root)!r} holds no {'/'.join(DOC_SUFFIXES)} documents"
        raise DatasetError(msg)
    chunks: dict[str, str] = {}
    for f in files:
        rel = f.relative_to(base).as_posix()
        try:
            text = f.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            msg = (
                f"{rel}: not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8 "
                "or move it out of the folder"
            )
            raise DatasetError(msg) from exc
        except OSError as exc:
            msg = f"{rel}: cannot be read ({exc.strerror or exc})"
            raise DatasetError(msg) from exc
        for n, chunk in enumerate(chunk_text(text, max_chars)):
            chunks[f"{rel}#{n}"] = chunk
    if not chunks:
        msg = f"empty corpus: the {len(files)} document file(s) in {str(root)!r} hold no text"
        raise DatasetError(msg)
    return chunks


def input_file(value: str | os.PathLike[str] | None, what: str) -> Path | None:
    """Check that ``value`` names an existing file (or a BEIR folder) before anything is built.

    Raises:
        DatasetError: It does not exist, or is a folder other than a BEIR one (the message
            names ``what``, e.g. ``"--queries"``).
    """
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.exists():
        msg = f"{what} {os.fspath(value)!r} does not exist"
        raise DatasetError(msg)
    if p.is_dir() and not (p / "corpus.jsonl").exists():
        msg = (
            f"{what} {os.fspath(value)!r} is a directory; expected a JSON file (LlamaIndex "
            "EmbeddingQAFinetuneDataset)"
        )
        raise DatasetError(msg)
    return p


def shell_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a shell word that pastes back as the same path (never read as an option)."""
    s = os.fspath(path)
    return shlex.quote(f"./{s}" if s.startswith("-") else s)
