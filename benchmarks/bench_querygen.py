"""Query generation benchmarks (issue 4). Never collected by pytest.

Parts (``--parts a,b,c,d``):
  a  offline generator: NDCG@10 gain on the REAL test queries (paper split, seed 0) of SciFact and
     NFCorpus as a function of queries per chunk (1, 2, 4, 8); NUDGE-N fitted only on offline
     queries, γ chosen on held-out offline queries (covered split; for n = 1 the validation
     queries are each chunk's second offline query, never trained on).
  b  real LLM-written queries (run-llama-finetune-embedding, Lyft 10-K: 334 chunks x 2 questions)
     replayed through ``generate_queries``; per chunk one question is trained on and the other
     held out for test; 1 vs 2 training questions per chunk.
  c  concurrency: a fake LLM of 300 ms latency, 1,000 chunks x 2 queries at concurrency 16,
     against sequential (measured on 40 chunks and extrapolated, so the run does not take 300 s).
  d  the honesty row: default offline settings (2 queries per chunk) on both data sets.

Run: ``python benchmarks/bench_querygen.py --parts a,b,c,d`` (writes benchmarks/results/querygen.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nudge_rag.core import NudgeN, QuerySet  # noqa: E402
from nudge_rag.evaluation.datasets import QADataset  # noqa: E402
from nudge_rag.experiment import evaluate_embeddings, prepare_beir  # noqa: E402
from nudge_rag.querygen import generate_queries  # noqa: E402

DATA = (REPO / ".." / "shared" / "data").resolve()
OUT = REPO / "benchmarks" / "results" / "querygen.md"
logger = logging.getLogger("bench_querygen")


def _embedder():
    from nudge_rag.embedding import LocalEmbedder

    return LocalEmbedder(show_progress=False)


def _beir_corpus(name: str) -> dict[str, str]:
    corpus = {}
    with open(DATA / name / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            o = json.loads(line)
            corpus[str(o["_id"])] = ((o.get("title") or "") + " " + (o.get("text") or "")).strip()
    return corpus


def offline_rows(names: list[str], ns: list[int]) -> list[str]:
    emb = _embedder()
    rows = []
    for name in names:
        exp = prepare_beir(DATA / name, emb, show_progress=False)
        corpus = _beir_corpus(name)
        row = {d: i for i, d in enumerate(exp.doc_ids)}
        base = evaluate_embeddings(exp.doc_emb, exp.test)
        for n in ns:
            t0 = time.perf_counter()
            ds = generate_queries(corpus, queries_per_chunk=max(n, 2))
            per: dict[str, list[str]] = {}
            for qid, text in ds.queries.items():
                per.setdefault(ds.relevant_docs[qid][0], []).append(text)
            train_t, train_a, val_t, val_a = [], [], [], []
            for cid, qs in per.items():
                use = qs[:n]
                train_t += use
                train_a += [[row[cid]]] * len(use)
                if n == 1 and len(qs) > 1:
                    val_t.append(qs[1])
                    val_a.append([row[cid]])
            gen_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            train = QuerySet(emb.embed_queries(train_t), train_a)
            val = QuerySet(emb.embed_queries(val_t), val_a) if val_t else None
            emb_s = time.perf_counter() - t0
            res = NudgeN().fit(exp.doc_emb, train, val)
            assert res.embeddings is not None
            after = evaluate_embeddings(res.embeddings, exp.test)
            d = 100 * (after.ndcg.mean() - base.ndcg.mean())
            rows.append(
                f"| {name} | {n} | {len(train_t)} | {100 * base.ndcg.mean():.2f} | "
                f"{100 * after.ndcg.mean():.2f} | {d:+.2f} | {res.gamma:.4f} | "
                f"{res.curve.baseline if res.curve else float('nan'):.3f} → "
                f"{res.curve.best if res.curve else float('nan'):.3f} | {gen_s:.1f} | {emb_s:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def llamaindex_rows() -> list[str]:
    """Replay the stored LLM questions through the generator; hold out one question per chunk."""
    folder = DATA / "llamaindex_qa" / "run-llama-finetune-embedding"
    src = QADataset.from_json(folder / "train_dataset.json")
    by_chunk: dict[str, list[str]] = {}
    for qid, docs in src.relevant_docs.items():
        for d in docs:
            by_chunk.setdefault(d, []).append(src.queries[qid])
    text_to_id = {t: c for c, t in src.corpus.items()}

    async def replay(prompt: str) -> str:
        context = prompt.split("---------------------\n")[1].removesuffix("\n")
        return json.dumps(by_chunk.get(text_to_id[context], []))

    t0 = time.perf_counter()
    ds = generate_queries(
        src.corpus, llm=replay, queries_per_chunk=2, retries=0, on_error="skip",
        min_words=1, max_copy_words=None, near_duplicate=None,
    )  # fmt: skip
    gen_s = time.perf_counter() - t0
    assert ds.stats is not None
    emb = _embedder()
    ids = list(src.corpus)
    row = {c: i for i, c in enumerate(ids)}
    doc = emb.embed_documents([src.corpus[c] for c in ids])
    per: dict[str, list[str]] = {}
    for qid, text in ds.queries.items():
        per.setdefault(ds.relevant_docs[qid][0], []).append(text)
    rng = np.random.RandomState(0)
    test_t, test_a, tr1_t, tr1_a = [], [], [], []
    for cid, qs in per.items():
        if len(qs) < 2:
            continue
        k = int(rng.randint(2))
        test_t.append(qs[k])
        test_a.append([row[cid]])
        tr1_t.append(qs[1 - k])
        tr1_a.append([row[cid]])
    test = QuerySet(emb.embed_queries(test_t), test_a)
    base = evaluate_embeddings(doc, test)
    out = [
        f"Replay: {ds.stats.n_queries} questions for {ds.stats.n_chunks} chunks through "
        f"`generate_queries` in {gen_s:.2f} s ({ds.stats.n_failed} failed). "
        f"Test = one question per chunk ({len(test_t)}), held out at random (seed 0).",
        "",
        "| training questions | per chunk | γ choice | NDCG@10 before | after | Δ | hit@10 before | after | γ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    train1 = QuerySet(emb.embed_queries(tr1_t), tr1_a)
    # With one question per chunk left for training, γ cannot be chosen on held-out questions of
    # the same chunks (that would train on the test question or leave nothing); choose γ on the
    # *other* 10-K (Uber, val_dataset.json): different chunks, same LLM and prompt.
    other = QADataset.from_json(folder / "val_dataset.json")
    o_ids = list(other.corpus)
    o_row = {c: i for i, c in enumerate(o_ids)}
    o_doc = emb.embed_documents([other.corpus[c] for c in o_ids])
    o_q = list(other.queries)
    o_set = QuerySet(
        emb.embed_queries([other.queries[q] for q in o_q]),
        [[o_row[d] for d in other.relevant_docs[q]] for q in o_q],
    )
    o_res = NudgeN().fit(o_doc, o_set)  # covered split inside the Uber questions
    gamma_other = o_res.gamma
    choices = [("chosen on Uber 10-K", gamma_other)] + [
        ("fixed (diagnostic only)", g) for g in (0.05, 0.1, 0.2)
    ]
    for label, gamma in choices:
        res = NudgeN(gamma=gamma).fit(doc, train1)
        assert res.embeddings is not None
        aft = evaluate_embeddings(res.embeddings, test)
        out.append(
            f"| {len(tr1_t)} | 1 | {label} | {100 * base.ndcg.mean():.2f} | {100 * aft.ndcg.mean():.2f} | "
            f"{100 * (aft.ndcg.mean() - base.ndcg.mean()):+.2f} | {100 * base.hit.mean():.2f} | "
            f"{100 * aft.hit.mean():.2f} | {gamma:.4f} |"
        )
    out += [
        "",
        "Each chunk has exactly 2 LLM questions, so a question held out for test leaves 1 per chunk "
        "to train on: training on 2 per chunk and testing on held-out questions of the same chunks "
        "is impossible without training on the test question. With 1 per chunk γ cannot be chosen "
        "by a covered split either, so it is chosen on the other 10-K (Uber, val_dataset.json: "
        "same LLM and prompt, other chunks, covered split of its 2 questions per chunk): no test "
        "question is ever seen.",
    ]
    return [
        *out,
        "",
        f"γ chosen on Uber (covered split, 2 questions per chunk): {gamma_other:.4f}.",
    ]


def concurrency_rows(n_chunks: int = 1000, latency: float = 0.3, conc: int = 16) -> list[str]:
    chunks = {
        f"c{i}": f"Chunk number {i} talks about topic {i} in detail." for i in range(n_chunks)
    }

    async def fake(prompt: str) -> str:
        await asyncio.sleep(latency)
        i = prompt.split("Chunk number ")[1].split()[0]
        return json.dumps(
            [f"What does chunk {i} talk about?", f"Which topic is covered by item {i}?"]
        )

    t0 = time.perf_counter()
    ds = generate_queries(chunks, llm=fake, queries_per_chunk=2, max_concurrency=conc)
    par = time.perf_counter() - t0
    small = dict(list(chunks.items())[:40])
    t0 = time.perf_counter()
    generate_queries(small, llm=fake, queries_per_chunk=2, max_concurrency=1)
    seq_small = time.perf_counter() - t0
    seq = seq_small * n_chunks / len(small)
    return [
        "| setting | chunks | queries | wall time (s) |",
        "|---|---|---|---|",
        f"| concurrency {conc} (measured) | {n_chunks} | {len(ds.queries)} | {par:.1f} |",
        f"| sequential (measured on {len(small)} chunks: {seq_small:.1f} s, extrapolated) | "
        f"{n_chunks} | {2 * n_chunks} | {seq:.0f} |",
        f"| speed-up | | | {seq / par:.1f}x |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", default="a,b,c,d")
    ap.add_argument("--datasets", default="scifact,nfcorpus")
    ap.add_argument("--ns", default="1,2,4,8")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    parts = set(args.parts.split(","))
    names = args.datasets.split(",")
    md = ["# Query generation benchmarks (`benchmarks/bench_querygen.py`)", ""]
    header = (
        "| data set | queries / chunk | training queries | NDCG@10 no FT | NUDGE-N | Δ (points) | γ | "
        "val top-1 γ=0 → best | gen s | embed s |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    if "c" in parts:
        md += ["## (c) Concurrency: fake LLM, 300 ms per call", "", *concurrency_rows(), ""]
        print("\n".join(md), flush=True)
    if "b" in parts:
        md += [
            "## (b) Real LLM-written questions (Lyft 10-K), replayed",
            "",
            *llamaindex_rows(),
            "",
        ]
        print("\n".join(md[-8:]), flush=True)
    if "d" in parts:
        md += ["## (d) Offline generator, default (2 per chunk), REAL test queries", "", header]
        md += offline_rows(names, [2])
        md.append("")
    if "a" in parts:
        ns = [int(x) for x in args.ns.split(",")]
        md += ["## (a) Offline generator: queries per chunk, REAL test queries", "", header]
        md += offline_rows(names, ns)
        md.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
