"""nudge_rag.testing.BagOfWordsEmbedder: deterministic, unit-norm, and usable in both frameworks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nudge_rag.errors import ConfigError
from nudge_rag.testing import BagOfWordsEmbedder

ROOT = Path(__file__).resolve().parents[2]


def test_vocabulary_vectors_can_be_worked_out_by_hand() -> None:
    emb = BagOfWordsEmbedder(vocabulary=["cat", "dog", "fish"])
    got = emb.embed(["The cat, the DOG and the cat.", "fish", "nothing known"])
    assert got.dtype == np.float32
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got[0], np.array([2, 1, 0]) / np.sqrt(5), rtol=1e-6)
    assert got[1].tolist() == [0.0, 0.0, 1.0]
    assert got[2].tolist() == [0.0, 0.0, 0.0]  # no counted word: the zero vector


def test_hashed_vectors_are_unit_and_shared_words_make_them_close() -> None:
    emb = BagOfWordsEmbedder(256)
    a, b, c = emb.embed(["solar wind speed", "the solar wind", "coral reef fish"])
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-6)
    assert float(a @ b) > float(a @ c)
    assert emb.dim == 256


def test_hashing_is_stable_across_processes() -> None:
    # Python's str hash is salted per process; the embedder must not depend on it.
    code = (
        "from nudge_rag.testing import BagOfWordsEmbedder; "
        "print(BagOfWordsEmbedder(32).embed(['stable hashing please']).tobytes().hex())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    here = BagOfWordsEmbedder(32).embed(["stable hashing please"]).tobytes().hex()
    assert outs == {here + "\n"}


def test_framework_wrappers_give_the_same_vectors() -> None:
    emb = BagOfWordsEmbedder(24)
    texts = ["alpha beta", "beta gamma gamma"]
    want = emb.embed(texts)
    li = emb.as_llamaindex()
    lc = emb.as_langchain()
    assert np.array_equal(np.array(li.get_text_embedding_batch(texts), dtype=np.float32), want)
    assert np.array_equal(np.array(li.get_query_embedding(texts[0]), dtype=np.float32), want[0])
    assert np.array_equal(np.array(lc.embed_documents(texts), dtype=np.float32), want)
    assert np.array_equal(np.array(lc.embed_query(texts[1]), dtype=np.float32), want[1])


def test_framework_wrappers_are_the_frameworks_types() -> None:
    from langchain_core.embeddings import Embeddings
    from llama_index.core.base.embeddings.base import BaseEmbedding

    emb = BagOfWordsEmbedder(8)
    assert isinstance(emb.as_llamaindex(), BaseEmbedding)
    assert isinstance(emb.as_langchain(), Embeddings)
    assert type(emb.as_llamaindex()) is type(BagOfWordsEmbedder(4).as_llamaindex())


async def _async_embeddings(emb: BagOfWordsEmbedder) -> tuple[list[float], list[float]]:
    li, lc = emb.as_llamaindex(), emb.as_langchain()
    return await li.aget_query_embedding("x y"), await lc.aembed_query("x y")


def test_async_query_embeddings() -> None:
    import asyncio

    emb = BagOfWordsEmbedder(8)
    li_vec, lc_vec = asyncio.run(_async_embeddings(emb))
    assert li_vec == lc_vec == emb.embed_one("x y")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2.5}, "dim"),
        ({"vocabulary": []}, "vocabulary"),
        ({"vocabulary": ["a", "A"]}, "distinct"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BagOfWordsEmbedder(**kwargs)


def test_a_single_string_is_refused() -> None:
    with pytest.raises(ConfigError, match="single str"):
        BagOfWordsEmbedder(8).embed("not a list")
