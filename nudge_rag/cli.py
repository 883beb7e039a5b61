"""The ``nudge-rag`` command, thin over the library.

Sub-commands: ``finetune``, ``generate-queries``, ``evaluate``, ``revert``, ``bench``. Each
takes a SOURCE, which is one of:

* a BEIR folder (``corpus.jsonl`` + ``qrels/``): the NUDGE paper's protocol (``finetune``), or
  an exact-search baseline (``evaluate``);
* a folder of ``.txt`` / ``.md`` documents (or one such file): chunked by paragraphs, embedded
  with the local model into a persistent Chroma collection (``--store``, default
  ``./nudge_store``), which is then fine-tuned in place;
* a persisted LlamaIndex index (``docstore.json`` + ``default__vector_store.json``);
* a Chroma directory (``chroma.sqlite3``), one collection of it (``--collection``).

Exit codes: 0 success, 2 bad input (missing or unreadable file, malformed data, unknown store,
bad option, any :class:`~nudge_rag.errors.NudgeError`), 1 anything else. Errors print one line
(``nudge-rag: error: ...``), never a traceback, unless ``--debug``. A command that fails never
leaves a store modified: nothing is written before every check has passed, and a write-back that
fails half-way is rolled back by the finetuner's journal.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["chunk_text", "main", "read_documents"]

logger = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
DOC_SUFFIXES = (".txt", ".md", ".markdown")
DEFAULT_STORE = "nudge_store"
DEFAULT_CHUNK_CHARS = 1000


def default_data_folder() -> Path | None:
    """``../shared/data/scifact`` beside the working directory or beside the repository."""
    for base in (Path.cwd(), _HERE.parent):
        cand = (base / ".." / "shared" / "data" / "scifact").resolve()
        if cand.is_dir():
            return cand
    return None


NO_DATA = (
    "no data folder given, and ../shared/data/scifact was not found. Pass a BEIR-format folder: "
    "nudge-rag finetune PATH, where PATH holds corpus.jsonl, queries.jsonl and qrels/*.tsv "
    "(train.tsv and test.tsv at least), e.g. SciFact or NFCorpus from the BEIR benchmark."
)

SOURCE_KINDS = (
    "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv); a folder of .txt/.md documents; "
    "a persisted LlamaIndex index (docstore.json, default__vector_store.json); or a Chroma "
    "directory (chroma.sqlite3)"
)


def _errors() -> Any:
    from nudge_rag import errors

    return errors


# ---------------------------------------------------------------------------------------------
# Documents: read and chunk
# ---------------------------------------------------------------------------------------------
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
    words = text.split()
    pieces: list[str] = []
    for w in words:
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


def _doc_files(folder: Path, exclude: Path | None = None) -> list[Path]:
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

    Returns:
        ``{"relative/path.md#n": chunk text}`` in file order, ``n`` counting from 0 per file.

    Raises:
        DatasetError: A file cannot be read or is not UTF-8 text (the message names it), or
            there is no text at all.
    """
    err = _errors()
    root = Path(source)
    if root.is_file():
        files, base = [root], root.parent
    else:
        files, base = _doc_files(root, Path(exclude).resolve() if exclude else None), root
    if not files:
        msg = f"empty corpus: {str(root)!r} holds no {'/'.join(DOC_SUFFIXES)} documents"
        raise err.DatasetError(msg)
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
            raise err.DatasetError(msg) from exc
        except OSError as exc:
            msg = f"{rel}: cannot be read ({exc.strerror or exc})"
            raise err.DatasetError(msg) from exc
        for n, chunk in enumerate(chunk_text(text, max_chars)):
            chunks[f"{rel}#{n}"] = chunk
    if not chunks:
        msg = f"empty corpus: the {len(files)} document file(s) in {str(root)!r} hold no text"
        raise err.DatasetError(msg)
    return chunks


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
@dataclass
class Source:
    """What a SOURCE argument resolved to.

    Attributes:
        kind: ``"beir"``, ``"documents"``, ``"llamaindex"`` or ``"chroma"``.
        path: The SOURCE path.
        store: The object the finetuner takes (None for BEIR).
        embedder: The local embedding model (ours; LlamaIndex-wrapped inside ``store``).
        state_dir: Default fine-tuning state folder.
        label: A short description for messages.
        persist: Called after the vectors changed (LlamaIndex: write the index back to disk).
    """

    kind: str
    path: Path
    store: Any = None
    embedder: Any = None
    state_dir: Path | None = None
    label: str = ""
    persist: Callable[[], None] | None = None


def detect_kind(path: Path) -> str:
    """Which kind of SOURCE ``path`` is (see :data:`SOURCE_KINDS`).

    Raises:
        DatasetError: It does not exist, or is an empty folder.
        UnsupportedStoreError: It is a folder of something else.
    """
    err = _errors()
    if not path.exists():
        msg = f"SOURCE {str(path)!r} does not exist; expected {SOURCE_KINDS}"
        raise err.DatasetError(msg)
    if path.is_file():
        if path.suffix.lower() in DOC_SUFFIXES:
            return "documents"
        msg = (
            f"SOURCE {str(path)!r} is a file of an unknown kind; expected {SOURCE_KINDS} "
            f"(or a single {'/'.join(DOC_SUFFIXES)} file)"
        )
        raise err.UnsupportedStoreError(msg)
    if (path / "corpus.jsonl").exists() and (path / "qrels").is_dir():
        return "beir"
    if (path / "chroma.sqlite3").exists():
        return "chroma"
    if (path / "docstore.json").exists():
        return "llamaindex"
    if _doc_files(path):
        return "documents"
    entries = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    if not entries:
        msg = f"empty corpus: {str(path)!r} is an empty folder; expected {SOURCE_KINDS}"
        raise err.DatasetError(msg)
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
    msg = (
        f"unknown store: {str(path)!r} (holding {shown}) is none of: {SOURCE_KINDS}. LangChain "
        "FAISS / Qdrant folders and other stores are supported from Python "
        "(NudgeEmbeddingFinetuner(store)), not from this command"
    )
    raise err.UnsupportedStoreError(msg)


def _make_embedder(quiet: bool) -> Any:
    """The local all-MiniLM-L6-v2 (disk-cached). Tests replace this function."""
    from nudge_rag.embedding import LocalEmbedder

    return LocalEmbedder(show_progress=not quiet)


def _collection_name(name: str) -> str:
    """A valid Chroma collection name (3-512 of [A-Za-z0-9._-], alphanumeric at both ends)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:200]
    if len(s) < 3:
        s = f"docs_{s}" if s else "documents"
    return s


def _chroma_client(path: Path) -> Any:
    from nudge_rag.errors import require

    chromadb = require("chromadb", "chroma")
    # Absolute: chromadb shares one client system per path string within a process.
    return chromadb.PersistentClient(path=str(path.resolve()))  # type: ignore[attr-defined]


def _collection_names(client: Any) -> list[str]:
    return sorted(getattr(c, "name", c) for c in client.list_collections())


def _open_chroma(path: Path, collection: str | None, args: argparse.Namespace) -> Source:
    err = _errors()
    try:
        client = _chroma_client(path)
        names = _collection_names(client)
    except err.NudgeError:
        raise
    except Exception as exc:
        msg = f"cannot open the Chroma directory {str(path)!r}: {type(exc).__name__}: {exc}"
        raise err.DatasetError(msg) from exc
    if collection is None:
        if len(names) != 1:
            msg = (
                f"the Chroma directory {str(path)!r} holds {len(names)} collections "
                f"({', '.join(names) or 'none'}); choose one with --collection NAME"
            )
            raise err.ConfigError(msg)
        collection = names[0]
    elif collection not in names:
        msg = (
            f"--collection {collection!r} is not in the Chroma directory {str(path)!r} "
            f"(it holds: {', '.join(names) or 'no collection'})"
        )
        raise err.ConfigError(msg)
    col = client.get_collection(collection)
    if col.count() == 0:
        msg = (
            f"empty corpus: the Chroma collection {collection!r} in {str(path)!r} holds no records"
        )
        raise err.DatasetError(msg)
    return Source(
        "chroma",
        path,
        store=col,
        embedder=_make_embedder(args.quiet),
        state_dir=path / "nudge_state" / collection,
        label=f"Chroma collection {collection!r} in {path}",
    )


def _open_documents(path: Path, args: argparse.Namespace, *, create: bool = True) -> Source:
    """Chunk the documents, and open (or build) their Chroma collection in ``--store``."""
    err = _errors()
    store = Path(args.store or DEFAULT_STORE)
    name = _collection_name(args.collection or (path.stem if path.is_file() else path.name))
    chunks = read_documents(path, args.chunk_size, exclude=store)
    if store.exists() and not store.is_dir():
        msg = f"--store {str(store)!r} is a file; expected a folder for the Chroma store"
        raise err.ConfigError(msg)
    exists = (store / "chroma.sqlite3").exists()
    if not exists and not create:
        msg = (
            f"no store for {str(path)!r} at {str(store)!r}: run `nudge-rag finetune {path}` first, "
            "or pass --store"
        )
        raise err.DatasetError(msg)
    client = _chroma_client(store)
    embedder = _make_embedder(args.quiet)
    if name in _collection_names(client):
        col = client.get_collection(name)
        got = col.get(include=["documents"])
        stored = dict(zip(got["ids"], got["documents"] or [], strict=False))
        if stored != chunks:
            changed = sum(1 for k, v in chunks.items() if stored.get(k) != v)
            msg = (
                f"the store {str(store)!r} already holds a collection {name!r} built from other "
                f"documents ({len(stored)} stored chunks; {changed} of the folder's "
                f"{len(chunks)} chunks are new or changed; --chunk-size changes them too). Pass "
                "another --store or --collection, or delete the old one"
            )
            raise err.ConfigError(msg)
        logger.info("reusing collection %r in %s (%d chunks)", name, store, len(chunks))
    else:
        if not create:
            msg = f"the store {str(store)!r} has no collection {name!r}: run finetune first"
            raise err.DatasetError(msg)
        ids, texts = list(chunks), list(chunks.values())
        if not args.quiet:
            print(f"Embedding {len(ids)} chunks of {path} into {store} (collection {name!r})...")
        vecs = embedder.embed_documents(texts)
        col = client.create_collection(name, configuration={"hnsw": {"space": "ip"}})
        batch = max(1, min(int(client.get_max_batch_size()), 1000))
        for s in range(0, len(ids), batch):
            col.add(
                ids=ids[s : s + batch],
                embeddings=[list(map(float, v)) for v in vecs[s : s + batch]],
                documents=texts[s : s + batch],
                metadatas=[{"source": i.rsplit("#", 1)[0]} for i in ids[s : s + batch]],
            )
    return Source(
        "documents",
        path,
        store=col,
        embedder=embedder,
        state_dir=store / "nudge_state" / name,
        label=f"{len(chunks)} chunks of {path} (Chroma collection {name!r} in {store})",
    )


def _open_llamaindex(path: Path, args: argparse.Namespace) -> Source:
    err = _errors()
    from nudge_rag.errors import require

    require("llama_index.core", "llamaindex")
    for name in ("docstore.json", "index_store.json", "default__vector_store.json"):
        f = path / name
        if not f.exists():
            msg = f"{str(path)!r} looks like a persisted LlamaIndex index but has no {name}"
            raise err.DatasetError(msg)
        if f.is_dir():
            msg = f"{str(f)!r} is a directory; expected LlamaIndex's {name} file"
            raise err.DatasetError(msg)
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            msg = f"{str(f)!r} cannot be read as JSON ({exc}); the index cannot be loaded"
            raise err.DatasetError(msg) from exc
    from llama_index.core import StorageContext, load_index_from_storage

    from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

    embedder = _make_embedder(args.quiet)
    try:
        ctx = StorageContext.from_defaults(persist_dir=str(path))
        index = load_index_from_storage(
            ctx, index_id=args.collection, embed_model=as_llamaindex_embedding(embedder)
        )
    except Exception as exc:
        msg = f"cannot load the LlamaIndex index in {str(path)!r}: {type(exc).__name__}: {exc}"
        raise err.DatasetError(msg) from exc
    if not getattr(index, "vector_store", None) or not hasattr(index, "as_retriever"):
        msg = f"the LlamaIndex index in {str(path)!r} is a {type(index).__name__}, not a VectorStoreIndex"
        raise err.UnsupportedStoreError(msg)

    def persist() -> None:
        index.storage_context.persist(persist_dir=str(path))

    return Source(
        "llamaindex",
        path,
        store=index,
        embedder=embedder,
        state_dir=path / "nudge_state",
        label=f"LlamaIndex index in {path}",
        persist=persist,
    )


def open_source(args: argparse.Namespace, *, create: bool = True) -> Source:
    """Resolve ``args.source`` to a :class:`Source` (building the documents store if asked)."""
    path = Path(args.source).expanduser()
    kind = detect_kind(path)
    if kind == "beir":
        return Source("beir", path, label=f"BEIR folder {path}")
    if kind == "chroma":
        return _open_chroma(path, args.collection, args)
    if kind == "llamaindex":
        return _open_llamaindex(path, args)
    return _open_documents(path, args, create=create)


def _store_adapter(src: Source) -> Any:
    from nudge_rag.stores import adapter_for

    adapter = adapter_for(src.store)
    if adapter.count() == 0:
        msg = f"empty corpus: the {src.label} holds no records"
        raise _errors().DatasetError(msg)
    return adapter


def _chunk_texts(src: Source, args: argparse.Namespace) -> dict[str, str]:
    """Chunk id -> text of a SOURCE (what queries are written for)."""
    if src.kind == "beir":
        from nudge_rag.evaluation import load_beir

        return load_beir(src.path, qrels=[], check_ids=False).corpus
    if src.kind == "documents":
        return read_documents(src.path, args.chunk_size, exclude=args.store or DEFAULT_STORE)
    out: dict[str, str] = {}
    for page in _store_adapter(src).iter_pages(1000, with_documents=True):
        for rid, text in zip(page.ids, page.texts, strict=True):
            if text:
                out[rid] = text
    if not out:
        msg = f"the {src.label} holds no chunk texts to write queries for"
        raise _errors().DatasetError(msg)
    return out


# ---------------------------------------------------------------------------------------------
# LLM factory
# ---------------------------------------------------------------------------------------------
def load_llm(spec: str) -> Any:
    """Import ``module:function`` and return the LLM it makes.

    ``function()`` (no required argument) is called and must return an LLM (LlamaIndex,
    LangChain, or a callable ``prompt -> str``); a function that takes one argument is used as
    the LLM itself (``function(prompt) -> str``). The working directory is importable.

    Raises:
        ConfigError: Malformed spec, module or attribute not found, or the factory failed.
    """
    err = _errors()
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        msg = f"--llm must be module:function (e.g. my_llms:make_llm); received {spec!r}"
        raise err.ConfigError(msg)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:
        msg = f"--llm {spec}: cannot import module {mod_name!r} ({type(exc).__name__}: {exc})"
        raise err.ConfigError(msg) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            msg = f"--llm {spec}: module {mod_name!r} has no attribute {attr!r}"
            raise err.ConfigError(msg)
        obj = getattr(obj, part)
    if not callable(obj):
        msg = f"--llm {spec}: {attr!r} is a {type(obj).__name__}, not a function"
        raise err.ConfigError(msg)
    try:
        params = inspect.signature(obj).parameters.values()
        required = [
            p
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        required = []
    if required:
        return obj  # the LLM itself: prompt -> answer
    try:
        llm = obj()
    except Exception as exc:
        msg = f"--llm {spec}: the factory raised {type(exc).__name__}: {exc}"
        raise err.ConfigError(msg) from exc
    if llm is None:
        msg = f"--llm {spec}: the factory returned None; it must return an LLM or a callable"
        raise err.ConfigError(msg)
    return llm


# ---------------------------------------------------------------------------------------------
# Exact ranking over a store's vectors (evaluate, and finetune --eval-queries)
# ---------------------------------------------------------------------------------------------
def _rank(
    pages: Iterable[tuple[list[str], Any]],
    metric: str,
    queries: Any,
    k: int,
    subst: dict[str, Any] | None = None,
) -> tuple[list[list[str]], set[str]]:
    """Top-``k`` ids per query by exact search over the pages; also every id seen.

    ``subst`` replaces the vectors of some ids (e.g. the originals kept in a state folder).
    """
    import numpy as np

    err = _errors()
    q = np.asarray(queries, dtype=np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    best_s = np.zeros((q.shape[0], 0))
    best_i = np.zeros((q.shape[0], 0), dtype=np.int64)
    ids_all: list[str] = []
    for ids, emb in pages:
        v = np.array(emb, dtype=np.float64)
        if v.shape[0] == 0:
            continue
        if v.shape[1] != q.shape[1]:
            msg = (
                f"the store holds vectors of width {v.shape[1]} but the local embedding model "
                f"gives {q.shape[1]}: the store was built with another embedding model"
            )
            raise err.DimensionMismatchError(msg)
        if subst:
            for j, rid in enumerate(ids):
                if rid in subst:
                    v[j] = subst[rid]
        if metric == "cosine":
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        s = q @ v.T
        if metric == "l2":
            s = 2 * s - (v * v).sum(axis=1)[None, :]  # -|q - v|^2 up to a per-query constant
        offset = len(ids_all)
        ids_all.extend(ids)
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate(
            [best_i, offset + np.arange(v.shape[0])[None, :].repeat(len(q), 0)], 1
        )
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return [[ids_all[i] for i in row] for row in best_i], set(ids_all)


def _adapter_pages(adapter: Any) -> Iterator[tuple[list[str], Any]]:
    for page in adapter.iter_pages(1000, with_documents=False):
        yield list(page.ids), page.embeddings


def _evaluate_store(
    src: Source,
    dataset: Any,
    k: int,
    *,
    name: str,
    subst: dict[str, Any] | None = None,
    args: argparse.Namespace | None = None,
) -> Any:
    """Evaluate exact retrieval over the SOURCE's vectors on judged queries."""
    from nudge_rag.evaluation import EvalQueries, evaluate

    data = EvalQueries.from_any(dataset, split=getattr(args, "split", None))
    texts = sorted(set(data.queries))
    qv = src.embedder.embed_queries(texts)
    if src.kind == "beir":
        corpus = _chunk_texts(src, args)  # type: ignore[arg-type]
        ids = list(corpus)
        emb = src.embedder.embed_documents([corpus[i] for i in ids])
        ranked, seen = _rank([(ids, emb)], "dot", qv, k)
    else:
        adapter = _store_adapter(src)
        ranked, seen = _rank(_adapter_pages(adapter), adapter.metric, qv, k, subst)
    relevant = {d for r in data.relevance for d, g in r.items() if g > 0}
    if not relevant & seen:
        example = sorted(relevant)[:3]
        msg = (
            f"none of the {len(relevant)} relevant ids in the queries (e.g. {example}) is in the "
            f"{src.label}: the queries' relevant_docs must name this store's chunk ids "
            f"(e.g. {sorted(seen)[:2]})"
        )
        raise _errors().DatasetError(msg)
    lookup = dict(zip(texts, ranked, strict=True))
    return evaluate(lookup.__getitem__, data, k, name=name)


def _state_vectors(state_dir: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """``(originals by id, targets by id, state)`` from a fine-tuning state folder."""
    from nudge_rag.state import FinetuneState

    err = _errors()
    if not state_dir.is_dir():
        msg = f"no fine-tuning state folder at {str(state_dir)!r}"
        raise err.DatasetError(msg)
    state = FinetuneState.load(state_dir)
    if state is None:
        msg = f"{str(state_dir)!r} holds no fine-tuning state (no manifest.json)"
        raise err.DatasetError(msg)
    originals = {rid: state.originals[r] for r, rid in enumerate(state.ids)}
    targets = {rid: state.targets[r] for r, rid in enumerate(state.ids)}
    return originals, targets, state


def _compare_with_state(
    src: Source, dataset: Any, k: int, state_dir: Path, args: argparse.Namespace
) -> Any:
    """Before (the originals kept in ``state_dir``) vs after (the fine-tuned vectors)."""
    from nudge_rag.evaluation import compare

    originals, targets, _ = _state_vectors(state_dir)
    before = _evaluate_store(src, dataset, k, name="before", subst=originals, args=args)
    after = _evaluate_store(src, dataset, k, name="after", subst=targets, args=args)
    return compare(before, after)


# ---------------------------------------------------------------------------------------------
# Sub-commands
# ---------------------------------------------------------------------------------------------
def _input_file(value: str | None, option: str) -> Path | None:
    """Check that an input file option names a readable file (or a BEIR folder, if allowed)."""
    if value is None:
        return None
    err = _errors()
    p = Path(value).expanduser()
    if not p.exists():
        msg = f"{option} {value!r} does not exist"
        raise err.DatasetError(msg)
    if p.is_dir() and not (p / "corpus.jsonl").exists():
        msg = f"{option} {value!r} is a directory; expected a JSON file (LlamaIndex EmbeddingQAFinetuneDataset)"
        raise err.DatasetError(msg)
    return p


def _write_json(path: str, data: Any) -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        msg = f"--out {path!r} is a directory; expected a file name"
        raise _errors().ConfigError(msg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=_json_default), encoding="utf-8")
    return out


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    return str(obj)


def _report_dict(rep: Any) -> dict[str, Any]:
    curve = rep.curve
    return {
        "method": rep.method,
        "gamma": rep.gamma,
        "n_records": rep.n_records,
        "n_moved": rep.n_moved,
        "n_train": rep.n_train,
        "n_val": rep.n_val,
        "written": rep.written,
        "note": rep.note,
        "seconds": rep.seconds,
        "state_dir": rep.state_dir,
        "validation": {
            "before": rep.before._asdict() if rep.before is not None else None,
            "after": rep.after._asdict() if rep.after is not None else None,
        },
        "curve": None
        if curve is None
        else {
            "gammas": curve.gammas.tolist(),
            "scores": curve.scores.tolist(),
            "objective": curve.objective,
        },
    }


def _cmd_finetune_beir(args: argparse.Namespace, folder: Path) -> int:
    from nudge_rag.experiment import prepare_beir, run_methods

    err = _errors()
    not_here = [
        opt
        for opt, val in (
            ("--queries", args.queries),
            ("--llm", args.llm),
            ("--gamma", args.gamma),
            ("--eval-queries", args.eval_queries),
            ("--max-chunks", args.max_chunks),
        )
        if val is not None
    ]
    if not_here:
        msg = (
            f"{', '.join(not_here)} do(es) not apply to a BEIR folder, which is fine-tuned with "
            "the paper's protocol on its own judged queries"
        )
        raise err.ConfigError(msg)
    method = args.method or "both"
    methods = ["nudge-n", "nudge-m"] if method == "both" else [method]
    print(f"Fine-tuning {folder} with the local all-MiniLM-L6-v2 (offline; embeddings cached).")
    exp = prepare_beir(folder, show_progress=not args.quiet)
    print(
        f"{exp.name}: {len(exp.doc_ids)} records; paper split {len(exp.train)} train / "
        f"{len(exp.val)} validation / {len(exp.test)} test queries "
        f"({int(exp.covered.sum())} covered, {int((~exp.covered).sum())} uncovered)."
    )
    rows = run_methods(exp, methods, objective=args.objective)
    print()
    print(
        f"{'':16} {'NDCG@10':>8} {'Recall@10':>9} {'covered':>8} {'uncovered':>9} {'γ':>8} {'moved':>6} {'seconds':>8}"
    )
    for r in rows:
        gamma = "" if r.gamma is None else f"{r.gamma:.4g}"
        moved = "" if r.gamma is None else str(r.n_moved)
        secs = "" if r.gamma is None else f"{r.seconds:.2f}"
        print(
            f"{r.name:16} {r.ndcg:8.4f} {r.recall:9.4f} {r.ndcg_covered:8.4f} {r.ndcg_uncovered:9.4f} {gamma:>8} {moved:>6} {secs:>8}"
        )
    base = rows[0]
    for r in rows[1:]:
        print(
            f"{r.name}: test NDCG@10 {base.ndcg:.4f} -> {r.ndcg:.4f} ({100 * (r.ndcg - base.ndcg):+.1f} points)"
        )
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() != ".json":
            out.mkdir(parents=True, exist_ok=True)
            out = out / "report.json"
        out = _write_json(str(out), [r.__dict__ for r in rows])
        print(f"report written to {out}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    if not args.source:
        folder = default_data_folder()
        if folder is None:
            print(f"nudge-rag: error: {NO_DATA}", file=sys.stderr)
            return 2
        return _cmd_finetune_beir(args, folder)
    err = _errors()
    path = Path(args.source).expanduser()
    if detect_kind(path) == "beir":
        return _cmd_finetune_beir(args, path)
    if args.method == "both":
        msg = "--method both applies to BEIR folders only; a store is fine-tuned in place with one method"
        raise err.ConfigError(msg)
    from nudge_rag.core import NudgeN

    NudgeN(gamma=args.gamma, objective=args.objective)  # options checked before anything is built
    queries = _input_file(args.queries, "--queries")
    eval_queries = _input_file(args.eval_queries, "--eval-queries")
    llm = load_llm(args.llm) if args.llm else None
    if queries is not None:
        from nudge_rag.evaluation import QADataset

        train: Any = QADataset.from_json(queries)  # checked before anything is built or read
    else:
        train = None
    src = open_source(args)
    from nudge_rag import NudgeEmbeddingFinetuner

    state_dir = Path(args.state_dir) if args.state_dir else src.state_dir
    ft = NudgeEmbeddingFinetuner(
        src.store,
        embed_model=src.embedder,
        method=args.method or "nudge-n",
        gamma=args.gamma,
        objective=args.objective,
        seed=args.seed,
        state_dir=state_dir,
        llm=llm,
        queries_per_chunk=args.queries_per_chunk,
        max_chunks=args.max_chunks,
        show_progress=not args.quiet,
    )
    n = _store_adapter(src).count()
    how = (
        f"queries from {queries}"
        if queries is not None
        else f"queries written by {'the LLM from --llm ' + args.llm if llm is not None else 'the offline generator'}"
    )
    print(f"Fine-tuning {src.label}: {n} records, {how}.")
    ft.finetune(train)
    if ft.generated is not None and ft.generated.stats is not None:
        st = ft.generated.stats
        print(
            f"generated {st.n_queries} training queries for {st.n_chunks} chunks "
            f"({st.generator}; {st.n_failed} failed) in {st.seconds:.1f}s"
        )
    rep = ft.report
    assert rep is not None
    print(rep.summary())
    if src.persist is not None and rep.written:
        src.persist()
        print(f"index persisted to {src.path}")
    print(f"state (originals, for revert) in {rep.state_dir}")
    if rep.written:
        print(f"undo with: nudge-rag revert {args.source} --state-dir {rep.state_dir}")
    result: dict[str, Any] = {
        "source": str(src.path),
        "kind": src.kind,
        "report": _report_dict(rep),
    }
    if eval_queries is not None:
        if rep.written:
            cmp = _compare_with_state(src, eval_queries, args.k, Path(rep.state_dir), args)
            print(f"\nheld-out queries from {eval_queries}:")
            print(cmp.table())
            result["evaluation"] = cmp.to_dict()
        else:
            print("nothing was written: no before/after evaluation")
    if args.out:
        out = _write_json(args.out, result)
        print(f"report written to {out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from nudge_rag.querygen import generate_queries

    err = _errors()
    out = Path(args.out).expanduser()
    if out.is_dir():
        msg = f"--out {args.out!r} is a directory; expected a JSON file name"
        raise err.ConfigError(msg)
    llm = load_llm(args.llm) if args.llm else None
    path = Path(args.source).expanduser()
    kind = detect_kind(path)
    if kind == "documents":
        src = Source("documents", path, label=f"documents in {path}")
    else:
        src = open_source(args, create=False)
    chunks = _chunk_texts(src, args)
    ds = generate_queries(
        chunks,
        llm,
        queries_per_chunk=args.queries_per_chunk,
        max_chunks=args.max_chunks,
        seed=args.seed,
        show_progress=not args.quiet,
    )
    if not ds.queries:
        msg = f"no query could be generated for the {len(chunks)} chunks of {src.label}"
        raise err.DatasetError(msg)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_json(out)
    st = ds.stats
    gen = st.generator if st is not None else ("offline" if llm is None else "llm")
    print(
        f"wrote {len(ds.queries)} queries for {st.n_chunks if st else len(chunks)} chunks ({gen}) to {out}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    err = _errors()
    kind = detect_kind(Path(args.source).expanduser())
    dataset: Any = _input_file(args.queries, "--queries")
    if kind != "beir" and dataset is None:
        msg = (
            "--queries FILE is required for a store: a LlamaIndex EmbeddingQAFinetuneDataset "
            "JSON whose relevant_docs name the store's chunk ids (see nudge-rag generate-queries)"
        )
        raise err.ConfigError(msg)
    if kind == "beir" and args.compare_to:
        msg = "--compare-to needs a store (a BEIR folder keeps no fine-tuned vectors)"
        raise err.ConfigError(msg)
    if args.plot and not args.compare_to:
        msg = "--plot needs --compare-to STATE_DIR (it draws before vs after)"
        raise err.ConfigError(msg)
    src = open_source(args, create=True)
    if src.kind == "beir":
        src.embedder = _make_embedder(args.quiet)
        dataset = dataset or src.path
    if args.compare_to:
        cmp = _compare_with_state(src, dataset, args.k, Path(args.compare_to), args)
        print(
            f"{src.label}, queries from {dataset}; exact search, before = originals in {args.compare_to}"
        )
        print(cmp.table())
        result: dict[str, Any] = cmp.to_dict()
        if args.plot:
            from nudge_rag.evaluation import plot_comparison

            png = plot_comparison(cmp.before, cmp.after, None, args.plot)
            print(f"plot written to {png}")
    else:
        res = _evaluate_store(src, dataset, args.k, name="", args=args)
        print(f"{src.label}, queries from {dataset}; exact search")
        print(res.summary())
        result = res.to_dict(per_query=False)
    if args.out:
        out = _write_json(args.out, result)
        print(f"report written to {out}")
    return 0


def _cmd_revert(args: argparse.Namespace) -> int:
    err = _errors()
    path = Path(args.source).expanduser()
    if detect_kind(path) == "beir":
        msg = "a BEIR folder is never modified (its fine-tuning runs in memory): nothing to revert"
        raise err.ConfigError(msg)
    src = open_source(args, create=False)
    state_dir = Path(args.state_dir) if args.state_dir else src.state_dir
    assert state_dir is not None
    if not state_dir.exists() and args.state_dir is None:
        # finetune writes no state when it writes nothing (γ = 0): the store is as it was
        print(f"nothing to revert: no fine-tuning state at {state_dir} (nothing was written)")
        return 0
    _, _, state = _state_vectors(state_dir)
    from nudge_rag import NudgeEmbeddingFinetuner

    ft = NudgeEmbeddingFinetuner(src.store, embed_model=src.embedder, state_dir=state_dir)
    if not state.active:
        print(f"nothing to revert: the state in {state_dir} is {state.status!r}")
        return 0
    rep = ft.revert()
    if src.persist is not None:
        src.persist()
    print(
        f"restored the original vectors of {rep.n_restored} records of {src.label} "
        f"(max |difference| {rep.max_abs_diff:.3g})"
    )
    return 0


def _benchmarks_dir() -> Path | None:
    cand = _HERE.parent / "benchmarks"
    return cand if (cand / "bench_quality.py").is_file() else None


def _cmd_bench(args: argparse.Namespace) -> int:
    err = _errors()
    bench = _benchmarks_dir()
    if bench is None:
        msg = (
            "the benchmarks/ folder is not here (an installed package ships without it): run "
            "`make bench` or `python benchmarks/bench_quality.py` from a checkout of the repository"
        )
        raise err.DatasetError(msg)
    py = sys.executable
    data = Path(args.data).expanduser() if args.data else None
    if args.quick:
        scifact = data or default_data_folder()
        if scifact is None:
            raise err.DatasetError(NO_DATA)
        cmds = [
            [py, str(bench / "bench_quality.py"), "--data", str(scifact), "--skip-finetune",
             "--methods", "noft,ours-n-top1-refit,ours-m-top1-refit,ref-n,ref-m"],
            [py, str(bench / "bench_scale.py"), "--n", "100000", "--methods", "floor", "ours-n", "ours-m"],
        ]  # fmt: skip
    else:
        cmds = [
            [py, str(bench / "bench_quality.py")] + (["--data", str(data)] if data else []),
            [py, str(bench / "bench_scale.py")],
        ]
    for cmd in cmds:
        print("$ " + " ".join(cmd), flush=True)
        if args.dry_run:
            continue
        rc = subprocess.call(cmd, cwd=str(bench.parent))
        if rc != 0:
            print(f"nudge-rag: error: {Path(cmd[1]).name} exited with {rc}", file=sys.stderr)
            return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------
def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {v!r}")
    return n


def _non_negative_float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, received {v!r}") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, received {v!r}")
    return x


SOURCE_HELP = (
    "a BEIR folder, a folder of .txt/.md documents (or one such file), a persisted LlamaIndex "
    "index directory, or a Chroma directory"
)

MAIN_EPILOG = """\
SOURCE is any of:
  BEIR folder          corpus.jsonl, queries.jsonl, qrels/*.tsv (the NUDGE paper's protocol)
  documents folder     .txt/.md files, chunked by paragraphs (ids "path/to/file.md#0"),
                       embedded into a persistent Chroma store (--store, default ./nudge_store)
  LlamaIndex index     a folder written by index.storage_context.persist()
  Chroma directory     a folder with chroma.sqlite3 (PersistentClient), --collection NAME

Everything runs offline with the local all-MiniLM-L6-v2 model (embeddings cached in
~/.cache/nudge_rag, or $NUDGE_RAG_CACHE).

examples:
  nudge-rag finetune                                  # SciFact from ../shared/data, before/after
  nudge-rag finetune docs/                            # embed, write queries, fine-tune, report
  nudge-rag finetune docs/ --llm my_llms:make_llm     # queries written by your LLM
  nudge-rag generate-queries docs/ --out train.json   # inspect / edit the training queries
  nudge-rag finetune docs/ --queries train.json --eval-queries heldout.json
  nudge-rag evaluate nudge_store --queries heldout.json --compare-to nudge_store/nudge_state/docs
  nudge-rag revert docs/                              # the store exactly as before
  nudge-rag finetune storage/                         # a persisted LlamaIndex index

exit codes: 0 ok, 2 bad input (missing/unreadable file, unknown store, bad option), 1 other.
"""


def _common(sp: argparse.ArgumentParser, *, store: bool = True, gen: bool = False) -> None:
    if store:
        g = sp.add_argument_group("store options")
        g.add_argument(
            "--store",
            metavar="DIR",
            help=f"documents SOURCE: the Chroma store folder (default ./{DEFAULT_STORE})",
        )
        g.add_argument(
            "--collection",
            metavar="NAME",
            help="Chroma collection (default: the only one; documents: the folder's name), or "
            "LlamaIndex index id",
        )
        g.add_argument(
            "--chunk-size",
            type=_positive_int,
            default=DEFAULT_CHUNK_CHARS,
            metavar="CHARS",
            help=f"documents SOURCE: maximum chunk length in characters (default {DEFAULT_CHUNK_CHARS})",
        )
    if gen:
        g = sp.add_argument_group("query generation")
        g.add_argument(
            "--llm",
            metavar="MODULE:FUNCTION",
            help="an importable factory returning an LLM (LlamaIndex, LangChain, or a callable "
            "prompt -> str); default: the offline generator (no model)",
        )
        g.add_argument(
            "--queries-per-chunk", type=_positive_int, default=2, metavar="N", help="default 2"
        )
        g.add_argument(
            "--max-chunks",
            type=_positive_int,
            metavar="N",
            help="write queries for a sample of N chunks",
        )
        g.add_argument("--seed", type=int, default=0, help="seed of samples and splits (default 0)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from nudge_rag import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(
        prog="nudge-rag",
        description=(
            "Fine-tune the embeddings stored in a RAG vector store with NUDGE (closed form, "
            "seconds, no model training), measure the change, and undo it."
        ),
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    ap.add_argument("--version", action="version", version=f"nudge-rag {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    ft = sub.add_parser(
        "finetune",
        help="fine-tune a store (or a BEIR folder) and print before/after metrics",
        formatter_class=fmt,
        description=(
            "BEIR folder: embed it with the local model, split its judged queries as the NUDGE\n"
            "paper does (70/10/20, seed 0), fine-tune on the training queries, choose γ on the\n"
            "validation queries, and print NDCG@10 / Recall@10 on the test queries before and\n"
            "after ('covered' test queries have a relevant record a training query also points\n"
            "to; NUDGE moves only those). Nothing is written.\n\n"
            "Store (documents folder, LlamaIndex index, Chroma directory): write training\n"
            "queries for the stored chunks (offline generator, or --llm), or read them from\n"
            "--queries; fine-tune the stored vectors in place; keep the originals in --state-dir\n"
            "for `nudge-rag revert`; print γ, records moved and validation metrics."
        ),
        epilog=(
            "examples:\n"
            "  nudge-rag finetune                                # ../shared/data/scifact\n"
            "  nudge-rag finetune ../shared/data/nfcorpus --method nudge-n --out report.json\n"
            "  nudge-rag finetune docs/ --store my_store\n"
            "  nudge-rag finetune docs/ --llm my_llms:make_llm --queries-per-chunk 3\n"
            "  nudge-rag finetune storage/ --queries train.json --eval-queries val.json\n"
            "  nudge-rag finetune chroma_dir/ --collection docs --method nudge-m   # ip space only"
        ),
    )
    ft.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help=SOURCE_HELP + " (default: ../shared/data/scifact)",
    )
    ft.add_argument(
        "--method",
        choices=["nudge-n", "nudge-m", "both"],
        help="NUDGE variant (default: both for a BEIR folder, nudge-n for a store)",
    )
    ft.add_argument("--gamma", type=_non_negative_float, help="fix γ instead of choosing it")
    ft.add_argument(
        "--objective",
        default="top1",
        help="what γ is chosen by: top1 (the paper) or ndcg@10 (default: top1)",
    )
    ft.add_argument(
        "--queries",
        metavar="FILE",
        help="training queries (LlamaIndex EmbeddingQAFinetuneDataset JSON) instead of generating",
    )
    ft.add_argument(
        "--eval-queries",
        metavar="FILE",
        help="held-out queries (same JSON) to evaluate before vs after, at --k",
    )
    ft.add_argument(
        "--k", type=_positive_int, default=10, help="cutoff for --eval-queries (default 10)"
    )
    ft.add_argument(
        "--state-dir", metavar="DIR", help="where originals are kept (default: inside the store)"
    )
    ft.add_argument(
        "--out", metavar="FILE", help="write the report as JSON (BEIR: a folder also works)"
    )
    _common(ft, gen=True)
    ft.set_defaults(func=_cmd_finetune)

    gq = sub.add_parser(
        "generate-queries",
        help="write training queries for a SOURCE's chunks (LlamaIndex JSON)",
        formatter_class=fmt,
        description=(
            "Write questions for the chunks of SOURCE and save them in LlamaIndex's\n"
            "EmbeddingQAFinetuneDataset JSON (queries, corpus, relevant_docs), the file\n"
            "`finetune --queries` and `evaluate --queries` read. A documents folder is only\n"
            "chunked (nothing is embedded). The offline generator needs no model: it samples\n"
            "key phrases of each chunk; an LLM (--llm) writes real questions."
        ),
        epilog=(
            "examples:\n"
            "  nudge-rag generate-queries docs/ --out train.json\n"
            "  nudge-rag generate-queries storage/ --llm my_llms:make_llm --max-chunks 500 --out q.json\n\n"
            "my_llms.py (in the working directory):\n"
            "  def make_llm():\n"
            "      from llama_index.llms.ollama import Ollama\n"
            "      return Ollama(model='llama3.1')     # or langchain_openai.ChatOpenAI(), or a function"
        ),
    )
    gq.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    gq.add_argument("--out", metavar="FILE", required=True, help="JSON file to write")
    _common(gq, gen=True)
    gq.set_defaults(func=_cmd_generate)

    ev = sub.add_parser(
        "evaluate",
        help="NDCG@k, Recall@k, MRR@k and hit rate of a SOURCE on judged queries",
        formatter_class=fmt,
        description=(
            "Rank every query by exact search over the SOURCE's vectors (with the store's\n"
            "similarity) and print the mean metrics. With --compare-to STATE_DIR, evaluate the\n"
            "original vectors kept there against the fine-tuned ones (the store is only read).\n"
            "A BEIR folder is evaluated untouched, on its test qrels by default."
        ),
        epilog=(
            "examples:\n"
            "  nudge-rag evaluate ../shared/data/scifact --k 10\n"
            "  nudge-rag evaluate docs/ --queries heldout.json\n"
            "  nudge-rag evaluate storage/ --queries val.json --compare-to storage/nudge_state --plot cmp.png"
        ),
    )
    ev.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    ev.add_argument(
        "--queries",
        metavar="FILE",
        help="judged queries: LlamaIndex EmbeddingQAFinetuneDataset JSON, or a BEIR folder",
    )
    ev.add_argument("--split", help="BEIR qrels split (default: test)")
    ev.add_argument("--k", type=_positive_int, default=10, help="cutoff (default 10)")
    ev.add_argument("--compare-to", metavar="STATE_DIR", help="before = the originals kept there")
    ev.add_argument("--plot", metavar="PNG", help="with --compare-to: save the before/after bars")
    ev.add_argument("--out", metavar="FILE", help="write the metrics as JSON")
    _common(ev)
    ev.set_defaults(func=_cmd_evaluate)

    rv = sub.add_parser(
        "revert",
        help="write the original vectors back (the store exactly as before)",
        formatter_class=fmt,
        description="Write back every original vector kept in the state folder by `finetune`.",
        epilog=(
            "examples:\n"
            "  nudge-rag revert docs/                        # state in ./nudge_store/nudge_state/docs\n"
            "  nudge-rag revert storage/ --state-dir storage/nudge_state"
        ),
    )
    rv.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    rv.add_argument(
        "--state-dir", metavar="DIR", help="the state folder (default: inside the store)"
    )
    _common(rv)
    rv.set_defaults(func=_cmd_revert)

    bn = sub.add_parser(
        "bench",
        help="reproduce the README's benchmark tables from ../shared/data",
        formatter_class=fmt,
        description=(
            "Run benchmarks/bench_quality.py (the paper's protocol: NUDGE, the authors'\n"
            "nudge-ft, a linear adaptor, full model fine-tuning) and benchmarks/bench_scale.py\n"
            "from a checkout of the repository. Full runs take hours; --quick takes minutes.\n"
            "The reference rows need `pip install -r benchmarks/requirements.txt`."
        ),
        epilog="examples:\n  nudge-rag bench --quick\n  nudge-rag bench --dry-run",
    )
    bn.add_argument(
        "--quick", action="store_true", help="SciFact, no model training, N=100k scale run"
    )
    bn.add_argument("--data", metavar="DIR", help="BEIR folder (default: ../shared/data)")
    bn.add_argument("--dry-run", action="store_true", help="print the commands only")
    bn.set_defaults(func=_cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (exit 2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "quiet", False):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    from nudge_rag.errors import NudgeError

    try:
        return int(args.func(args))
    except NudgeError as exc:
        if args.debug:
            raise
        print(f"nudge-rag: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written
        if args.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"nudge-rag: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nudge-rag: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: one line, exit 1
        if args.debug:
            raise
        print(
            f"nudge-rag: error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
