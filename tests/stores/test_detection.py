"""adapter_for: what it accepts, what it refuses and how it says so, and what it imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag.errors import ConfigError, StoreError, UnsupportedStoreError
from nudge_rag.stores import SUPPORTED_STORES, adapter_for
from nudge_rag.testing import BagOfWordsEmbedder

ROOT = Path(__file__).resolve().parents[2]

FRAMEWORKS_AND_CLIENTS = [
    "llama_index",
    "langchain_core",
    "langchain_community",
    "langchain_chroma",
    "langchain_qdrant",
    "chromadb",
    "qdrant_client",
    "faiss",
    "torch",
    "sqlalchemy",
    "psycopg",
    "psycopg2",
    "asyncpg",
    "langchain_postgres",
    "pymilvus",
    "milvus_lite",
    "langchain_milvus",
    "lancedb",
    "lance",
]


def _imported_after(statement: str) -> list[str]:
    code = (
        f"import sys; {statement}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS_AND_CLIENTS!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return eval(out.stdout)  # a printed list of str


@pytest.mark.parametrize("module", ["nudge_rag.stores", "nudge_rag.testing"])
def test_importing_loads_no_framework_or_store_client(module: str) -> None:
    assert _imported_after(f"import {module}") == []


def test_detecting_a_store_imports_only_that_stores_framework() -> None:
    statement = (
        "from langchain_core.vectorstores import InMemoryVectorStore; "
        "from nudge_rag.testing import BagOfWordsEmbedder; "
        "from nudge_rag.stores import adapter_for; "
        "vs = InMemoryVectorStore.from_texts(['a b', 'c'], BagOfWordsEmbedder(8).as_langchain()); "
        "a = adapter_for(vs); page = next(a.iter_pages()); "
        "a.write_vectors(page.ids, page.embeddings); a.search(page.embeddings[0], 1)"
    )
    assert _imported_after(statement) == ["langchain_core"]


def test_supported_stores_are_the_adapter_names() -> None:
    assert SUPPORTED_STORES == [
        "llamaindex-simple",
        "llamaindex-chroma",
        "llamaindex-qdrant",
        "llamaindex-faiss",
        "langchain-inmemory",
        "langchain-chroma",
        "langchain-qdrant",
        "langchain-faiss",
        "chroma",
        "llamaindex-pgvector",
        "langchain-pgvectorstore",
        "langchain-pgvector",
        "llamaindex-milvus",
        "langchain-milvus",
        "llamaindex-lancedb",
        "langchain-lancedb",
    ]


@pytest.mark.parametrize("thing", [object(), {"id": [0.1, 0.2]}, np.zeros((3, 4))])
def test_anything_else_is_refused_naming_its_type_and_the_supported_stores(thing: Any) -> None:
    with pytest.raises(UnsupportedStoreError) as info:
        adapter_for(thing)
    message = str(info.value)
    assert type(thing).__qualname__ in message
    for name in SUPPORTED_STORES:
        assert name in message
    assert isinstance(info.value, TypeError)  # catchable as the built-in too
    assert isinstance(info.value, StoreError)


def test_an_index_over_an_unsupported_store_names_that_store() -> None:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.vector_stores.types import BasePydanticVectorStore

    class ShelfStore(BasePydanticVectorStore):
        stores_text: bool = True

        @property
        def client(self) -> Any:
            return None

        def add(self, nodes: Any, **kwargs: Any) -> list[str]:
            return [n.node_id for n in nodes]

        def delete(self, ref_doc_id: str, **kwargs: Any) -> None:
            return None

        def query(self, query: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    index = VectorStoreIndex(
        [],
        storage_context=StorageContext.from_defaults(vector_store=ShelfStore()),
        embed_model=BagOfWordsEmbedder(8).as_llamaindex(),
    )
    with pytest.raises(UnsupportedStoreError, match=r"ShelfStore.*VectorStoreIndex"):
        adapter_for(index)


def test_a_subclass_of_a_supported_store_is_detected() -> None:
    from langchain_core.vectorstores import InMemoryVectorStore

    class MyStore(InMemoryVectorStore):
        pass

    vs = MyStore.from_texts(["a b", "c d"], BagOfWordsEmbedder(8).as_langchain(), ids=["x", "y"])
    adapter = adapter_for(vs)
    assert adapter.name == "langchain-inmemory"
    assert [p.ids for p in adapter.iter_pages(1)] == [["x"], ["y"]]


def test_page_size_must_be_positive() -> None:
    from langchain_core.vectorstores import InMemoryVectorStore

    vs = InMemoryVectorStore.from_texts(["a"], BagOfWordsEmbedder(8).as_langchain())
    with pytest.raises(ConfigError, match="page_size"):
        next(adapter_for(vs).iter_pages(0))
    with pytest.raises(ConfigError, match="batch_size"):
        adapter_for(vs).write_vectors([], np.zeros((0, 8)), batch_size=0)
