"""The unmoved pass pushed down to the store's own search (``unmoved="search"``) against the
page-by-page scan: same γ choice and the same vectors written on every store whose search is
exact; the report says which ran."""

from __future__ import annotations

import numpy as np
from store_cases import Case
from test_finetuner_stores import finetuner, read_all, training

from nudge_rag.stores import adapter_for


def test_search_and_scan_choose_and_write_the_same(case: Case, tmp_path):
    before = read_all(case)
    pairs = training(case) * 2  # enough queries for a validation split
    scan = finetuner(case, tmp_path / "a", unmoved="scan", val_fraction=0.3)
    scan.finetune(pairs)
    rep_scan = scan.report
    after_scan = read_all(case)
    scan.revert()
    search = finetuner(case, tmp_path / "b", unmoved="search", val_fraction=0.3)
    search.finetune(pairs)
    rep = search.report
    assert rep_scan.unmoved == "scan" and rep.unmoved == "search"
    assert rep_scan.gamma > 0 and rep_scan.n_moved > 0  # a real choice, not γ = 0
    assert rep.n_records == rep_scan.n_records == len(before)
    if adapter_for(case.obj).exact_search:
        assert rep.gamma == rep_scan.gamma
        assert rep.moved_ids == rep_scan.moved_ids
        np.testing.assert_allclose(rep.curve.scores, rep_scan.curve.scores, atol=1e-6)
        after = read_all(case)
        for rid in before:
            np.testing.assert_allclose(after[rid][0], after_scan[rid][0], atol=1e-6)
    back = search.revert()
    assert back.ok
    final = read_all(case)
    for rid, (vec, text, meta) in before.items():
        assert final[rid][1] == text and final[rid][2] == meta
        tol = 1e-6 if case.normalizes else 0.0
        np.testing.assert_allclose(final[rid][0], vec, atol=tol)
