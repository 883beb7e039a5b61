"""Replay real human queries through the generator: the generation path must change nothing.

A fake "LLM" finds the SciFact chunk in the prompt and answers with the training and validation
queries (paper split) linked to it. Fitting NUDGE on what ``generate_queries`` returns must give
the same γ and the same test NDCG@10 as fitting on those queries directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nudge_rag.core import NudgeN, QuerySet
from nudge_rag.evaluation.datasets import load_beir
from nudge_rag.experiment import evaluate_embeddings, prepare_beir
from nudge_rag.querygen import generate_queries

pytestmark = pytest.mark.slow


def test_replayed_scifact_queries_fit_like_the_originals(shared_data: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from nudge_rag.embedding import LocalEmbedder

    folder = shared_data / "scifact"
    emb = LocalEmbedder(show_progress=False)
    exp = prepare_beir(folder, emb, show_progress=False)
    data = load_beir(folder, qrels=["train", "test"])
    from nudge_rag.evaluation.datasets import paper_split

    train_j, val_j, _ = paper_split(data.qrels, ("train", "dev", "test"))
    by_doc: dict[str, list[str]] = {}
    for judg in (train_j, val_j):
        for qid, docs in judg.items():
            for d in docs:
                by_doc.setdefault(d, []).append(data.queries[qid])
    text_to_doc = {data.corpus[d]: d for d in by_doc}

    async def replay_llm(prompt: str) -> str:
        context = prompt.split("---------------------\n")[1].removesuffix("\n")
        return json.dumps(by_doc[text_to_doc[context]])

    chunks = {d: data.corpus[d] for d in by_doc}
    n = max(len(v) for v in by_doc.values())
    ds = generate_queries(
        chunks, llm=replay_llm, queries_per_chunk=n, max_concurrency=16,
        min_words=1, max_copy_words=None, near_duplicate=None, retries=0,
    )  # fmt: skip
    assert ds.stats is not None and ds.stats.n_failed == 0
    # every (query, chunk) pair came through
    got: dict[str, set[str]] = {}
    for qid, text in ds.queries.items():
        got.setdefault(" ".join(text.split()), set()).update(ds.relevant_docs[qid])
    want: dict[str, set[str]] = {}
    for d, texts in by_doc.items():
        for t in texts:
            want.setdefault(" ".join(t.split()), set()).add(d)
    assert got == want

    # Rebuild the paper's train / validation sets from the generated dataset, query by query.
    row = {d: i for i, d in enumerate(exp.doc_ids)}

    def from_generated(judg: dict[str, dict[str, int]]) -> QuerySet:
        texts = [data.queries[q] for q in judg]
        vecs = emb.embed_queries(texts)
        answers = []
        for q, t in zip(judg, texts, strict=True):
            generated = got[" ".join(t.split())]
            # A few SciFact claims share their exact text with another claim that has other
            # documents: text alone cannot tell them apart, so keep this claim's own documents.
            assert set(judg[q]) <= generated
            answers.append(sorted(row[d] for d in generated if d in judg[q]))
        return QuerySet(vecs, answers)

    train_g, val_g = from_generated(train_j), from_generated(val_j)
    direct = NudgeN().fit(exp.doc_emb, exp.train, exp.val)
    via_gen = NudgeN().fit(exp.doc_emb, train_g, val_g)
    assert via_gen.gamma == direct.gamma
    nd_direct = evaluate_embeddings(direct.embeddings, exp.test).ndcg.mean()
    nd_gen = evaluate_embeddings(via_gen.embeddings, exp.test).ndcg.mean()
    assert abs(nd_direct - nd_gen) < 1e-9
    base = evaluate_embeddings(exp.doc_emb, exp.test).ndcg.mean()
    assert nd_gen > base + 0.05  # and real queries do help
    assert np.array_equal(direct.moved, via_gen.moved)
