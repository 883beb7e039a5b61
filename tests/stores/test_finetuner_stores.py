"""NudgeEmbeddingFinetuner against every real store: what moves, what never changes, revert,
metric safety and a write failure half-way."""

from __future__ import annotations

import numpy as np
import pytest
from store_cases import Case

from nudge_rag import NudgeEmbeddingFinetuner, NudgeN, QuerySet
from nudge_rag.core import normalize_rows
from nudge_rag.errors import MetricError, WriteBackError
from nudge_rag.stores import adapter_for

GAMMA = 0.3


def training(case: Case) -> list[tuple[str, list[str]]]:
    """Two queries for each of the first 12 records, sharing its unique word and another topic's."""
    other = ["solar wind", "river delta", "neural network", "coral reef", "protein folding"]
    return [
        (f"detail{i} {other[(i + v) % 5]} question {v}", [case.ids[i]])
        for i in range(12)
        for v in range(2)
    ]


def read_all(case: Case) -> dict[str, tuple[np.ndarray, str | None, dict]]:
    ad = adapter_for(case.obj)
    out = {}
    for page in ad.iter_pages(5):
        for i, v, t, m in zip(page.ids, page.embeddings, page.texts, page.metadatas, strict=True):
            out[i] = (np.array(v), t, m)
    return out


def finetuner(case: Case, tmp_path, **kw) -> NudgeEmbeddingFinetuner:
    bare = case.key.endswith("-bare") or (
        case.key.startswith("llamaindex-") and not hasattr(case.obj, "as_retriever")
    )
    embed = case.embedder.as_llamaindex() if bare else None
    return NudgeEmbeddingFinetuner(case.obj, embed_model=embed, state_dir=tmp_path / "state", **kw)


def expected_moves(case: Case, before) -> dict[str, np.ndarray]:
    pairs = training(case)
    ids = list(before)
    unit = normalize_rows(np.stack([before[i][0] for i in ids]).astype(np.float32))
    row = {i: r for r, i in enumerate(ids)}
    q = case.embedder.embed([p[0] for p in pairs])
    res = NudgeN(gamma=GAMMA).fit(unit, QuerySet(q, [[row[p[1][0]]] for p in pairs]))
    return {ids[r]: res.embeddings[r] for r in res.moved}


def test_finetune_and_revert_on_every_store(case: Case, tmp_path):
    before = read_all(case)
    ft = finetuner(case, tmp_path, gamma=GAMMA)
    retriever = ft.finetune(training(case), similarity_top_k=3)
    after = read_all(case)
    want = expected_moves(case, before)
    assert sorted(ft.report.moved_ids) == sorted(want) and want
    assert after.keys() == before.keys()
    for rid, (vec, text, meta) in before.items():
        assert after[rid][1] == text and after[rid][2] == meta  # never touched
        if rid in want:
            tol = 1e-6 if case.normalizes else 1e-7
            np.testing.assert_allclose(after[rid][0], want[rid], atol=tol)
        else:
            np.testing.assert_array_equal(after[rid][0], vec)  # bit for bit
    if case.key.endswith("-bare"):
        assert retriever is None  # its texts live in the index's docstore
    elif case.retrieve is not None:
        assert retriever is not None
        # the record a query was trained toward now ranks first for it in the framework itself
        query, (rid,) = training(case)[0]
        top_text = case.retrieve(query, 1)[0]
        assert top_text == case.texts[case.ids.index(rid)]
    ft.revert()
    back = read_all(case)
    for rid, (vec, text, meta) in before.items():
        assert back[rid][1] == text and back[rid][2] == meta
        if case.normalizes:
            # Cosine stores renormalise what they are given (Qdrant's local mode even rewrites
            # stored vectors when it searches): within 1e-6, not bit for bit.
            np.testing.assert_allclose(back[rid][0], vec, atol=1e-6)
        else:
            np.testing.assert_array_equal(back[rid][0], vec)


def test_nudge_m_only_on_inner_product_stores(case: Case, tmp_path):
    if case.metric != "dot":
        with pytest.raises(MetricError, match="method='nudge-n'"):
            finetuner(case, tmp_path, method="nudge-m")
        return
    before = read_all(case)
    ft = finetuner(case, tmp_path, method="nudge-m", gamma=0.2)
    ft.finetune(training(case))
    after = read_all(case)
    moved = set(ft.report.moved_ids)
    assert moved
    for rid in moved:  # NUDGE-M lengthens vectors: the store must keep them as written
        assert np.linalg.norm(after[rid][0]) > 1.0 + 1e-3
    ft.revert()
    for rid, (vec, _, _) in before.items():
        np.testing.assert_array_equal(read_all(case)[rid][0], vec)


def test_write_failure_half_way_leaves_the_store_restorable(case: Case, tmp_path):
    before = read_all(case)
    ft = finetuner(case, tmp_path, gamma=GAMMA, write_batch_size=2)
    real = ft._adapter._write_batch
    calls = {"n": 0}

    def flaky(ids, vectors):
        calls["n"] += 1
        if calls["n"] >= 3:  # two batches land, then the store fails, rollback included
            raise ConnectionError("connection reset")
        real(ids, vectors)

    ft._adapter._write_batch = flaky
    with pytest.raises(WriteBackError, match="connection reset"):
        ft.finetune(training(case))
    mid = read_all(case)
    assert any(not np.array_equal(mid[r][0], before[r][0]) for r in before)  # it was half-way
    ft._adapter._write_batch = real
    ft.revert()
    back = read_all(case)
    for rid, (vec, text, meta) in before.items():
        assert back[rid][1] == text and back[rid][2] == meta
        np.testing.assert_allclose(back[rid][0], vec, atol=1e-6 if case.normalizes else 0)
