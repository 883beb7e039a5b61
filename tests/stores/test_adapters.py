"""Every store adapter against its real store: read, write in place, search, metric."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from store_cases import Case, user_metadata

from nudge_rag.errors import (
    DimensionMismatchError,
    NonFiniteError,
    NudgeInputError,
    ShapeError,
    StoreError,
)
from nudge_rag.stores import StorePage, VectorStoreAdapter, adapter_for

PAGE = 7


def read_all(adapter: VectorStoreAdapter, **kwargs: object) -> StorePage:
    pages = list(adapter.iter_pages(PAGE, **kwargs))  # type: ignore[arg-type]
    assert all(len(p.ids) == PAGE for p in pages[:-1])
    assert 0 < len(pages[-1].ids) <= PAGE
    for p in pages:
        assert p.embeddings.shape == (len(p.ids), adapter.dim())
        assert len(p.texts) == len(p.metadatas) == len(p.ids)
    return StorePage(
        [i for p in pages for i in p.ids],
        np.concatenate([p.embeddings for p in pages]),
        [t for p in pages for t in p.texts],
        [m for p in pages for m in p.metadatas],
    )


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_detects_store_metric_and_normalisation(case: Case) -> None:
    adapter = adapter_for(case.obj)
    assert adapter.name == case.name
    assert adapter.metric == case.metric
    assert adapter.normalizes_on_write is case.normalizes
    assert adapter.count() == len(case.ids)
    assert adapter.dim() == case.embedder.dim
    assert adapter_for(adapter) is adapter


def test_reads_every_record_once_with_its_text_and_metadata(case: Case) -> None:
    adapter = adapter_for(case.obj)
    everything = read_all(adapter)
    assert sorted(everything.ids) == sorted(case.ids)  # each record exactly once
    assert everything.embeddings.dtype == np.float32  # lossless for every store here
    by_id = dict(zip(case.ids, zip(case.texts, case.metadatas, strict=True), strict=True))
    for id_, text, meta in zip(everything.ids, everything.texts, everything.metadatas, strict=True):
        want_text, want_meta = by_id[id_]
        if case.has_text:
            assert text == want_text
            assert user_metadata(meta) == want_meta
        else:
            assert text is None
    # stable order: a second pass reads the same ids in the same order, the same vectors
    again = read_all(adapter)
    assert again.ids == everything.ids
    assert np.array_equal(again.embeddings, everything.embeddings)
    # the vectors are the ones the framework stored (unit bag-of-words vectors)
    norms = np.linalg.norm(everything.embeddings, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-6)


def test_reads_ids_and_vectors_only(case: Case) -> None:
    adapter = adapter_for(case.obj)
    slim = read_all(adapter, with_documents=False)
    full = read_all(adapter)
    assert slim.ids == full.ids
    assert np.array_equal(slim.embeddings, full.embeddings)
    assert slim.texts == [None] * len(slim.ids)
    assert slim.metadatas == [{}] * len(slim.ids)


def test_get_returns_the_ids_in_the_order_asked(case: Case) -> None:
    adapter = adapter_for(case.obj)
    full = read_all(adapter)
    row = {id_: i for i, id_ in enumerate(full.ids)}
    wanted = [case.ids[5], case.ids[0], case.ids[17], case.ids[5]]
    page = adapter.get(wanted)
    assert page.ids == wanted
    assert np.array_equal(page.embeddings, full.embeddings[[row[i] for i in wanted]])
    assert page.texts == [full.texts[row[i]] for i in wanted]
    assert page.metadatas == [full.metadatas[row[i]] for i in wanted]


def test_get_names_a_missing_id(case: Case) -> None:
    adapter = adapter_for(case.obj)
    ghost = "00000000-0000-4000-8000-00000000beef"
    with pytest.raises(StoreError, match=ghost):
        adapter.get([case.ids[0], ghost])


def test_write_changes_exactly_those_vectors_and_nothing_else(case: Case) -> None:
    adapter = adapter_for(case.obj)
    before = copy.deepcopy(read_all(adapter))
    d = adapter.dim()
    rng = np.random.default_rng(7)
    moved = [case.ids[i] for i in (13, 2, 20, 8, 0, 15, 5)]  # not in store order
    new = unit_rows(rng, len(moved), d)
    if not adapter.normalizes_on_write:
        new = (new * rng.uniform(0.5, 3.0, size=(len(moved), 1))).astype(np.float32)
    adapter.write_vectors(moved, new, batch_size=3)  # 3 batches

    after = read_all(adapter)
    assert after.ids == before.ids
    assert after.texts == before.texts
    assert after.metadatas == before.metadatas
    assert after.embeddings.dtype == np.float32
    row = {id_: i for i, id_ in enumerate(after.ids)}
    moved_rows = [row[i] for i in moved]
    kept = np.setdiff1d(np.arange(len(after.ids)), moved_rows)
    assert np.array_equal(after.embeddings[kept], before.embeddings[kept])  # bit for bit
    got = after.embeddings[moved_rows]
    if adapter.normalizes_on_write:
        np.testing.assert_allclose(got, new, rtol=0, atol=1e-6)
    else:
        assert np.array_equal(got, new)
    assert not np.any(np.all(got == before.embeddings[moved_rows], axis=1))
    assert np.array_equal(adapter.get(moved).embeddings, got)

    # Writing the originals back restores the store (what revert() will do).
    adapter.write_vectors(moved, before.embeddings[moved_rows])
    restored = read_all(adapter)
    assert restored.ids == before.ids
    assert restored.texts == before.texts
    assert restored.metadatas == before.metadatas
    if adapter.normalizes_on_write:
        np.testing.assert_allclose(restored.embeddings, before.embeddings, rtol=0, atol=1e-6)
    else:
        assert np.array_equal(restored.embeddings, before.embeddings)


def test_search_and_the_framework_retriever_see_the_written_vector(case: Case) -> None:
    adapter = adapter_for(case.obj)
    query = "zebra quantum harmonica"
    q = case.embedder.embed([query])[0]
    ranking = [id_ for id_, _ in adapter.search(q, adapter.count())]
    assert sorted(ranking) == sorted(case.ids)
    target = ranking[-1]  # the record ranked last for this query
    adapter.write_vectors([target], q[None, :])

    hits = adapter.search(q, 3)
    assert hits[0][0] == target
    assert hits[0][1] > hits[1][1]  # higher is better, whatever the metric
    if case.retrieve is not None and case.has_text:
        target_text = case.texts[case.ids.index(target)]
        assert case.retrieve(query, 3)[0] == target_text


def test_write_checks_everything_before_writing(case: Case) -> None:
    adapter = adapter_for(case.obj)
    before = read_all(adapter)
    d = adapter.dim()
    good = unit_rows(np.random.default_rng(1), 2, d)
    ids = [case.ids[3], case.ids[4]]
    ghost = "00000000-0000-4000-8000-00000000dead"
    with pytest.raises(StoreError, match=ghost):
        adapter.write_vectors([case.ids[1], ghost], good)
    with pytest.raises(DimensionMismatchError, match=str(d)):
        adapter.write_vectors(ids, np.ones((2, d + 1), dtype=np.float32))
    with pytest.raises(ShapeError):
        adapter.write_vectors(ids, good[:1])
    with pytest.raises(ShapeError):
        adapter.write_vectors(ids, good[0])
    bad = good.copy()
    bad[1, 0] = np.nan
    with pytest.raises(NonFiniteError, match=case.ids[4]):
        adapter.write_vectors(ids, bad)
    with pytest.raises(NudgeInputError, match="distinct"):
        adapter.write_vectors([case.ids[3], case.ids[3]], good)
    after = read_all(adapter)
    assert np.array_equal(after.embeddings, before.embeddings)  # nothing was written
    adapter.write_vectors([], np.zeros((0, d), dtype=np.float32))  # a no-op


def test_search_checks_the_query(case: Case) -> None:
    adapter = adapter_for(case.obj)
    with pytest.raises(DimensionMismatchError):
        adapter.search(np.ones(adapter.dim() + 2, dtype=np.float32), 3)
    with pytest.raises(ShapeError):
        adapter.search(np.ones((1, adapter.dim()), dtype=np.float32), 3)
    with pytest.raises(NudgeInputError, match="k"):
        adapter.search(np.ones(adapter.dim(), dtype=np.float32), 0)


def brute_force_scores(
    adapter: VectorStoreAdapter, queries: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Every record's score for each query, as ``top_scores`` defines it, from the vectors read
    out: (ids, (n_queries, n_records) unit dot products)."""
    everything = read_all(adapter, with_documents=False)
    x = everything.embeddings.astype(np.float64)
    q = queries.astype(np.float64)
    if adapter.metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = q @ x.T
    if adapter.metric == "l2":
        s = 1.0 - ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1) / 2.0
    return everything.ids, s


def test_top_scores_are_the_best_scores_outside_exclude(
    case: Case, record_property: pytest.RecordProperty
) -> None:
    adapter = adapter_for(case.obj)
    d = adapter.dim()
    stored = adapter.get([case.ids[2], case.ids[9]]).embeddings.astype(np.float32)
    queries = np.concatenate([stored, unit_rows(np.random.default_rng(11), 3, d)])
    exclude = [case.ids[2], case.ids[9], case.ids[4], case.ids[15], "not-a-record-id"]
    k = 6
    got = adapter.top_scores(queries, k, exclude)
    assert got.shape == (len(queries), k)
    assert got.dtype == np.float32
    assert np.all(np.diff(got, axis=1) <= 0)  # best first

    ids, s = brute_force_scores(adapter, queries)
    kept = [j for j, i in enumerate(ids) if i not in exclude]
    want = -np.sort(-s[:, kept], axis=1)[:, :k]
    hits = adapter._top_hits(queries, k, exclude)
    assert all(i not in exclude for row in hits for i, _ in row)  # excluded never appear
    # the records a query is its own vector of are excluded: it does not find itself (score 1)
    assert np.all(got[:2, 0] < 1.0 - 1e-4)
    if adapter.exact_search:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    else:  # approximate: how many of the true best k it found
        found = np.isclose(got[:, :, None], want[:, None, :], rtol=0, atol=1e-5).any(axis=1)
        recall = float(found.mean())
        record_property("top_scores_recall", recall)
        assert recall >= 0.8

    # the exact read-everything fallback (Milvus's top-k cap, short approximate searches)
    scanned = adapter._scan_top_hits(queries, k, exclude)
    assert all(i not in exclude for row in scanned for i, _ in row)
    np.testing.assert_allclose([[s for _, s in row] for row in scanned], want, atol=1e-5)

    # without exclusions a stored vector finds itself first
    alone = adapter.top_scores(stored, 1)
    np.testing.assert_allclose(alone[:, 0], 1.0, rtol=0, atol=1e-5)


def test_top_scores_pad_with_minus_inf_past_the_records_there_are(case: Case) -> None:
    adapter = adapter_for(case.obj)
    q = unit_rows(np.random.default_rng(12), 2, adapter.dim())
    exclude = case.ids[:5]
    n = len(case.ids)
    got = adapter.top_scores(q, n + 4, exclude)
    assert got.shape == (2, n + 4)
    assert np.all(np.isfinite(got[:, : n - 5]))
    assert np.all(got[:, n - 5 :] == -np.inf)
    ids, s = brute_force_scores(adapter, q)
    kept = [j for j, i in enumerate(ids) if i not in exclude]
    if adapter.exact_search:
        np.testing.assert_allclose(got[:, : n - 5], -np.sort(-s[:, kept], axis=1), atol=1e-5)
    assert adapter.top_scores(np.zeros((0, adapter.dim()), dtype=np.float32), 3).shape == (0, 3)


def test_top_scores_checks_its_inputs(case: Case) -> None:
    adapter = adapter_for(case.obj)
    d = adapter.dim()
    q = unit_rows(np.random.default_rng(13), 2, d)
    with pytest.raises(DimensionMismatchError):
        adapter.top_scores(np.ones((2, d + 1), dtype=np.float32), 3)
    with pytest.raises(ShapeError):
        adapter.top_scores(q[0], 3)
    with pytest.raises(NudgeInputError, match="k"):
        adapter.top_scores(q, 0)
    with pytest.raises(NudgeInputError, match="exclude"):
        adapter.top_scores(q, 3, case.ids[0])
    bad = q.copy()
    bad[1, 2] = np.inf
    with pytest.raises(NonFiniteError):
        adapter.top_scores(bad, 3)
