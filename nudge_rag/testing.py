"""Test doubles shipped with nudge_rag, so that users can test their pipelines offline.

Like httpx's ``MockTransport``: small, deterministic, and free of any download.

The frameworks' own fakes do not rank anything (LlamaIndex's ``MockEmbedding`` returns one constant
vector for every text), so retrieval cannot be tested with them. :class:`BagOfWordsEmbedder` gives
texts that share words vectors that are close, and rankings that can be worked out by hand.

Importing this module imports numpy and the standard library only; :meth:`BagOfWordsEmbedder.
as_llamaindex` and :meth:`BagOfWordsEmbedder.as_langchain` import their framework when called.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from nudge_rag._util import check_positive_int
from nudge_rag.errors import ConfigError, require

__all__ = ["BagOfWordsEmbedder"]

_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _bucket(token: str, dim: int) -> int:
    # blake2b, not hash(): Python salts str hashes per process, which would change the vectors.
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % dim


class BagOfWordsEmbedder:
    """A deterministic bag-of-words embedding model for tests, with no download and no framework.

    Each text is lower-cased and split into word tokens (runs of ``[a-z0-9]``). Each token adds 1 to
    one coordinate, and the counts are scaled to unit L2 norm. The coordinate is either the token's
    position in ``vocabulary`` (tokens outside it are ignored), or, without a vocabulary, a stable
    hash of the token (blake2b, identical in every process) modulo ``dim``.

    A text with no counted token embeds to the all-zero vector.

    Args:
        dim: Width of the vectors when hashing (no vocabulary). Ignored with a vocabulary.
        vocabulary: Words that each get their own coordinate, in order; the width is its length.

    Example:
        >>> emb = BagOfWordsEmbedder(vocabulary=["cat", "dog", "fish"])
        >>> emb.embed(["the cat and the dog", "Fish!"]).astype(float).round(4).tolist()
        [[0.7071, 0.7071, 0.0], [0.0, 0.0, 1.0]]
        >>> BagOfWordsEmbedder(dim=64).embed(["hello world"]).shape
        (1, 64)
    """

    def __init__(self, dim: int = 64, *, vocabulary: Sequence[str] | None = None) -> None:
        if vocabulary is not None:
            words = [str(w).lower() for w in vocabulary]
            if not words:
                msg = "vocabulary: expected at least one word, received an empty sequence"
                raise ConfigError(msg)
            if len(set(words)) != len(words):
                msg = "vocabulary: expected distinct words, received duplicates"
                raise ConfigError(msg)
            self._index: dict[str, int] | None = {w: i for i, w in enumerate(words)}
            self._dim = len(words)
        else:
            self._index = None
            self._dim = check_positive_int(dim, "dim")

    @property
    def dim(self) -> int:
        """Width of the vectors this embedder returns."""
        return self._dim

    def __repr__(self) -> str:
        kind = "vocabulary" if self._index is not None else "hashed"
        return f"BagOfWordsEmbedder(dim={self._dim}, {kind})"

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        """Embed texts into a ``(len(texts), dim)`` float32 array of unit (or zero) rows."""
        if isinstance(texts, str):
            msg = "texts: expected a sequence of strings, received a single str"
            raise ConfigError(msg)
        texts = list(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float64)
        for row, text in enumerate(texts):
            for token in _tokens(text):
                if self._index is None:
                    out[row, _bucket(token, self._dim)] += 1.0
                else:
                    col = self._index.get(token)
                    if col is not None:
                        out[row, col] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out.astype(np.float32)

    def embed_one(self, text: str) -> list[float]:
        """Embed one text into a list of floats (the form both frameworks pass around)."""
        return [float(x) for x in self.embed([text])[0]]

    def as_llamaindex(self, *, embed_batch_size: int = 64) -> Any:
        """This embedder as a LlamaIndex ``BaseEmbedding`` (usable as ``embed_model=``)."""
        require("llama_index.core", "llamaindex")
        cls = _llamaindex_class()
        return cls(core=self, embed_batch_size=embed_batch_size)

    def as_langchain(self) -> Any:
        """This embedder as a LangChain ``Embeddings`` (usable as ``embedding=``)."""
        require("langchain_core", "langchain")
        cls = _langchain_class()
        return cls(self)


@functools.cache
def _llamaindex_class() -> type:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr

    class LlamaIndexBagOfWordsEmbedding(BaseEmbedding):
        """nudge_rag's deterministic bag-of-words embedder as a LlamaIndex embedding model."""

        _core: BagOfWordsEmbedder = PrivateAttr()

        def __init__(self, core: BagOfWordsEmbedder, **kwargs: Any) -> None:
            kwargs.setdefault("model_name", f"nudge-rag-bag-of-words-{core.dim}")
            super().__init__(**kwargs)
            self._core = core

        @classmethod
        def class_name(cls) -> str:
            return "NudgeRagBagOfWordsEmbedding"

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._core.embed_one(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._core.embed_one(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._core.embed_one(text)

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return [[float(x) for x in row] for row in self._core.embed(texts)]

    return LlamaIndexBagOfWordsEmbedding


@functools.cache
def _langchain_class() -> type:
    from langchain_core.embeddings import Embeddings

    class LangChainBagOfWordsEmbeddings(Embeddings):
        """nudge_rag's deterministic bag-of-words embedder as LangChain ``Embeddings``."""

        def __init__(self, core: BagOfWordsEmbedder) -> None:
            self.core = core

        def __repr__(self) -> str:
            return f"LangChainBagOfWordsEmbeddings({self.core!r})"

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[float(x) for x in row] for row in self.core.embed(texts)]

        def embed_query(self, text: str) -> list[float]:
            return self.core.embed_one(text)

    return LangChainBagOfWordsEmbeddings
