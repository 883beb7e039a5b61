"""Retriever options (issue 21): every spelling of the top-k the frameworks use is accepted, and a
wrong option fails with a ConfigError that names it before the store is read or written.

Before this, ``ft.retriever(k=3)`` raised ``TypeError: make_retriever() got multiple values for
argument 'k'``, and ``ft.finetune(queries, retriever_kwargs={"k": 3})`` raised it only after the
store was written; LangChain's retriever silently ignored a misspelt option.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.core import Adaptor
from nudge_rag.errors import ConfigError
from nudge_rag.integrations.options import (
    LANGCHAIN_OPTIONS,
    LLAMAINDEX_OPTIONS,
    retriever_options,
)
from nudge_rag.testing import BagOfWordsEmbedder

N = 30
DIM = 64


def texts() -> list[str]:
    return [f"document about topic{i} with words alpha{i % 7} beta{i % 5}" for i in range(N)]


def ids() -> list[str]:
    return [f"d{i}" for i in range(N)]


def pairs() -> list[tuple[str, list[str]]]:
    return [
        (f"question alpha{(d + 1) % 7} topic{d} v{v}", [f"d{d}"])
        for v in range(2)
        for d in range(N)
    ]


# -- the stores, each with a byte-level snapshot of everything in it ----------------------------
def lc_memory(_: Any) -> Any:
    from langchain_core.vectorstores import InMemoryVectorStore

    emb = BagOfWordsEmbedder(dim=DIM).as_langchain()
    metas = [{"n": i} for i in range(N)]
    return InMemoryVectorStore.from_texts(texts(), emb, metadatas=metas, ids=ids())


def li_simple(_: Any) -> Any:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    nodes = [
        TextNode(text=t, id_=i, metadata={"n": n})
        for n, (i, t) in enumerate(zip(ids(), texts(), strict=True))
    ]
    return VectorStoreIndex(nodes, embed_model=BagOfWordsEmbedder(dim=DIM).as_llamaindex())


def lc_chroma(tmp_path: Any) -> Any:
    import chromadb
    from langchain_chroma import Chroma

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    return Chroma.from_texts(
        texts(),
        BagOfWordsEmbedder(dim=DIM).as_langchain(),
        metadatas=[{"n": i} for i in range(N)],
        ids=ids(),
        client=client,
        collection_name="opts",
    )


def li_chroma(tmp_path: Any) -> Any:
    import chromadb
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    vs = ChromaVectorStore(chroma_collection=client.get_or_create_collection("opts"))
    nodes = [
        TextNode(text=t, id_=i, metadata={"n": n})
        for n, (i, t) in enumerate(zip(ids(), texts(), strict=True))
    ]
    return VectorStoreIndex(
        nodes,
        storage_context=StorageContext.from_defaults(vector_store=vs),
        embed_model=BagOfWordsEmbedder(dim=DIM).as_llamaindex(),
    )


def snapshot(store: Any) -> Any:
    """Every id, vector (as bytes), text and metadata the store holds."""
    if hasattr(store, "store") and isinstance(store.store, dict):  # InMemoryVectorStore
        return {
            k: (np.asarray(v["vector"], np.float64).tobytes(), v["text"], repr(v["metadata"]))
            for k, v in store.store.items()
        }
    collection = getattr(store, "_collection", None)  # langchain_chroma
    if collection is None and hasattr(store, "vector_store"):  # a LlamaIndex index
        collection = getattr(store.vector_store, "_collection", None)
    if collection is not None:
        got = collection.get(include=["embeddings", "documents", "metadatas"])
        return [
            (i, np.asarray(e).tobytes(), d, json.dumps(m, sort_keys=True))
            for i, e, d, m in zip(
                got["ids"], got["embeddings"], got["documents"], got["metadatas"], strict=True
            )
        ]
    data = store.vector_store.data  # LlamaIndex SimpleVectorStore
    return (
        {k: np.asarray(v, np.float64).tobytes() for k, v in data.embedding_dict.items()},
        repr(data.metadata_dict),
        repr(
            sorted((k, n.get_content(), repr(n.metadata)) for k, n in store.docstore.docs.items())
        ),
    )


STORES: dict[str, Callable[[Any], Any]] = {
    "langchain-inmemory": lc_memory,
    "llamaindex-simple": li_simple,
    "langchain-chroma": lc_chroma,
    "llamaindex-chroma": li_chroma,
}

#: Options the framework of each store refuses, and a word the message must hold.
WRONG = {
    "langchain": [
        ({"k": 3, "search_kwargs": {"k": 4}}, "conflicting top-k"),
        ({"similarity_top_k": 2, "k": 3}, "conflicting top-k"),
        ({"serch_kwargs": {"k": 3}}, "'serch_kwargs'"),
        ({"filters": None}, "LlamaIndex's"),
        ({"k": 0}, "k']: expected an integer >= 1"),
        ({"search_kwargs": [("k", 3)]}, "expected a mapping"),
        ({"search_type": "nearest"}, "search_type"),
        ({"search_type": "similarity_score_threshold"}, "score_threshold"),
        ({"embedding": None}, "finetuner's model"),
    ],
    "llamaindex": [
        ({"k": 3, "similarity_top_k": 4}, "conflicting top-k"),
        ({"search_kwargs": {"k": 3}}, "LangChain's"),
        ({"top_k": 3}, "'top_k'"),
        ({"k": "3"}, "k']: expected an integer >= 1"),
        ({"vector_store_query_mode": "nearest"}, "vector_store_query_mode"),
        ({"node_ids": ["d1"]}, "the index sets it"),
        ({"embed_model": None}, "finetuner's model"),
    ],
}


def framework(name: str) -> str:
    return name.split("-")[0]


def top_k(retriever: Any) -> int:
    """The k a framework retriever will return."""
    if hasattr(retriever, "search_kwargs"):
        return int(retriever.search_kwargs["k"])
    return int(retriever.similarity_top_k)


# -- the parser ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fw", "k", "options", "want"),
    [
        ("langchain", None, {"k": 3}, (3, {})),
        ("langchain", None, {"similarity_top_k": 3}, (3, {})),
        (
            "langchain",
            None,
            {"search_kwargs": {"k": 3, "filter": "f"}},
            (3, {"search_kwargs": {"filter": "f"}}),
        ),
        ("langchain", 3, {"search_kwargs": {"k": 3}}, (3, {"search_kwargs": {}})),  # agree: fine
        (
            "langchain",
            None,
            {"search_type": "mmr", "tags": ["x"]},
            (None, {"search_type": "mmr", "tags": ["x"]}),
        ),
        ("langchain", 5, None, (5, {})),
        ("llamaindex", None, {"k": 3}, (3, {})),
        ("llamaindex", None, {"similarity_top_k": 3, "filters": None}, (3, {"filters": None})),
        (
            "llamaindex",
            2,
            {"vector_store_query_mode": "default"},
            (2, {"vector_store_query_mode": "default"}),
        ),
        ("none", None, {"k": 4}, (4, {})),
    ],
)
def test_every_spelling_of_the_top_k_is_one_k(fw: str, k: Any, options: Any, want: Any) -> None:
    assert retriever_options(fw, k, options) == want


def test_the_messages_name_the_argument_as_the_caller_named_it() -> None:
    with pytest.raises(ConfigError, match=r"retriever_kwargs\['search_kwargs'\]\['k'\]=4"):
        retriever_options("langchain", 3, {"search_kwargs": {"k": 4}}, where="retriever_kwargs")
    with pytest.raises(
        ConfigError, match=r"^similarity_top_k: expected an integer >= 1, received 0"
    ):
        retriever_options("langchain", 0)
    with pytest.raises(ConfigError, match="no framework is its own retriever"):
        retriever_options("none", None, {"filters": None})
    with pytest.raises(ConfigError, match="expected a mapping of keyword arguments"):
        retriever_options("langchain", None, [("k", 3)])  # type: ignore[arg-type]
    for fw, cases in WRONG.items():
        for options, words in cases:
            with pytest.raises(ConfigError, match="retriever_kwargs") as err:
                retriever_options(fw, None, options, where="retriever_kwargs")
            assert words in str(err.value), (fw, options, str(err.value))


def test_the_option_names_are_the_installed_frameworks_own() -> None:
    """The allowed names are kept without importing a framework: they must still be what the
    installed LlamaIndex ``VectorIndexRetriever`` and LangChain ``VectorStoreRetriever`` take."""
    from langchain_core.vectorstores import VectorStoreRetriever
    from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever

    params = set(inspect.signature(VectorIndexRetriever.__init__).parameters)
    set_by_the_index = {
        "self",
        "index",
        "node_ids",
        "callback_manager",
        "object_map",
        "embed_model",
    }
    assert params - set_by_the_index - {"similarity_top_k", "kwargs"} == LLAMAINDEX_OPTIONS - {
        "vector_store_kwargs"  # read from **kwargs by VectorIndexRetriever
    }
    assert "vector_store_kwargs" in inspect.getsource(VectorIndexRetriever.__init__)
    assert set(VectorStoreRetriever.model_fields) - {"vectorstore"} == LANGCHAIN_OPTIONS
    default_types = VectorStoreRetriever.model_fields  # allowed_search_types is a ClassVar
    assert "search_type" in default_types
    assert set(VectorStoreRetriever.allowed_search_types) == {
        "similarity",
        "similarity_score_threshold",
        "mmr",
    }


# -- through the finetuner, on real stores ------------------------------------------------------
def guard_reads(ft: NudgeEmbeddingFinetuner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read or write of the store through the finetuner's adapter fail loudly."""

    def touched(*_: Any, **__: Any) -> Any:
        raise AssertionError("the store was read or written before the options were checked")

    for name in ("iter_pages", "get", "_write_batch", "_search", "count", "write"):
        if hasattr(ft._adapter, name):
            monkeypatch.setattr(ft._adapter, name, touched)


@pytest.mark.parametrize("name", list(STORES))
def test_wrong_retriever_options_fail_before_the_store_is_read_or_written(
    name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, _state_home: Any
) -> None:
    store = STORES[name](tmp_path)
    before = snapshot(store)
    ft = NudgeEmbeddingFinetuner(store, gamma=0.2, store_id=f"opts-{name}")
    state_before = sorted(p.relative_to(_state_home) for p in _state_home.rglob("*"))
    with monkeypatch.context() as m:
        guard_reads(ft, m)
        for options, words in WRONG[framework(name)]:
            with pytest.raises(ConfigError, match="retriever_kwargs") as err:
                ft.finetune(pairs(), retriever_kwargs=options)
            assert words in str(err.value)
            with pytest.raises(ConfigError, match="retriever_kwargs") as err:
                ft.update(retriever_kwargs=options)  # the (empty) feedback log is not read first
            assert words in str(err.value)
            bare = {k: v for k, v in options.items()}
            with pytest.raises(ConfigError):
                ft.retriever(**bare)
        with pytest.raises(ConfigError, match="conflicting top-k: similarity_top_k=5"):
            ft.finetune(pairs(), similarity_top_k=5, retriever_kwargs={"k": 3})
        with pytest.raises(ConfigError, match=r"^similarity_top_k: expected an integer >= 1"):
            ft.finetune(pairs(), similarity_top_k=-1)
    assert ft.report is None
    assert snapshot(store) == before
    assert sorted(p.relative_to(_state_home) for p in _state_home.rglob("*")) == state_before


@pytest.mark.parametrize("name", ["langchain-inmemory", "llamaindex-simple"])
def test_each_accepted_spelling_gives_the_k_asked_for(name: str, tmp_path: Any) -> None:
    store = STORES[name](tmp_path)
    ft = NudgeEmbeddingFinetuner(store, gamma=0.2, store_id=f"k-{name}", similarity_top_k=7)
    spellings: list[dict[str, Any]] = [{"k": 3}, {"similarity_top_k": 3}]
    if framework(name) == "langchain":
        spellings.append({"search_kwargs": {"k": 3}})
    for options in spellings:
        assert top_k(ft.retriever(**options)) == 3, options
    assert top_k(ft.retriever(3)) == 3
    assert top_k(ft.retriever()) == 7  # the constructor's
    # finetune() hands back a retriever with that k, and it returns that many results
    r = ft.finetune(pairs(), retriever_kwargs=spellings[-1])
    assert ft.report is not None and ft.report.n_moved > 0
    assert top_k(r) == 3
    got = (
        r.invoke("question alpha2 topic1")
        if framework(name) == "langchain"
        else r.retrieve("question alpha2 topic1")
    )
    assert len(got) == 3
    # the same through update() on logged feedback
    ft.record("question alpha2 topic1", ["d1"])
    assert top_k(ft.update(retriever_kwargs={"k": 2})) == 2
    assert top_k(ft.update(similarity_top_k=2, retriever_kwargs={"k": 2})) == 2  # agreeing
    ft.revert()


@pytest.mark.parametrize("name", ["langchain-inmemory", "llamaindex-simple"])
def test_the_k_holds_with_the_query_side_adaptor_in_force(
    name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an adaptor in force the retriever is built on an adapted copy of the store (LangChain)
    or with an adapted embedding model (LlamaIndex): the options reach it all the same."""
    store = STORES[name](tmp_path)
    ft = NudgeEmbeddingFinetuner(store, store_id=f"adapted-{name}")
    adaptor = Adaptor(weight=np.eye(DIM, dtype=np.float32))
    monkeypatch.setattr(ft, "adaptor", lambda: adaptor)
    for options in ({"k": 3}, {"similarity_top_k": 3}):
        r = ft.retriever(**options)
        assert top_k(r) == 3
        if framework(name) == "langchain":
            assert r.vectorstore is not store  # the adapted copy
        else:
            assert "adaptor" in r._embed_model.model_name
    with pytest.raises(ConfigError, match="adaptor"):
        ft.retriever(adaptor=None)
