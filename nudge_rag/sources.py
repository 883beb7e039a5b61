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
Importing this module imports the standard library only; numpy, the frameworks and the store
clients are imported when a source of theirs is opened.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nudge_rag.errors import (
    ConfigError,
    DatasetError,
    DimensionMismatchError,
    NudgeError,
    StateError,
    UnsupportedStoreError,
    require,
)

if TYPE_CHECKING:
    from nudge_rag.evaluation import Comparison, EvaluationResult
    from nudge_rag.experiment import ExperimentRow
    from nudge_rag.finetuner import FinetuneReport, NudgeEmbeddingFinetuner, RevertReport
    from nudge_rag.stores import VectorStoreAdapter

__all__ = [
    "DEFAULT_CHUNK_CHARS",
    "DEFAULT_STORE",
    "DOC_SUFFIXES",
    "SOURCE_KINDS",
    "BeirRun",
    "Source",
    "SourceRun",
    "bench_commands",
    "chunk_text",
    "default_data_folder",
    "detect_kind",
    "finetune_beir",
    "input_file",
    "load_llm",
    "open_source",
    "read_documents",
]

logger = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
DOC_SUFFIXES = (".txt", ".md", ".markdown")
DEFAULT_STORE = "nudge_store"
DEFAULT_CHUNK_CHARS = 1000
PAGE = 1000

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

Kind = Literal["beir", "documents", "llamaindex", "chroma"]
Mode = Literal["build", "open", "read"]


def default_data_folder() -> Path | None:
    """``../shared/data/scifact`` beside the working directory or beside the repository."""
    for base in (Path.cwd(), _HERE.parent):
        cand = (base / ".." / "shared" / "data" / "scifact").resolve()
        if cand.is_dir():
            return cand
    return None


def shell_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a shell word that pastes back as the same path (never read as an option)."""
    s = os.fspath(path)
    return shlex.quote(f"./{s}" if s.startswith("-") else s)


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
        files, base = _doc_files(root, Path(exclude).resolve() if exclude else None), root
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


# ---------------------------------------------------------------------------------------------
# The LLM factory (``--llm module:function``)
# ---------------------------------------------------------------------------------------------
def load_llm(spec: str) -> Any:
    """Import ``module:function`` and return the LLM it makes.

    ``function()`` (no required argument) is called and must return an LLM (LlamaIndex,
    LangChain, or a callable ``prompt -> str``); a function that takes one argument is used as
    the LLM itself (``function(prompt) -> str``). The working directory is importable.

    Raises:
        ConfigError: Malformed spec, module or attribute not found, or the factory failed.
    """
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        msg = f"--llm must be module:function (e.g. my_llms:make_llm); received {spec!r}"
        raise ConfigError(msg)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:
        msg = f"--llm {spec}: cannot import module {mod_name!r} ({type(exc).__name__}: {exc})"
        raise ConfigError(msg) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            msg = f"--llm {spec}: module {mod_name!r} has no attribute {attr!r}"
            raise ConfigError(msg)
        obj = getattr(obj, part)
    if not callable(obj):
        msg = f"--llm {spec}: {attr!r} is a {type(obj).__name__}, not a function"
        raise ConfigError(msg)
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
        raise ConfigError(msg) from exc
    if llm is None:
        msg = f"--llm {spec}: the factory returned None; it must return an LLM or a callable"
        raise ConfigError(msg)
    return llm


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
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
    if _doc_files(path):
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


@dataclass
class Source:
    """What a SOURCE resolved to (see :func:`open_source`).

    Attributes:
        kind: ``"beir"``, ``"documents"``, ``"llamaindex"`` or ``"chroma"``.
        path: The SOURCE path.
        store: The object the finetuner takes (None for BEIR, and for documents only read).
        embedder: The embedding model of the store (ours: ``embed_documents`` /
            ``embed_queries``).
        state_dir: Where fine-tuning state is kept by default (beside the store).
        label: A short description for messages.
        store_dir: The folder that holds the store (the Chroma directory, or the LlamaIndex
            persist dir); None for BEIR.
        collection: The Chroma collection name, or the LlamaIndex index id when one was given.
        persist_dir: A LlamaIndex index's folder: the finetuner saves the index there
            (crash-safely) after it writes vectors and after a revert.
        store_id: A name of the store that moves with its folder (the LlamaIndex index id).
        chunk_size: The chunk length a documents source was read with.
    """

    kind: Kind
    path: Path
    store: Any = None
    embedder: Any = None
    state_dir: Path | None = None
    label: str = ""
    store_dir: Path | None = None
    collection: str | None = None
    persist_dir: Path | None = None
    store_id: str | None = None
    chunk_size: int = DEFAULT_CHUNK_CHARS
    _chunks: dict[str, str] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ reading
    def adapter(self) -> VectorStoreAdapter:
        """The store adapter (checked to hold records)."""
        from nudge_rag.stores import adapter_for

        if self.store is None:
            msg = f"the {self.label} has no vector store to read"
            raise ConfigError(msg)
        adapter = adapter_for(self.store)
        if adapter.count() == 0:
            msg = f"empty corpus: the {self.label} holds no records"
            raise DatasetError(msg)
        return adapter

    def chunks(self) -> dict[str, str]:
        """Chunk id -> text (what training queries are written for)."""
        if self._chunks is not None:
            return self._chunks
        if self.kind == "beir":
            from nudge_rag.evaluation import load_beir

            return load_beir(self.path, qrels=[], check_ids=False).corpus
        out: dict[str, str] = {}
        for page in self.adapter().iter_pages(PAGE, with_documents=True):
            for rid, text in zip(page.ids, page.texts, strict=True):
                if text:
                    out[rid] = text
        if not out:
            msg = f"the {self.label} holds no chunk texts to write queries for"
            raise DatasetError(msg)
        return out

    def generate_queries(
        self,
        llm: Any = None,
        *,
        queries_per_chunk: int = 2,
        max_chunks: int | None = None,
        seed: int = 0,
        show_progress: bool = False,
    ) -> Any:
        """Training queries for this source's chunks (see :func:`nudge_rag.generate_queries`).

        Returns:
            A :class:`~nudge_rag.querygen.GeneratedDataset` (``save_json`` writes LlamaIndex's
            ``EmbeddingQAFinetuneDataset`` JSON).

        Raises:
            DatasetError: No query could be generated.
        """
        from nudge_rag.querygen import generate_queries

        chunks = self.chunks()
        ds = generate_queries(
            chunks,
            llm,
            queries_per_chunk=queries_per_chunk,
            max_chunks=max_chunks,
            seed=seed,
            show_progress=show_progress,
        )
        if not ds.queries:
            msg = f"no query could be generated for the {len(chunks)} chunks of {self.label}"
            raise DatasetError(msg)
        return ds

    def _ranked(
        self, queries: Any, k: int, vectors: dict[str, Any] | None
    ) -> tuple[list[list[str]], set[str]]:
        """Top-``k`` ids per query vector by exact search with the store's similarity (the
        vectors of ``vectors``' ids replaced by its values); also every id seen."""
        import numpy as np

        from nudge_rag.evaluation import topk_rows

        if self.kind == "beir":
            corpus = self.chunks()
            metric = "dot"
            pages: Iterable[tuple[list[str], Any]] = [
                (list(corpus), self.embedder.embed_documents(list(corpus.values())))
            ]
        else:
            adapter = self.adapter()
            metric = adapter.metric
            pages = (
                (list(p.ids), p.embeddings) for p in adapter.iter_pages(PAGE, with_documents=False)
            )
        q = np.asarray(queries, dtype=np.float64)
        if metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        best_s = np.zeros((len(q), 0))
        best_i = np.zeros((len(q), 0), dtype=np.int64)
        ids_all: list[str] = []
        for ids, emb in pages:
            v = np.array(emb, dtype=np.float64)
            if v.shape[0] == 0:
                continue
            if v.shape[1] != q.shape[1]:
                msg = (
                    f"the store holds vectors of width {v.shape[1]} but the embedding model "
                    f"gives {q.shape[1]}: the store was built with another embedding model"
                )
                raise DimensionMismatchError(msg)
            for j, rid in enumerate(ids if vectors is not None else ()):
                if rid in vectors:  # type: ignore[operator]
                    v[j] = vectors[rid]  # type: ignore[index]
            if metric == "cosine":
                v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            s = q @ v.T
            if metric == "l2":
                s = 2 * s - (v * v).sum(axis=1)[None, :]  # -|q - v|^2 up to a per-query constant
            cand_s = np.concatenate([best_s, s], axis=1)
            cand_i = np.concatenate(
                [best_i, np.broadcast_to(len(ids_all) + np.arange(len(ids)), s.shape)], axis=1
            )
            top = topk_rows(cand_s, min(k, cand_s.shape[1]))  # ties: the earlier record first
            best_s = np.take_along_axis(cand_s, top, axis=1)
            best_i = np.take_along_axis(cand_i, top, axis=1)
            ids_all.extend(ids)
        return [[ids_all[i] for i in row] for row in best_i], set(ids_all)

    def evaluate(
        self,
        dataset: Any,
        k: int = 10,
        *,
        name: str = "",
        split: str | None = None,
        vectors: dict[str, Any] | None = None,
    ) -> EvaluationResult:
        """NDCG@k, Recall@k, MRR@k and hit rate of exact search over the source's vectors.

        Args:
            dataset: Judged queries (see :meth:`~nudge_rag.evaluation.EvalQueries.from_any`);
                for a BEIR source, its own folder by default.
            k: Cutoff.
            name: A label for the result.
            split: BEIR qrels split.
            vectors: id -> vector to use instead of the stored one (e.g. kept originals).

        Raises:
            DatasetError: No relevant id of the queries is in the store.
        """
        from nudge_rag.evaluation import EvalQueries, evaluate

        data = EvalQueries.from_any(self.path if dataset is None else dataset, split=split)
        texts = sorted(set(data.queries))
        ranked, seen = self._ranked(self.embedder.embed_queries(texts), k, vectors)
        relevant = {d for r in data.relevance for d, g in r.items() if g > 0}
        if not relevant & seen:
            msg = (
                f"none of the {len(relevant)} relevant ids in the queries (e.g. "
                f"{sorted(relevant)[:3]}) is in the {self.label}: the queries' relevant_docs must "
                f"name this store's chunk ids (e.g. {sorted(seen)[:2]})"
            )
            raise DatasetError(msg)
        lookup = dict(zip(texts, ranked, strict=True))
        return evaluate(lookup.__getitem__, data, k, name=name)

    def compare(
        self,
        dataset: Any,
        k: int = 10,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        split: str | None = None,
    ) -> Comparison:
        """Before (the originals kept in ``state_dir``) against after (the fine-tuned vectors).

        The store is only read: the state's originals and targets stand in for its vectors.

        Raises:
            StateError: ``state_dir`` holds no fine-tuning state.
        """
        from nudge_rag.evaluation import compare

        state = _load_state(Path(state_dir) if state_dir is not None else self._state_dir())
        originals = {rid: state.originals[r] for r, rid in enumerate(state.ids)}
        targets = {rid: state.targets[r] for r, rid in enumerate(state.ids)}
        before = self.evaluate(dataset, k, name="before", split=split, vectors=originals)
        after = self.evaluate(dataset, k, name="after", split=split, vectors=targets)
        return compare(before, after)

    # ------------------------------------------------------------------ writing
    def finetuner(
        self, state_dir: str | os.PathLike[str] | None = None, **options: Any
    ) -> NudgeEmbeddingFinetuner:
        """A :class:`~nudge_rag.NudgeEmbeddingFinetuner` over this source's store, its state
        beside the store (or in ``state_dir``); ``options`` are the finetuner's own."""
        from nudge_rag.finetuner import NudgeEmbeddingFinetuner

        if self.kind == "beir" or self.store is None:
            msg = (
                "a BEIR folder is never modified (its fine-tuning runs in memory, see "
                "finetune_beir)"
            )
            raise ConfigError(msg)
        return NudgeEmbeddingFinetuner(
            self.store,
            embed_model=self.embedder,
            state_dir=Path(state_dir) if state_dir is not None else self._state_dir(),
            persist_dir=self.persist_dir,
            store_id=self.store_id,
            **options,
        )

    def finetune(
        self,
        train_queries: Any = None,
        *,
        eval_queries: str | os.PathLike[str] | None = None,
        k: int = 10,
        state_dir: str | os.PathLike[str] | None = None,
        method: Literal["nudge-n", "nudge-m"] = "nudge-n",
        gamma: float | None = None,
        objective: str = "top1",
        seed: int = 0,
        llm: Any = None,
        queries_per_chunk: int = 2,
        max_chunks: int | None = None,
        show_progress: bool = False,
    ) -> SourceRun:
        """Fine-tune the store in place (see :class:`~nudge_rag.NudgeEmbeddingFinetuner`).

        Args:
            train_queries: Training queries (a dataset, its JSON path, or pairs); None: written
                from the chunks by ``llm`` (or the offline generator).
            eval_queries: Held-out judged queries: before vs after at ``k``, exact search.
            k: Cutoff of the held-out evaluation.
            state_dir: Where the originals are kept (default: beside the store).
            method, gamma, objective, seed, llm, queries_per_chunk, max_chunks, show_progress:
                The finetuner's options of the same names.

        Returns:
            A :class:`SourceRun` (its ``report`` is the finetuner's).
        """
        ft = self.finetuner(
            state_dir,
            method=method,
            gamma=gamma,
            objective=objective,
            seed=seed,
            llm=llm,
            queries_per_chunk=queries_per_chunk,
            max_chunks=max_chunks,
            show_progress=show_progress,
        )
        n = self.adapter().count()
        logger.info("fine-tuning %s: %d records", self.label, n)
        ft.finetune(train_queries)
        rep = ft.report
        assert rep is not None
        cmp = None
        if eval_queries is not None and rep.written:
            cmp = self.compare(eval_queries, k, rep.state_dir)
        stats = getattr(ft.generated, "stats", None)
        if isinstance(train_queries, (str, os.PathLike)):
            how = f"queries from {os.fspath(train_queries)}"
        elif train_queries is not None:
            how = "the given queries"
        else:
            how = "queries written by " + (stats.generator if stats is not None else "the LLM")
        return SourceRun(self, rep, how, stats, cmp, eval_queries, Path(rep.state_dir))

    def revert(self, state_dir: str | os.PathLike[str] | None = None) -> RevertReport:
        """Write back the original vectors kept in the state (default: beside the store).

        Returns:
            The finetuner's :class:`~nudge_rag.finetuner.RevertReport`; its ``note`` says why
            nothing was restored when the state says nothing was written or all was reverted.

        Raises:
            StateError: There is no fine-tuning state where it was looked for (the message says
                where): the store cannot be reverted from here.
            ConfigError: A BEIR folder (never modified).
        """
        if self.kind == "beir":
            msg = "a BEIR folder is never modified (its fine-tuning runs in memory): nothing to revert"
            raise ConfigError(msg)
        where = Path(state_dir) if state_dir is not None else self._state_dir()
        _load_state(where)  # missing state: an error that says where it looked
        return self.finetuner(where).revert()

    def _state_dir(self) -> Path:
        if self.state_dir is None:
            msg = f"the {self.label} has no default state folder: pass state_dir"
            raise ConfigError(msg)
        return self.state_dir

    def revert_args(self, state_dir: str | os.PathLike[str] | None = None) -> list[str]:
        """Arguments of ``nudge-rag revert`` that reach this store and its state, each a quoted
        shell word: the store's folder, ``--collection`` where the folder holds several, and
        ``--state-dir`` where the state is not in its default place."""
        assert self.store_dir is not None
        args = [shell_path(self.store_dir)]
        if self.kind in ("documents", "chroma") and self.collection is not None:
            try:
                several = len(_collection_names(_chroma_client(self.store_dir))) > 1
            except Exception:  # cannot tell: naming the collection is never wrong
                several = True
            if several:
                args += ["--collection", shlex.quote(self.collection)]
        elif self.kind == "llamaindex" and self.collection is not None:
            args += ["--collection", shlex.quote(self.collection)]
        if state_dir is not None and Path(state_dir).resolve() != self._state_dir().resolve():
            args += ["--state-dir", shell_path(state_dir)]
        return args


def _load_state(state_dir: Path) -> Any:
    """The fine-tuning state in ``state_dir``, or StateError saying where it looked."""
    from nudge_rag.state import FinetuneState

    state = FinetuneState.load(state_dir) if state_dir.is_dir() else None
    if state is None:
        msg = (
            f"no fine-tuning state at {str(state_dir)!r}, so nothing can be reverted from it. A "
            "fine-tune that writes vectors keeps the originals there (one that wrote nothing "
            "keeps none: the store is as it was); if it ran with --state-dir DIR, pass the same "
            "--state-dir; if the state folder was deleted, the originals went with it"
        )
        raise StateError(msg)
    return state


@dataclass(frozen=True)
class SourceRun:
    """What :meth:`Source.finetune` did.

    Attributes:
        source: The source fine-tuned.
        report: The finetuner's :class:`~nudge_rag.FinetuneReport`.
        how: Where the training queries came from.
        generation: Query generation statistics (None when queries were given).
        evaluation: Held-out before/after comparison (None without ``eval_queries``, or when
            nothing was written).
        eval_queries: The held-out queries file, if any.
        state_dir: The state folder used.
    """

    source: Source
    report: FinetuneReport
    how: str
    generation: Any
    evaluation: Comparison | None
    eval_queries: str | os.PathLike[str] | None
    state_dir: Path

    def summary(self) -> str:
        """Readable lines: what was fine-tuned, the report, the held-out comparison."""
        rep, src = self.report, self.source
        lines = [f"Fine-tuned {src.label}: {rep.n_records} records, {self.how}."]
        st = self.generation
        if st is not None:
            lines.append(
                f"generated {st.n_queries} training queries for {st.n_chunks} chunks "
                f"({st.generator}; {st.n_failed} failed) in {st.seconds:.1f}s"
            )
        lines.append(rep.summary())
        if rep.written:
            if src.persist_dir is not None:
                lines.append(f"index persisted to {src.persist_dir} (crash-safe)")
            lines.append(f"state (originals, for revert) in {rep.state_dir}")
        if self.evaluation is not None:
            lines += [f"\nheld-out queries from {self.eval_queries}:", self.evaluation.table()]
        elif self.eval_queries is not None:
            lines.append("nothing was written: no before/after evaluation")
        return "\n".join(lines)

    def revert_command(self, prog: str = "nudge-rag") -> str:
        """The command that undoes this run, ready to paste (paths quoted for the shell)."""
        return " ".join([prog, "revert", *self.source.revert_args(self.state_dir)])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values."""
        out: dict[str, Any] = {
            "source": str(self.source.path),
            "kind": self.source.kind,
            "report": self.report.to_dict(),
        }
        if self.evaluation is not None:
            out["evaluation"] = self.evaluation.to_dict()
        return out


# ---------------------------------------------------------------------------------------------
# Opening each kind
# ---------------------------------------------------------------------------------------------
def _collection_name(name: str) -> str:
    """A valid Chroma collection name (3-512 of [A-Za-z0-9._-], alphanumeric at both ends)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:200]
    if len(s) < 3:
        s = f"docs_{s}" if s else "documents"
    return s


def _chroma_client(path: Path) -> Any:
    chromadb = require("chromadb", "chroma")
    # Absolute: chromadb shares one client system per path string within a process.
    return chromadb.PersistentClient(path=str(path.resolve()))  # type: ignore[attr-defined]


def _collection_names(client: Any) -> list[str]:
    return sorted(getattr(c, "name", c) for c in client.list_collections())


def _open_chroma(path: Path, collection: str | None, embedder: Any) -> Source:
    try:
        client = _chroma_client(path)
        names = _collection_names(client)
    except NudgeError:
        raise
    except Exception as exc:
        msg = f"cannot open the Chroma directory {str(path)!r}: {type(exc).__name__}: {exc}"
        raise DatasetError(msg) from exc
    if collection is None:
        if len(names) != 1:
            msg = (
                f"the Chroma directory {str(path)!r} holds {len(names)} collections "
                f"({', '.join(names) or 'none'}); choose one with --collection NAME"
            )
            raise ConfigError(msg)
        collection = names[0]
    elif collection not in names:
        msg = (
            f"--collection {collection!r} is not in the Chroma directory {str(path)!r} "
            f"(it holds: {', '.join(names) or 'no collection'})"
        )
        raise ConfigError(msg)
    col = client.get_collection(collection)
    if col.count() == 0:
        msg = (
            f"empty corpus: the Chroma collection {collection!r} in {str(path)!r} holds no records"
        )
        raise DatasetError(msg)
    return Source(
        "chroma",
        path,
        store=col,
        embedder=embedder(),
        state_dir=path / "nudge_state" / collection,
        label=f"Chroma collection {collection!r} in {path}",
        store_dir=path,
        collection=collection,
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
    name = _collection_name(collection or (path.stem if path.is_file() else path.name))
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
    client = _chroma_client(store)
    model = embedder()
    if name in _collection_names(client):
        col = client.get_collection(name)
        got = col.get(include=["documents"])
        stored = dict(zip(got["ids"], got["documents"] or [], strict=False))
        if stored != chunks:
            changed = sum(1 for k, v in chunks.items() if stored.get(k) != v)
            as_is = f"nudge-rag finetune {shell_path(store)}"
            if len(_collection_names(client)) > 1:
                as_is += f" --collection {shlex.quote(name)}"
            msg = (
                f"the store {str(store)!r} already holds a collection {name!r} built from other "
                f"documents ({len(stored)} stored chunks; {changed} of the folder's "
                f"{len(chunks)} chunks are new or changed; --chunk-size changes them too). To "
                "build a collection for these documents, pass another --store or --collection; "
                f"to fine-tune the stored collection as it is: {as_is}"
            )
            raise ConfigError(msg)
        logger.info("reusing collection %r in %s (%d chunks)", name, store, len(chunks))
    else:
        ids, texts = list(chunks), list(chunks.values())
        logger.info(
            "embedding %d chunks of %s into %s (collection %r)", len(ids), path, store, name
        )
        vecs = model.embed_documents(texts)
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
    require("llama_index.core", "llamaindex")
    for name in ("docstore.json", "index_store.json", "default__vector_store.json"):
        f = path / name
        if not f.exists():
            msg = f"{str(path)!r} looks like a persisted LlamaIndex index but has no {name}"
            raise DatasetError(msg)
        if f.is_dir():
            msg = f"{str(f)!r} is a directory; expected LlamaIndex's {name} file"
            raise DatasetError(msg)
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            msg = f"{str(f)!r} cannot be read as JSON ({exc}); the index cannot be loaded"
            raise DatasetError(msg) from exc
    from llama_index.core import StorageContext, load_index_from_storage

    from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

    model = embedder()
    try:
        ctx = StorageContext.from_defaults(persist_dir=str(path))
        index = load_index_from_storage(
            ctx, index_id=index_id, embed_model=as_llamaindex_embedding(model)
        )
    except Exception as exc:
        msg = f"cannot load the LlamaIndex index in {str(path)!r}: {type(exc).__name__}: {exc}"
        raise DatasetError(msg) from exc
    if not getattr(index, "vector_store", None) or not hasattr(index, "as_retriever"):
        msg = f"the LlamaIndex index in {str(path)!r} is a {type(index).__name__}, not a VectorStoreIndex"
        raise UnsupportedStoreError(msg)
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


# ---------------------------------------------------------------------------------------------
# BEIR folders: the paper's protocol, and the benchmarks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BeirRun:
    """What :func:`finetune_beir` measured: test metrics without and with each method.

    Attributes:
        name: The data set (folder name).
        n_records: Records in the corpus.
        n_train, n_val, n_test: Queries of the paper's split.
        n_covered: Test queries with a relevant record some training query also points to.
        rows: One :class:`~nudge_rag.experiment.ExperimentRow` per method, "no fine-tuning"
            first.
    """

    name: str
    n_records: int
    n_train: int
    n_val: int
    n_test: int
    n_covered: int
    rows: list[ExperimentRow]

    def summary(self) -> str:
        """The split, a table of test metrics, and each method's gain."""
        lines = [
            f"{self.name}: {self.n_records} records; paper split {self.n_train} train / "
            f"{self.n_val} validation / {self.n_test} test queries ({self.n_covered} covered, "
            f"{self.n_test - self.n_covered} uncovered).",
            "",
            f"{'':16} {'NDCG@10':>8} {'Recall@10':>9} {'covered':>8} {'uncovered':>9} "
            f"{'γ':>8} {'moved':>6} {'seconds':>8}",
        ]
        for r in self.rows:
            tuned = r.gamma is not None
            gamma = f"{r.gamma:.4g}" if tuned else ""
            moved, secs = (str(r.n_moved), f"{r.seconds:.2f}") if tuned else ("", "")
            lines.append(
                f"{r.name:16} {r.ndcg:8.4f} {r.recall:9.4f} {r.ndcg_covered:8.4f} "
                f"{r.ndcg_uncovered:9.4f} {gamma:>8} {moved:>6} {secs:>8}"
            )
        base = self.rows[0]
        for r in self.rows[1:]:
            lines.append(
                f"{r.name}: test NDCG@10 {base.ndcg:.4f} -> {r.ndcg:.4f} "
                f"({100 * (r.ndcg - base.ndcg):+.1f} points)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (``rows``: one dict per method)."""
        from dataclasses import asdict

        return {
            "name": self.name,
            "n_records": self.n_records,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "n_covered": self.n_covered,
            "rows": [asdict(r) for r in self.rows],
        }


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
    from nudge_rag.experiment import prepare_beir, run_methods

    model = embed_model if embed_model is not None else default_embedder(show_progress)
    exp = prepare_beir(folder, model, show_progress=show_progress)
    rows = run_methods(exp, list(methods), objective=objective)
    n_cov = int(exp.covered.sum())
    return BeirRun(
        exp.name, len(exp.doc_ids), len(exp.train), len(exp.val), len(exp.test), n_cov, rows
    )


def _benchmarks_dir() -> Path | None:
    cand = _HERE.parent / "benchmarks"
    return cand if (cand / "bench_quality.py").is_file() else None


def bench_commands(
    data: str | os.PathLike[str] | None = None, *, quick: bool = False
) -> list[list[str]]:
    """The commands that reproduce the README's benchmark tables (from a checkout).

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
