from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NUDGE_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fine-tuning state goes to a temporary folder, never the user's data folder."""
    home = tmp_path_factory.mktemp("nudge_rag_home")
    monkeypatch.setenv("NUDGE_RAG_HOME", str(home))
    return home


@pytest.fixture
def lc_topics() -> Any:
    """A LangChain ``InMemoryVectorStore`` of the topic corpus (topics.py): ids ``d0`` ...
    ``d39``, bag-of-words vectors, metadata ``n`` (the index) and ``tag`` (``t0`` / ``t1``)."""
    from langchain_core.vectorstores import InMemoryVectorStore
    from topics import N, texts

    from nudge_rag.testing import BagOfWordsEmbedder

    return InMemoryVectorStore.from_texts(
        texts(),
        BagOfWordsEmbedder(dim=64).as_langchain(),
        metadatas=[{"n": i, "tag": f"t{i % 2}"} for i in range(N)],
        ids=[f"d{i}" for i in range(N)],
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository (real data for slow tests), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set NUDGE_RAG_SHARED_DATA)")
    return SHARED_DATA


def clustered_problem(
    seed: int,
    n_docs: int = 300,
    dim: int = 24,
    n_queries: int = 240,
    shift: float = 0.5,
    noise: float = 0.25,
    multi: float = 0.2,
):
    """Unit documents, and queries that cluster around a direction shifted away from their answer.

    The shift models the mismatch between how queries and documents embed: at γ = 0 many queries
    rank another document first; moving each answer toward its queries (NUDGE) fixes that for the
    training queries and for held-out queries of the same cluster. Several queries share a
    document, so validation splits keep coverage; some queries have two answers.
    """
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    hot = rng.choice(n_docs, size=max(n_docs // 4, 2), replace=False)
    topic = docs + shift * rng.normal(size=docs.shape) / np.sqrt(dim) * 3
    topic /= np.linalg.norm(topic, axis=1, keepdims=True)
    answers = []
    q = np.empty((n_queries, dim), dtype=np.float32)
    for j in range(n_queries):
        a = int(rng.choice(hot))
        ans = [a]
        if rng.random() < multi:
            b = int(rng.choice(hot))
            if b != a:
                ans.append(b)
        vec = topic[a] + noise * rng.normal(size=dim) / np.sqrt(dim) * 3
        q[j] = vec / np.linalg.norm(vec)
        answers.append(ans)
    return docs, q, answers
