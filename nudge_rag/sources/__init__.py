"""Sources: a folder on disk resolved to something the finetuner takes, and what to do with it.

A SOURCE (what ``nudge-rag`` takes as its argument, and :func:`open_source` here) is one of:

* a BEIR folder (``corpus.jsonl`` + ``qrels/``): the NUDGE paper's protocol
  (:func:`finetune_beir`), or an exact-search baseline;
* a folder of ``.txt`` / ``.md`` documents (or one such file): chunked by paragraphs
  (:func:`read_documents`), embedded into a persistent Chroma collection, fine-tuned in place;
* a persisted LlamaIndex index (``docstore.json`` + ``default__vector_store.json``): fine-tuned in
  memory, then saved back crash-safely (:func:`nudge_rag.persist.save_store`);
* a Chroma directory (``chroma.sqlite3``), one collection of it.

Example:
    >>> src = open_source("docs/", store="nudge_store")            # doctest: +SKIP
    >>> run = src.finetune(gamma=0.3)                              # doctest: +SKIP
    >>> print(run.summary())                                       # doctest: +SKIP
    >>> src.revert()                     # the store exactly as before  # doctest: +SKIP

The fine-tuning state of a store opened here lives beside it (``<store>/nudge_state/...``).
Importing this package imports the standard library only; numpy, the frameworks and the store
clients are imported when a source of theirs is opened.

::

    __init__.py    open_source / detect_kind (what a SOURCE is), the embedder (default or
                   --embed-model), finetune_beir
    documents.py   .txt / .md files read and chunked; paths checked and quoted
    source.py      Source (chunks, generate_queries, evaluate, finetune, compare, revert), SourceRun
    chroma.py      Chroma directories: open a collection, build one from chunks
    llamaindex.py  a persisted LlamaIndex index, loaded
    beir.py        the paper's protocol on a BEIR folder (BeirRun)
    llm.py         --llm module:function
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from nudge_rag.errors import ConfigError, DatasetError, UnsupportedStoreError
from nudge_rag.sources.beir import BeirRun, run_paper_protocol
from nudge_rag.sources.chroma import build_collection, collection_name, open_collection
from nudge_rag.sources.documents import (
    DEFAULT_CHUNK_CHARS,
    DOC_SUFFIXES,
    chunk_text,
    doc_files,
    input_file,
    read_documents,
    shell_path,
)
from nudge_rag.sources.llamaindex import load_index
from nudge_rag.sources.llm import load_llm
from nudge_rag.sources.source import PAGE, Kind, Mode, Source, SourceRun, plot_compared, state_curve

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHUNK_CHARS",
    "DEFAULT_STORE",
    "DOC_SUFFIXES",
    "NO_DATA",
    "PAGE",
    "SOURCE_KINDS",
    "BeirRun",
    "Kind",
    "Mode",
    "Source",
    "SourceRun",
    "bench_commands",
    "chunk_text",
    "default_data_folder",
    "default_embedder",
    "detect_kind",
    "embedder_from",
    "finetune_beir",
    "input_file",
    "load_llm",
    "open_source",
    "plot_compared",
    "read_documents",
    "shell_path",
    "state_curve",
]

#: The repository root (``benchmarks/`` and ``../shared/data`` are found from it).
_REPO = Path(__file__).resolve().parents[2]
DEFAULT_STORE = "nudge_store"
#: The shipped model's id (``nudge_rag.embedding.DEFAULT_MODEL_ID``; numpy is not imported here).
_DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

SOURCE_KINDS = (
    "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv); a folder of .txt/.md documents; "
    "a persisted LlamaIndex index (docstore.json, default__vector_store.json); or a Chroma "
    "directory (chroma.sqlite3)"
)
NO_DATA = (
    "no data folder given, and ../shared/data/scifact was not found. Pass a BEIR-format folder: "
    "nudge-rag finetune PATH, where PATH holds corpus.jsonl, queries.jsonl and qrels/*.tsv "
    "(train.tsv and test.tsv at least), e.g. SciFact or NFCorpus from the BEIR benchmark."
)


def default_data_folder() -> Path | None:
    """``../shared/data/scifact`` beside the working directory or beside the repository."""
    for base in (Path.cwd(), _REPO):
        cand = (base / ".." / "shared" / "data" / "scifact").resolve()
        if cand.is_dir():
            return cand
    return None


def detect_kind(path: str | os.PathLike[str]) -> Kind:
    """Which kind of SOURCE ``path`` is (see :data:`SOURCE_KINDS`).

    Raises:
        DatasetError: It does not exist, or is an empty folder.
        UnsupportedStoreError: It is a file or folder of something else.
    """
    path = Path(path)
    if not path.exists():
        msg = f"SOURCE {str(path)!r} does not exist; expected {SOURCE_KINDS}"
        raise DatasetError(msg)
    if path.is_file():
        if path.suffix.lower() in DOC_SUFFIXES:
            return "documents"
        msg = (
            f"SOURCE {str(path)!r} is a file of an unknown kind; expected {SOURCE_KINDS} "
            f"(or a single {'/'.join(DOC_SUFFIXES)} file)"
        )
        raise UnsupportedStoreError(msg)
    if (path / "corpus.jsonl").exists() and (path / "qrels").is_dir():
        return "beir"
    if (path / "chroma.sqlite3").exists():
        return "chroma"
    if (path / "docstore.json").exists():
        return "llamaindex"
    if doc_files(path):
        return "documents"
    entries = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    if not entries:
        msg = f"empty corpus: {str(path)!r} is an empty folder; expected {SOURCE_KINDS}"
        raise DatasetError(msg)
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
    msg = (
        f"unknown store: {str(path)!r} (holding {shown}) is none of: {SOURCE_KINDS}. LangChain "
        "FAISS / Qdrant folders and other stores are supported from Python "
        "(NudgeEmbeddingFinetuner(store)), not from this command"
    )
    raise UnsupportedStoreError(msg)


def default_embedder(show_progress: bool = False) -> Any:
    """The local all-MiniLM-L6-v2 (offline, disk-cached). Tests replace this function."""
    from nudge_rag.embedding import LocalEmbedder

    return LocalEmbedder(show_progress=show_progress)


def embedder_from(spec: str | os.PathLike[str] | None, show_progress: bool = False) -> Any:
    """The embedding model ``--embed-model`` names: None (no option, or the shipped model's id)
    for :func:`default_embedder`, else a :class:`~nudge_rag.embedding.LocalEmbedder` of the
    sentence-transformers folder ``spec`` (or of a Hugging Face id found in the local cache:
    nothing is downloaded). The folder is checked now; the model is loaded when first used.

    Raises:
        ConfigError: ``spec`` is neither such a folder nor a cached model id.
    """
    if spec is None or str(spec) in (_DEFAULT_MODEL, _DEFAULT_MODEL.split("/")[1]):
        return None
    folder = Path(spec).expanduser()
    if not folder.exists() and "/" in str(spec) and not str(spec).startswith((".", "/", "~")):
        try:  # an id (org/name) of a model in the Hugging Face cache, offline
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(spec), local_files_only=True))
        except Exception as exc:
            logger.debug("%s is not in the Hugging Face cache: %s", spec, exc)
    if not any((folder / f).is_file() for f in ("modules.json", "config.json")):
        msg = (
            f"--embed-model {os.fspath(spec)!r} is not a folder holding a sentence-transformers "
            "model (modules.json or config.json), nor the id of one in the local Hugging Face "
            "cache; pass the folder of the model that built the store (nothing is downloaded)"
        )
        raise ConfigError(msg)
    from nudge_rag.embedding import LocalEmbedder

    return LocalEmbedder(model_path=folder, show_progress=show_progress)


def _open_chroma(path: Path, collection: str | None, embedder: Any) -> Source:
    col, name = open_collection(path, collection)
    return Source(
        "chroma",
        path,
        store=col,
        embedder=embedder(),
        state_dir=path / "nudge_state" / name,
        label=f"Chroma collection {name!r} in {path}",
        store_dir=path,
        collection=name,
    )


def _open_documents(
    path: Path,
    store: Path,
    collection: str | None,
    chunk_size: int,
    embedder: Any,
    mode: Mode,
) -> Source:
    """Chunk the documents, and open (or build) their Chroma collection in ``store``."""
    name = collection_name(collection or (path.stem if path.is_file() else path.name))
    if mode == "read":  # only the chunks: nothing is opened, built or embedded
        chunks = read_documents(path, chunk_size, exclude=store)
        return Source("documents", path, label=f"documents in {path}", _chunks=chunks)
    if store.exists() and not store.is_dir():
        msg = f"--store {str(store)!r} is a file; expected a folder for the Chroma store"
        raise ConfigError(msg)
    if mode == "open":  # the store as it is (revert): the documents may have changed since
        if not (store / "chroma.sqlite3").exists():
            again = ["nudge-rag finetune", shell_path(path)]
            if store != Path(DEFAULT_STORE):
                again += ["--store", shell_path(store)]
            if collection is not None:
                again += ["--collection", shlex.quote(collection)]
            msg = (
                f"no store for {str(path)!r} at {str(store)!r}: run `{' '.join(again)}` first, "
                "or pass the --store it was built in"
            )
            raise DatasetError(msg)
        return replace(_open_chroma(store, name, embedder), kind="documents", path=path)
    chunks = read_documents(path, chunk_size, exclude=store)
    model = embedder()
    col = build_collection(store, name, chunks, model, source=path)
    return Source(
        "documents",
        path,
        store=col,
        embedder=model,
        state_dir=store / "nudge_state" / name,
        label=f"{len(chunks)} chunks of {path} (Chroma collection {name!r} in {store})",
        store_dir=store,
        collection=name,
        chunk_size=chunk_size,
        _chunks=chunks,
    )


def _open_llamaindex(path: Path, index_id: str | None, embedder: Any) -> Source:
    """Load a persisted LlamaIndex ``VectorStoreIndex`` (checked file by file first)."""
    index, model = load_index(path, index_id, embedder)
    return Source(
        "llamaindex",
        path,
        store=index,
        embedder=model,
        state_dir=path / "nudge_state",
        label=f"LlamaIndex index in {path}",
        store_dir=path,
        collection=index_id,
        persist_dir=path,
        # the index's own id moves with its folder (a path would not)
        store_id=f"llamaindex-index:{index.index_id}",
    )


def open_source(
    source: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | None = None,
    collection: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_CHARS,
    embed_model: Any = None,
    show_progress: bool = False,
    mode: Mode = "build",
) -> Source:
    """Resolve a SOURCE path to a :class:`Source`.

    Args:
        source: See the module docstring.
        store: Documents source: the Chroma store folder (default ``./nudge_store``).
        collection: Chroma collection (default: the only one; documents: the folder's name),
            or LlamaIndex index id.
        chunk_size: Documents source: maximum chunk length in characters.
        embed_model: The store's embedding model (default: the local all-MiniLM-L6-v2).
        show_progress: Progress bars while embedding.
        mode: ``"build"``: embed a documents folder into its collection if missing (and check
            an existing one holds the same chunks); ``"open"``: open the stored collection as it
            is (for revert); ``"read"``: a documents folder is only chunked.

    Raises:
        DatasetError, UnsupportedStoreError, ConfigError: The source cannot be used (the message
            says why).
    """
    path = Path(source).expanduser()
    kind = detect_kind(path)

    def embedder() -> Any:
        return embed_model if embed_model is not None else default_embedder(show_progress)

    if kind == "beir":
        model = embedder() if mode != "read" else None
        return Source("beir", path, embedder=model, label=f"BEIR folder {path}")
    if kind == "chroma":
        return _open_chroma(path, collection, embedder)
    if kind == "llamaindex":
        return _open_llamaindex(path, collection, embedder)
    store_dir = Path(store if store is not None else DEFAULT_STORE).expanduser()
    return _open_documents(path, store_dir, collection, chunk_size, embedder, mode)


def finetune_beir(
    folder: str | os.PathLike[str],
    methods: Iterable[str] = ("nudge-n", "nudge-m"),
    *,
    objective: str = "top1",
    embed_model: Any = None,
    show_progress: bool = False,
) -> BeirRun:
    """The NUDGE paper's protocol on a BEIR folder (nothing is written anywhere).

    Embeds the corpus and queries (local model by default), splits the judged queries 70/10/20
    (seed 0), fits each method on the training queries with γ chosen on the validation ones, and
    measures NDCG@10 / Recall@10 on the test queries before and after.
    """
    model = embed_model if embed_model is not None else default_embedder(show_progress)
    return run_paper_protocol(
        folder, methods, model, objective=objective, show_progress=show_progress
    )


def _benchmarks_dir() -> Path | None:
    cand = _REPO / "benchmarks"
    return cand if (cand / "bench_quality.py").is_file() else None


def bench_commands(
    data: str | os.PathLike[str] | None = None, *, quick: bool = False
) -> list[list[str]]:
    """The commands that reproduce the benchmark tables of docs/benchmarks.md (from a checkout).

    Raises:
        DatasetError: The ``benchmarks/`` folder is not here, or (``quick``) no SciFact folder.
    """
    bench = _benchmarks_dir()
    if bench is None:
        msg = (
            "the benchmarks/ folder is not here (an installed package ships without it): run "
            "`make bench` or `python benchmarks/bench_quality.py` from a checkout of the repository"
        )
        raise DatasetError(msg)
    py, folder = sys.executable, Path(data).expanduser() if data else None
    if quick:
        scifact = folder or default_data_folder()
        if scifact is None:
            raise DatasetError(NO_DATA)
        return [
            [py, str(bench / "bench_quality.py"), "--data", str(scifact), "--skip-finetune",
             "--methods", "noft,ours-n-top1-refit,ours-m-top1-refit,ref-n,ref-m"],
            [py, str(bench / "bench_scale.py"), "--n", "100000", "--methods", "floor", "ours-n", "ours-m"],
        ]  # fmt: skip
    return [
        [py, str(bench / "bench_quality.py")] + (["--data", str(folder)] if folder else []),
        [py, str(bench / "bench_scale.py")],
    ]
