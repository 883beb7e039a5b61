"""What is particular to the server stores (PostgreSQL + pgvector, Milvus, LanceDB): identity,
metrics from the store's configuration, refusals, approximate search, awkward ids."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from store_cases import table_name

from nudge_rag.errors import StoreError
from nudge_rag.stores import adapter_for
from nudge_rag.testing import BagOfWordsEmbedder


def unit_rows(seed: int, n: int, d: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def nodes(vectors: np.ndarray, prefix: str = "n") -> list[Any]:
    from llama_index.core.schema import TextNode

    return [
        TextNode(id_=f"{prefix}{i:03d}", text=f"text {i}", metadata={"i": i}, embedding=v.tolist())
        for i, v in enumerate(vectors)
    ]


def best_scores(x: np.ndarray, q: np.ndarray, k: int, skip: list[int] = ()) -> np.ndarray:  # type: ignore[assignment]
    s = q.astype(np.float64) @ x.astype(np.float64).T
    s[:, list(skip)] = -np.inf
    return -np.sort(-s, axis=1)[:, :k]


# -- PostgreSQL + pgvector ----------------------------------------------------------------------


def _llamaindex_pg(urls: dict[str, str], request: pytest.FixtureRequest, **kwargs: Any) -> Any:
    pytest.importorskip("llama_index.vector_stores.postgres")
    from llama_index.vector_stores.postgres import PGVectorStore

    params: dict[str, Any] = {
        "connection_string": urls["psycopg2"],
        "async_connection_string": urls["asyncpg"],
        "table_name": table_name("li"),
        "embed_dim": 16,
    }
    params.update(kwargs)
    vs = PGVectorStore.from_params(**params)
    request.addfinalizer(lambda: vs._engine and vs._engine.dispose())
    return vs


def test_pgvector_identity_is_server_database_table_and_never_the_password(
    pg_server: str, pg_urls: dict[str, str], pg_langchain_engine: Any, request: Any
) -> None:
    from langchain_postgres import PGVectorStore

    with_password = pg_urls["psycopg2"].replace("postgres@", "postgres:s3cret@")
    li = _llamaindex_pg({**pg_urls, "psycopg2": with_password}, request)
    li.add(nodes(unit_rows(0, 3, 16)))
    ident = adapter_for(li).identity()
    table = li._table_class.__tablename__
    assert ident.key == f"pgvector:{os.path.realpath(pg_server)}:5432/postgres/public.{table}"
    assert ident.durable
    assert "s3cret" not in ident.key
    # LangChain's PGVectorStore over the same table names it the same way: the same store.
    lc = PGVectorStore.create_sync(
        pg_langchain_engine,
        BagOfWordsEmbedder(16).as_langchain(),
        table,
        id_column="node_id",
        content_column="text",
        metadata_json_column="metadata_",
        ignore_metadata_columns=["id"],
    )
    lc_adapter = adapter_for(lc)
    assert lc_adapter.identity() == ident
    assert sorted(next(lc_adapter.iter_pages(10)).ids) == ["n000", "n001", "n002"]


def test_pgvector_hnsw_search_fills_k_past_ef_search(
    pg_urls: dict[str, str], request: pytest.FixtureRequest
) -> None:
    # The index's own ef_search (here 10, LlamaIndex's hnsw_ef_search) caps what an HNSW scan
    # returns; searches raise it, and iterative scans fill k despite the excluded records.
    vs = _llamaindex_pg(
        pg_urls,
        request,
        hnsw_kwargs={"hnsw_m": 4, "hnsw_ef_construction": 16, "hnsw_ef_search": 10},
    )
    x = unit_rows(1, 120, 16)
    vs.add(nodes(x))
    adapter = adapter_for(vs)
    assert (adapter.metric, adapter.exact_search) == ("cosine", False)
    q = unit_rows(2, 4, 16)
    assert len(adapter.search(q[0], 100)) == 100
    skip = list(range(0, 120, 3))
    got = adapter.top_scores(q, 60, [f"n{i:03d}" for i in skip])
    assert np.all(np.isfinite(got))  # 80 records outside exclude: 60 found for every query
    want = best_scores(x, q, 60, skip)
    found = np.isclose(got[:, :, None], want[:, None, :], atol=1e-5).any(axis=1)
    assert found.mean() >= 0.9  # HNSW is approximate; on 120 records it finds nearly all


def test_pgvector_reruns_a_short_index_scan_without_the_index(
    pg_urls: dict[str, str], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An HNSW scan held to one candidate, without iterative scans, comes back short: those
    # queries run again without the index, exact.
    vs = _llamaindex_pg(
        pg_urls, request, hnsw_kwargs={"hnsw_m": 4, "hnsw_ef_construction": 16, "hnsw_ef_search": 1}
    )
    x = unit_rows(11, 50, 16)
    vs.add(nodes(x))
    adapter = adapter_for(vs)
    starved = [
        ("SET LOCAL enable_seqscan = off", {}),  # the index even on a table this small
        ("SET LOCAL hnsw.ef_search = 1", {}),
        ("SET LOCAL hnsw.iterative_scan = off", {}),
    ]
    real = adapter._settings
    reruns: list[int] = []

    def settings(k: int, exact: bool = False) -> list:
        if exact:
            reruns.append(k)
            return real(k, exact=True)
        return starved

    monkeypatch.setattr(adapter, "_settings", settings)
    q = unit_rows(12, 3, 16)
    assert len(adapter.search(q[0], 20)) < 20  # starved: the index scan alone comes back short
    got = adapter.top_scores(q, 20, ["n000", "n001"])
    assert reruns == [20]  # one exact rerun, for the short queries together
    np.testing.assert_allclose(got, best_scores(x, q, 20, [0, 1]), atol=1e-5)


def test_pgvector_ivfflat_search_fills_k_past_its_probes(
    pg_urls: dict[str, str], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An IVFFlat scan visits ivfflat.probes lists (1 by default; here ~12 rows each): the
    # searches turn on its iterative scan, so k comes back from the index, no exact rerun.
    from sqlalchemy import text

    vs = _llamaindex_pg(pg_urls, request)
    x = unit_rows(13, 120, 16)
    vs.add(nodes(x))
    table = vs._table_class.__tablename__
    with vs._engine.begin() as conn:
        conn.execute(
            text(
                f'CREATE INDEX ON "public"."{table}" USING ivfflat (embedding vector_cosine_ops) '
                "WITH (lists = 10)"
            )
        )
    adapter = adapter_for(vs)
    assert (adapter.metric, adapter.exact_search) == ("cosine", False)
    real = adapter._settings
    reruns: list[int] = []

    def settings(k: int, exact: bool = False) -> list:
        if exact:
            reruns.append(k)
            return real(k, exact=True)
        return [("SET LOCAL enable_seqscan = off", {}), *real(k)]  # the index, even here

    monkeypatch.setattr(adapter, "_settings", settings)
    q = unit_rows(14, 4, 16)
    assert len(adapter.search(q[0], 60)) == 60
    skip = list(range(0, 120, 4))
    got = adapter.top_scores(q, 60, [f"n{i:03d}" for i in skip])
    assert reruns == []
    assert np.all(np.isfinite(got))
    # Approximate (lists visited in turn, relaxed order): each score is one of a record left
    # in, and most of the true best 60 are there.
    kept = best_scores(x, q, 120 - len(skip), skip)
    assert np.isclose(got[:, :, None], kept[:, None, :], atol=1e-5).any(axis=2).all()
    want = best_scores(x, q, 60, skip)
    found = np.isclose(got[:, :, None], want[:, None, :], atol=1e-5).any(axis=1)
    assert found.mean() >= 0.6


def test_pgvector_halfvec_is_refused(
    pg_urls: dict[str, str], request: pytest.FixtureRequest
) -> None:
    vs = _llamaindex_pg(pg_urls, request, use_halfvec=True)
    vs.add(nodes(unit_rows(3, 2, 16)))
    with pytest.raises(StoreError, match="halfvec"):
        adapter_for(vs)


def test_llamaindex_pgvector_refuses_a_node_stored_twice(
    pg_urls: dict[str, str], request: pytest.FixtureRequest
) -> None:
    vs = _llamaindex_pg(pg_urls, request)
    twice = nodes(unit_rows(4, 3, 16))
    vs.add(twice)
    vs.add(twice[1:2])  # LlamaIndex's node_id is not unique in the table
    adapter = adapter_for(vs)
    with pytest.raises(StoreError, match="n001"):
        next(adapter.iter_pages(10))


def test_pgvectorstore_metadata_columns_uuid_ids_and_an_hnsw_index(
    pg_langchain_engine: Any,
) -> None:
    from langchain_postgres import Column, PGVectorStore
    from langchain_postgres.v2.indexes import DistanceStrategy, HNSWIndex

    name = table_name("lc")
    pg_langchain_engine.init_vectorstore_table(
        name, 16, metadata_columns=[Column("topic", "TEXT"), Column("n", "INTEGER")]
    )
    vs = PGVectorStore.create_sync(
        pg_langchain_engine,
        BagOfWordsEmbedder(16).as_langchain(),
        name,
        metadata_columns=["topic", "n"],
        distance_strategy=DistanceStrategy.COSINE_DISTANCE,
    )
    metas = [{"topic": "reef", "n": i, "extra": [i, "x"]} for i in range(5)]
    ids = vs.add_texts([f"alpha beta {i}" for i in range(5)], metadatas=metas)
    vs.apply_vector_index(HNSWIndex(distance_strategy=DistanceStrategy.COSINE_DISTANCE))
    adapter = adapter_for(vs)
    assert (adapter.name, adapter.metric, adapter.exact_search) == (
        "langchain-pgvectorstore",
        "cosine",
        False,
    )
    page = adapter.get([ids[3], ids[0].upper()])  # a UUID spelled in capitals is the same id
    assert page.ids == [ids[3], ids[0].upper()]
    docs = {d.id: d for d in vs.get_by_ids([ids[3], ids[0]])}
    assert page.metadatas == [docs[ids[3]].metadata, docs[ids[0]].metadata]  # as LangChain has it
    assert page.metadatas[0] == metas[3]
    with pytest.raises(StoreError, match="not-a-uuid"):
        adapter.get(["not-a-uuid"])


def test_pgvector_collections_share_a_table_but_not_an_identity(pg_engine: Any) -> None:
    pytest.importorskip("langchain_postgres")
    from langchain_postgres import PGVector

    emb = BagOfWordsEmbedder(8).as_langchain()
    a = PGVector(emb, connection=pg_engine, collection_name=table_name("a"))
    b = PGVector(emb, connection=pg_engine, collection_name=table_name("b"))
    a.add_texts(["one two"], ids=[table_name("ida")])
    b.add_texts(["three four", "five"], ids=[table_name("idb"), table_name("idb")])
    ka, kb = adapter_for(a), adapter_for(b)
    assert ka.identity() != kb.identity()
    assert ka.identity().key.split("/")[:-1] == kb.identity().key.split("/")[:-1]
    assert (ka.count(), kb.count(), ka.metric) == (1, 2, "cosine")


# -- Milvus -----------------------------------------------------------------------------------


def _llamaindex_milvus(uri: str, metric: str = "IP", collection: str | None = None) -> Any:
    pytest.importorskip("llama_index.vector_stores.milvus")
    from llama_index.vector_stores.milvus import MilvusVectorStore

    return MilvusVectorStore(
        uri=uri,
        collection_name=collection or table_name("li"),
        dim=16,
        similarity_metric=metric,
        use_async_client=False,
    )


def _raw_milvus_collection(
    client: Any,
    prefix: str,
    pk_type: Any,
    index_type: str = "FLAT",
    params: dict[str, Any] | None = None,
) -> str:
    """A new collection made with pymilvus alone: key ``pk``, an 8-d ``vec`` indexed for inner
    product, dynamic fields on. Its name."""
    from pymilvus import DataType

    name = table_name(prefix)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=True)
    extra = {"max_length": 200} if pk_type == DataType.VARCHAR else {}
    schema.add_field("pk", pk_type, is_primary=True, **extra)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=8)
    index = client.prepare_index_params()
    index.add_index("vec", index_type=index_type, metric_type="IP", params=params or {})
    client.create_collection(name, schema=schema, index_params=index)
    return name


@pytest.mark.parametrize(("metric", "ours"), [("IP", "dot"), ("COSINE", "cosine"), ("L2", "l2")])
def test_milvus_metric_comes_from_the_index(milvus_uri: str, metric: str, ours: str) -> None:
    vs = _llamaindex_milvus(milvus_uri, metric)
    x = unit_rows(5, 30, 16)
    vs.add(nodes(x))
    adapter = adapter_for(vs)
    assert (adapter.metric, adapter.normalizes_on_write, adapter.exact_search) == (
        ours,
        False,
        True,
    )
    # Milvus keeps what is written, whatever the metric (COSINE does not normalise).
    adapter.write_vectors(["n004"], 3 * x[4:5])
    assert np.array_equal(adapter.get(["n004"]).embeddings, 3 * x[4:5])
    adapter.write_vectors(["n004"], x[4:5])
    got = adapter.top_scores(x[:3], 5, ["n000", "n001", "n002"])
    np.testing.assert_allclose(got, best_scores(x, x[:3], 5, [0, 1, 2]), atol=1e-5)


def test_milvus_identity_is_the_lite_file_and_collection_through_both_frameworks(
    milvus_uri: str,
) -> None:
    pytest.importorskip("langchain_milvus")
    from langchain_milvus import Milvus

    name = table_name("li")
    li = _llamaindex_milvus(milvus_uri, collection=name)
    li.add(nodes(unit_rows(6, 3, 16)))
    again = _llamaindex_milvus(milvus_uri, collection=name)
    lc = Milvus(
        BagOfWordsEmbedder(16).as_langchain(),
        connection_args={"uri": milvus_uri},
        collection_name=name,
        primary_field="id",
        text_field="text",
        vector_field="embedding",
    )
    key = adapter_for(li).identity()
    assert key.key == f"milvus:{os.path.realpath(milvus_uri)}/{name}"
    assert key.durable
    assert adapter_for(again).identity() == key
    lc_adapter = adapter_for(lc)
    assert lc_adapter.identity() == key
    assert next(lc_adapter.iter_pages(10)).ids == ["n000", "n001", "n002"]


def test_milvus_auto_id_collections_are_refused(milvus_uri: str) -> None:
    pytest.importorskip("langchain_milvus")
    from langchain_milvus import Milvus

    vs = Milvus.from_texts(
        ["one two", "three"],
        BagOfWordsEmbedder(8).as_langchain(),
        connection_args={"uri": milvus_uri},
        collection_name=table_name("auto"),
        auto_id=True,
    )
    with pytest.raises(StoreError, match="new primary key"):
        adapter_for(vs)


def test_milvus_ids_with_quotes_and_int_keys(milvus_uri: str) -> None:
    from pymilvus import DataType, MilvusClient

    from nudge_rag.stores._milvus import MilvusAdapter

    client = MilvusClient(milvus_uri)
    x = unit_rows(7, 12, 8)
    for pk_type, ids in [
        (DataType.VARCHAR, [f'id "{i}" \\ {i}' for i in range(11)] + ["it's"]),
        (DataType.INT64, [i * 7 for i in range(12)]),
    ]:
        name = _raw_milvus_collection(client, "raw", pk_type)
        client.insert(
            name,
            [
                {"pk": i, "vec": v.tolist(), "note": f"n{j}"}
                for j, (i, v) in enumerate(zip(ids, x, strict=True))
            ],
        )
        adapter = MilvusAdapter(client, name)
        ours = [str(i) for i in ids]
        pages = [p.ids for p in adapter.iter_pages(5)]
        assert [i for p in pages for i in p] == sorted(
            ours, key=lambda s: int(s) if pk_type == DataType.INT64 else s
        )
        page = adapter.get([ours[3], ours[0]])
        assert page.metadatas == [{"note": "n3"}, {"note": "n0"}]
        adapter.write_vectors([ours[3]], x[5:6])
        assert np.array_equal(adapter.get([ours[3]]).embeddings, x[5:6])
        assert adapter.get([ours[3]]).metadatas == [{"note": "n3"}]
        got = adapter.top_scores(x[5:6], 2, [ours[5], "not-a-key"])
        np.testing.assert_allclose(got[0, 0], 1.0, atol=1e-6)  # ours[3] now holds x[5]
        hits = adapter._top_hits(x[5:6], 2, [ours[5], ours[3]])
        assert {i for i, _ in hits[0]}.isdisjoint({ours[5], ours[3]})
        with pytest.raises(StoreError):
            adapter.get(["999999" if pk_type == DataType.VARCHAR else "x"])
        if pk_type == DataType.VARCHAR:  # Milvus Lite's upsert breaks on a single quote
            assert adapter.get(["it's"]).metadatas == [{"note": "n11"}]
            with pytest.raises(StoreError, match="single quote"):
                adapter.write_vectors(["it's"], x[:1])
            assert np.array_equal(adapter.get(["it's"]).embeddings, x[11:12])
    client.close()


def test_milvus_lite_cuts_reads_and_upserts_into_calls_and_writes_every_row(
    milvus_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lite's reads go in small calls and its upserts in larger ones (measured: an upsert's
    cost per call grows with the collection); a batch cut into several calls still writes every
    vector, and only the vector."""
    from pymilvus import DataType, MilvusClient

    from nudge_rag.stores import _milvus
    from nudge_rag.stores._milvus import MilvusAdapter

    client = MilvusClient(milvus_uri)
    x, y = unit_rows(8, 40, 8), unit_rows(9, 40, 8)
    name = _raw_milvus_collection(client, "calls", DataType.VARCHAR)
    ids = [f"r{i:02d}" for i in range(40)]
    client.insert(
        name,
        [{"pk": i, "vec": v.tolist(), "n": j} for j, (i, v) in enumerate(zip(ids, x, strict=True))],
    )
    adapter = MilvusAdapter(client, name)
    assert adapter._call_rows() == 256 * 1024 // 32
    assert adapter._call_rows(upsert=True) == 1536 * 1024 // 32

    sizes: list[int] = []
    upsert = client.upsert

    def counted(collection: str, data: list[dict[str, Any]], **kw: Any) -> Any:
        sizes.append(len(data))
        return upsert(collection, data, **kw)

    monkeypatch.setattr(client, "upsert", counted)
    adapter.write_vectors(ids, y, batch_size=40)
    assert sizes == [40]  # one batch, one call
    monkeypatch.setattr(_milvus, "_LITE_UPSERT_BYTES", 1)
    monkeypatch.setattr(_milvus, "_LITE_CALL_BYTES", 1)
    sizes.clear()
    adapter.write_vectors(ids[::-1], x[::-1], batch_size=40)
    assert sizes == [16, 16, 8]  # at least 16 rows per call
    page = adapter.get(ids)
    assert np.array_equal(page.embeddings, x)
    assert [m["n"] for m in page.metadatas] == list(range(40))
    client.close()


# -- LanceDB ----------------------------------------------------------------------------------


def test_lancedb_identity_is_the_same_through_both_frameworks(tmp_path: Any) -> None:
    pytest.importorskip("llama_index.vector_stores.lancedb")
    pytest.importorskip("langchain_community")
    from langchain_community.vectorstores import LanceDB
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    li = LanceDBVectorStore(uri=str(tmp_path / "db"), table_name="shared")
    li.add(nodes(unit_rows(8, 3, 16)))
    lc = LanceDB(
        embedding=BagOfWordsEmbedder(16).as_langchain(),
        uri=str(tmp_path / "db"),
        table_name="shared",
    )
    key = adapter_for(li).identity()
    assert key.key == f"lancedb:{os.path.realpath(tmp_path / 'db')}/shared"
    assert adapter_for(lc).identity() == key
    assert next(adapter_for(lc).iter_pages(10)).ids == ["n000", "n001", "n002"]


def test_lancedb_vector_index_sets_the_metric_and_makes_search_approximate(
    tmp_path: Any, record_property: Any
) -> None:
    lancedb = pytest.importorskip("lancedb")

    from nudge_rag.stores._lancedb import LanceDBAdapter

    db = lancedb.connect(str(tmp_path / "db"))
    x = unit_rows(9, 300, 16)
    table = db.create_table(
        "t", [{"id": f"r{i:03d}", "vector": v.tolist(), "text": f"t{i}"} for i, v in enumerate(x)]
    )
    flat = LanceDBAdapter(table, db.uri)
    assert (flat.metric, flat.exact_search) == ("l2", True)
    from lancedb.index import IvfPq

    table.create_index(
        "vector", config=IvfPq(distance_type="cosine", num_partitions=2, num_sub_vectors=4)
    )
    indexed = LanceDBAdapter(table, db.uri)
    assert (indexed.metric, indexed.exact_search) == ("cosine", False)
    q = x[:5]
    got = indexed.top_scores(q, 10, ["r000"])
    assert np.all(np.isfinite(got))
    # The scores handed out are the true scores of the records found (re-ranked by their
    # vectors, not PQ codes); which records are found is approximate (recall).
    hits = indexed._top_hits(q, 10, ["r000"])
    for row, found in zip(q, hits, strict=True):
        assert "r000" not in [i for i, _ in found]
        for id_, score in found:
            assert score == pytest.approx(float(row @ x[int(id_[1:])]), abs=1e-5)
    want = best_scores(x, q, 10, [0])
    recall = np.isclose(got[:, :, None], want[:, None, :], atol=1e-5).any(axis=1).mean()
    record_property("lancedb_ivfpq_recall", float(recall))
    assert recall >= 0.3


def test_lancedb_refuses_an_id_stored_twice(tmp_path: Any) -> None:
    lancedb = pytest.importorskip("lancedb")

    from nudge_rag.stores._lancedb import LanceDBAdapter

    db = lancedb.connect(str(tmp_path / "db"))
    x = unit_rows(10, 3, 4)
    table = db.create_table(
        "t", [{"id": i, "vector": v.tolist()} for i, v in zip("aba", x, strict=True)]
    )
    with pytest.raises(StoreError, match="'a'"):
        next(LanceDBAdapter(table, db.uri).iter_pages(10))


def test_milvus_server_first_calls_on_a_fresh_collection_see_every_record(
    milvus_server_uri: str,
) -> None:
    """A Milvus 2.3 server answered the first key-ordered page query of a just-filled
    collection with nothing (measured; gets and searches were fine): whichever call comes
    first, the adapter sees every record."""
    from pymilvus import DataType, MilvusClient

    from nudge_rag.stores._milvus import MilvusAdapter

    client = MilvusClient(milvus_server_uri)
    x = unit_rows(10, 30, 8)
    ids = [f"r{i:02d}" for i in range(30)]
    for first in ("pages", "get", "search"):
        name = _raw_milvus_collection(
            client, f"first_{first}", DataType.VARCHAR, "HNSW", {"M": 8, "efConstruction": 32}
        )
        client.insert(name, [{"pk": i, "vec": v.tolist()} for i, v in zip(ids, x, strict=True)])
        adapter = MilvusAdapter(client, name)
        assert not adapter.exact_search
        if first == "pages":
            assert [i for p in adapter.iter_pages(7) for i in p.ids] == ids
        elif first == "get":
            assert np.array_equal(adapter.get(ids[::-1]).embeddings, x[::-1])
        else:
            got = adapter.top_scores(x[:3], 5, exclude=ids[:3])
            np.testing.assert_allclose(got, best_scores(x, x[:3], 5, skip=[0, 1, 2]), atol=1e-5)
    client.close()
