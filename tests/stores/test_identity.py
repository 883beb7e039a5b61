"""Every store names itself the same way each time it is adapted, whatever its contents."""

from __future__ import annotations

from store_cases import Case

from nudge_rag.stores import adapter_for


def test_identity_is_stable_across_adapters_and_reads(case: Case):
    first = adapter_for(case.obj).identity()
    ad = adapter_for(case.obj)
    list(ad.iter_pages(5))  # reading changes nothing
    assert ad.identity() == first
    assert adapter_for(case.obj).identity() == first
    assert first.key and ":" in first.key
