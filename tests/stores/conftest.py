"""Fixtures for the store adapter tests: in-process Chroma clients, and one ``case`` per real
store (built in store_cases.py). The servers (Chroma, PostgreSQL + pgvector, Milvus Lite) are
fixtures of tests/conftest.py, shared with the safety tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_cases import CASES, THIRD_PARTY_WARNINGS, Case, build_case


@pytest.fixture
def chroma_ephemeral() -> Any:
    import chromadb

    # Ephemeral clients share one in-process system: tests use distinct collection names.
    return chromadb.EphemeralClient()


@pytest.fixture
def chroma_persistent(tmp_path: Path) -> Iterator[Any]:
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    yield client
    client.close()


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> Case:
    """Every supported store, freshly built and filled, one test run per store."""
    return build_case(request.param, request)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            for spec in THIRD_PARTY_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))
