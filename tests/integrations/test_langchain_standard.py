"""LangChain's standard retriever suite (``langchain_tests`` ``RetrieversIntegrationTests``) on the
retriever ``finetune()`` returns: plain (NUDGE-N moved the stored vectors) and with the query-side
adaptor in force (``method="auto"`` chose it: the retriever searches an adapted copy of the
store). The stock retriever of the same store (``store.as_retriever(...)``) runs the same suite:
ours is held to the expectations the stock one meets, and a test the stock one fails is an
expected failure for both, with the reason.

The suite builds retrievers with ``constructor(k=3)`` and calls ``invoke(query, k=1)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.testing import BagOfWordsEmbedder

N = 30

# The suite's one coroutine test carries no asyncio mark (LangChain's packages run pytest-asyncio
# in auto mode; ours is strict). Marking the function in place keeps it the suite's own object,
# which the suite's test_no_overrides_DO_NOT_OVERRIDE checks.
pytest.mark.asyncio(RetrieversIntegrationTests.test_ainvoke_returns_documents)

STOCK_IGNORES_K = (
    "LangChain's VectorStore.as_retriever(k=3) builds a VectorStoreRetriever, which ignores "
    "fields it does not know: k is spelt search_kwargs={'k': 3} there, and the stock retriever "
    "returns its default 4 documents. Ours takes k= too (it passes: XPASS)"
)


def _texts() -> list[str]:
    return [f"document about topic{i} with words alpha{i % 7} beta{i % 5}" for i in range(N)]


def _pairs() -> list[tuple[str, list[str]]]:
    return [
        (f"question alpha{(d + 1) % 7} topic{d} v{v}", [f"d{d}"])
        for v in range(2)
        for d in range(N)
    ]


def _memory_store(_: Any = None) -> Any:
    from langchain_core.vectorstores import InMemoryVectorStore

    return InMemoryVectorStore.from_texts(
        _texts(),
        BagOfWordsEmbedder(dim=64).as_langchain(),
        metadatas=[{"n": i} for i in range(N)],
        ids=[f"d{i}" for i in range(N)],
    )


def _chroma_store(folder: Path) -> Any:
    import chromadb
    from langchain_chroma import Chroma

    return Chroma.from_texts(
        _texts(),
        BagOfWordsEmbedder(dim=64).as_langchain(),
        metadatas=[{"n": i} for i in range(N)],
        ids=[f"d{i}" for i in range(N)],
        client=chromadb.PersistentClient(path=str(folder)),
        collection_name="suite",
    )


Tuned = tuple[NudgeEmbeddingFinetuner, BaseRetriever]


def _tune(store: Any, state_dir: Path) -> Tuned:
    """``store`` fine-tuned with NUDGE-N (records moved), and the retriever finetune() returned."""
    ft = NudgeEmbeddingFinetuner(store, method="nudge-n", gamma=0.2, state_dir=state_dir)
    retriever = ft.finetune(_pairs())
    assert ft.report is not None and ft.report.n_moved > 0
    assert isinstance(retriever, BaseRetriever)
    return ft, retriever


@pytest.fixture(scope="module")
def tuned_memory(tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    return _tune(_memory_store(), tmp_path_factory.mktemp("suite-state"))


@pytest.fixture(scope="module")
def tuned_chroma(tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    store = _chroma_store(tmp_path_factory.mktemp("suite-chroma"))
    return _tune(store, tmp_path_factory.mktemp("suite-state"))


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    """A store whose fine-tune chose the query-side adaptor (test_auto's distorted questions)."""
    from test_auto import distorted, langchain_store

    data, train, _ = distorted(n=320, noise=2.0)  # where test_auto's adaptor wins beyond noise
    store = langchain_store(data)
    ft = NudgeEmbeddingFinetuner(store, state_dir=tmp_path_factory.mktemp("suite-adapted"))
    retriever = ft.finetune(data.pairs(train))
    assert ft.report is not None and ft.report.adaptor, ft.report.summary()
    assert ft.adaptor() is not None
    assert isinstance(retriever, BaseRetriever)
    assert retriever.vectorstore is not store  # type: ignore[attr-defined]
    return ft, retriever


class _Suite(RetrieversIntegrationTests):
    """How each variant builds its retriever; the suite's tests are LangChain's own."""

    query = "question alpha2 topic1"

    @pytest.fixture(autouse=True)
    def _request(self, request: pytest.FixtureRequest) -> None:
        self.request = request

    @property
    def retriever_constructor(self) -> Any:
        return self.build

    @property
    def retriever_query_example(self) -> str:
        return self.query

    def build(self, **params: Any) -> BaseRetriever:
        raise NotImplementedError

    @pytest.fixture
    def retriever(self) -> BaseRetriever:
        return self.build()


class TestStockRetrieverOfTheStore(_Suite):
    """The reference: ``store.as_retriever(**params)`` on the same (untuned) store."""

    def store(self) -> Any:
        return _memory_store()

    def build(self, **params: Any) -> BaseRetriever:
        retriever: BaseRetriever = self.store().as_retriever(**params)
        return retriever

    @pytest.mark.xfail(reason=STOCK_IGNORES_K, strict=True)
    def test_k_constructor_param(self) -> None:
        super().test_k_constructor_param()


class TestStockChromaRetriever(TestStockRetrieverOfTheStore):
    def store(self) -> Any:
        folder = self.request.getfixturevalue("tmp_path_factory").mktemp("suite-stock")
        return _chroma_store(folder)


class TestFinetunedRetriever(_Suite):
    """The retriever ``finetune()`` returned; ``k=`` builds another through ``ft.retriever``
    (what ``finetune(retriever_kwargs={"k": ...})`` hands back)."""

    tuned = "tuned_memory"

    def build(self, **params: Any) -> BaseRetriever:
        ft, returned = self.request.getfixturevalue(self.tuned)
        if not params:
            return returned
        retriever = ft.retriever(**params)
        assert isinstance(retriever, BaseRetriever)
        return retriever

    @pytest.mark.xfail(reason=STOCK_IGNORES_K, strict=False)
    def test_k_constructor_param(self) -> None:
        super().test_k_constructor_param()


class TestFinetunedChromaRetriever(TestFinetunedRetriever):
    tuned = "tuned_chroma"


class TestFinetunedRetrieverWithTheAdaptor(_Suite):
    """The retriever of a fine-tune that chose the query-side adaptor."""

    query = "question 0 about chunk 0"

    def build(self, **params: Any) -> BaseRetriever:
        ft, returned = self.request.getfixturevalue("adapted")
        if not params:
            return returned
        retriever = ft.retriever(**params)
        assert isinstance(retriever, BaseRetriever)
        return retriever

    @pytest.mark.xfail(reason=STOCK_IGNORES_K, strict=False)
    def test_k_constructor_param(self) -> None:
        super().test_k_constructor_param()
