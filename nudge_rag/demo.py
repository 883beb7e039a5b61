"""``make demo`` / ``python -m nudge_rag.demo``: a newcomer's first before/after result, fast.

Two steps, the quick one first, both offline with the local all-MiniLM-L6-v2:

1. **The flagship flow on 729 chunks of two 10-K filings** (Lyft and Uber, LlamaIndex's
   fine-tuning tutorial data: two LLM-written questions per chunk). The chunks go into a LangChain
   ``InMemoryVectorStore``; ``NudgeEmbeddingFinetuner(store).finetune(questions)`` runs with its
   default ``method="auto"``; the demo prints what ``auto`` chose and NDCG@10 / hit@10 of the
   *sister* questions before and after, through the retriever ``finetune()`` returns. Sister
   protocol (``benchmarks/bench_gains.py``): per chunk one question trains and the other tests;
   for 1/8 of the chunks (seeded) both train. About a minute of embedding.
2. **The NUDGE paper's SciFact table**: ``nudge-rag finetune <scifact>`` (5,183 abstracts to
   embed: minutes, once; the embedding cache keeps them).

Usage: ``python -m nudge_rag.demo [DATA]`` where DATA is the folder holding ``scifact/`` and
``llamaindex_qa/run-llama-finetune-embedding/`` (default: ``../shared/data``), or one BEIR folder
(only step 2 runs then). ``--embed-backend`` as in ``nudge-rag``; ``--quiet``: no progress bars.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TENK_FOLDER", "find_data", "main", "sister_split"]

#: Where the 10-K questions sit under the data folder.
TENK_FOLDER = Path("llamaindex_qa") / "run-llama-finetune-embedding"
_REPO = Path(__file__).resolve().parent.parent
K = 10

NO_DATA = """\
nudge-rag demo: no data folder given, and ../shared/data was not found.
Pass one with `make demo ARGS=PATH` (or `python -m nudge_rag.demo PATH`), where PATH holds
  scifact/                                      a BEIR folder: corpus.jsonl, queries.jsonl, qrels/*.tsv
  llamaindex_qa/run-llama-finetune-embedding/   train_dataset.json, val_dataset.json (LlamaIndex
                                                EmbeddingQAFinetuneDataset: corpus, queries, relevant_docs)
or PATH is one BEIR folder (SciFact, NFCorpus, ... from the BEIR benchmark): then only its table runs."""


def find_data(arg: str | None) -> tuple[Path | None, Path | None]:
    """``(10-K folder, BEIR folder)`` found from ``arg`` (or ``../shared/data``); None if absent."""
    if arg:
        p = Path(arg).expanduser()
        if (p / "corpus.jsonl").is_file():
            return None, p
        roots = [p]
    else:
        roots = [(base / ".." / "shared" / "data").resolve() for base in (Path.cwd(), _REPO)]
    for root in roots:
        tenk, sci = root / TENK_FOLDER, root / "scifact"
        found = (
            tenk if (tenk / "train_dataset.json").is_file() else None,
            sci if (sci / "corpus.jsonl").is_file() else None,
        )
        if any(found):
            return found
    return None, None


def sister_split(
    questions: dict[str, list[str]], seed: int = 0, both_frac: float = 1 / 8
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Per chunk (in the order given; seeded shuffle of its questions) the first question trains
    and the second tests; for ``both_frac`` of the chunks both train. Returns ``(train, test)`` as
    ``(question, chunk id)`` pairs. Chunks with fewer than two questions only train. With the
    chunks in corpus order this is ``benchmarks/bench_gains.py``'s ``sister_split`` (same seed,
    same split), so the demo's numbers are the README's seed-0 row.

    Example:
        >>> tr, te = sister_split({"a": ["qa1", "qa2"], "b": ["qb1", "qb2"]}, both_frac=0.5)
        >>> len(tr), len(te)
        (3, 1)
    """
    rng = np.random.default_rng(seed)
    chunks = list(questions)
    first: dict[str, list[str]] = {}
    for c in chunks:
        qs = list(questions[c])
        first[c] = [qs[i] for i in rng.permutation(len(qs))]
    pairs = [c for c in chunks if len(first[c]) >= 2]
    n_both = int(len(pairs) * both_frac)
    both = set(rng.choice(np.array(pairs), n_both, replace=False).tolist()) if n_both else set()
    train = [(first[c][0], c) for c in chunks]
    train += [(first[c][1], c) for c in pairs if c in both]
    test = [(first[c][1], c) for c in pairs if c not in both]
    return train, test


def _metrics(ranked: list[list[str]], truth: list[str]) -> tuple[float, float]:
    """Mean NDCG@10 and hit@10 with one relevant chunk per question."""
    ndcg, hit = [], []
    for ids, t in zip(ranked, truth, strict=True):
        pos = ids[:K].index(t) if t in ids[:K] else -1
        ndcg.append(1.0 / np.log2(pos + 2) if pos >= 0 else 0.0)
        hit.append(1.0 if pos >= 0 else 0.0)
    return float(np.mean(ndcg)), float(np.mean(hit))


def run_tenk(folder: Path, embedder: Any, *, show_progress: bool = True) -> dict[str, Any]:
    """Step 1: the 10-K chunks in an InMemoryVectorStore, fine-tuned with the defaults."""
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag import NudgeEmbeddingFinetuner
    from nudge_rag.evaluation.datasets import QADataset

    corpus: dict[str, str] = {}
    by_chunk: dict[str, list[str]] = {}
    for name in ("train_dataset.json", "val_dataset.json"):
        f = folder / name
        if not f.is_file():
            continue
        ds = QADataset.from_json(f)
        corpus.update(ds.corpus)
        for qid, text in ds.queries.items():
            for cid in ds.relevant_docs[qid]:
                by_chunk.setdefault(cid, []).append(text)
    train, test = sister_split({c: by_chunk[c] for c in corpus if c in by_chunk})
    print(
        f"\n[1/2] 10-K filings (Lyft, Uber): {len(corpus)} chunks, {len(train)} questions to "
        f"fine-tune with, {len(test)} sister questions to test on (NDCG@10 / hit@10).",
        flush=True,
    )
    t0 = time.perf_counter()
    store = InMemoryVectorStore(embedder.as_langchain())
    ids = list(corpus)
    store.add_texts([corpus[c] for c in ids], ids=ids)
    embedder.embed_queries([q for q, _ in train + test])  # one batch, cached: search reads it
    t_embed = time.perf_counter() - t0

    def ranked(retriever: Any) -> list[list[str]]:
        return [[d.id for d in retriever.invoke(q)] for q, _ in test]

    truth = [c for _, c in test]
    before = _metrics(ranked(store.as_retriever(search_kwargs={"k": K})), truth)
    with tempfile.TemporaryDirectory() as state:
        ft = NudgeEmbeddingFinetuner(store, state_dir=state, show_progress=show_progress)
        t1 = time.perf_counter()
        tuned = ft.finetune([(q, [c]) for q, c in train], similarity_top_k=K)
        t_ft = time.perf_counter() - t1
        after = _metrics(ranked(tuned), truth)
        chosen = ft.report.chosen if ft.report is not None else ""
    print(
        f"      method='auto' chose: {chosen or 'n/a'}  (fine-tune {t_ft:.1f} s; embedding {t_embed:.0f} s)\n"
        f"      sister questions  NDCG@10 {before[0]:.3f} -> {after[0]:.3f} ({(after[0] - before[0]) * 100:+.1f} points)"
        f"   hit@10 {before[1]:.3f} -> {after[1]:.3f} ({(after[1] - before[1]) * 100:+.1f})",
        flush=True,
    )  # fmt: skip
    return {"chosen": chosen, "before": before, "after": after, "n_test": len(test)}


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (2: no data found)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    ap = argparse.ArgumentParser(prog="nudge-rag-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help="data folder (default ../shared/data) or a BEIR folder")
    ap.add_argument(
        "--embed-backend", choices=["auto", "torch", "onnx", "onnx-int8"], default="auto"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tenk, beir = find_data(args.data)
    if tenk is None and beir is None:
        print(NO_DATA, file=sys.stderr)
        return 2
    from nudge_rag.embedding import LocalEmbedder

    emb = LocalEmbedder(backend=args.embed_backend, show_progress=not args.quiet)
    print(
        f"nudge_rag demo: all-MiniLM-L6-v2 on {emb.backend} (offline; embeddings cached in "
        f"{emb.cache_dir}).",
        flush=True,
    )
    t0 = time.perf_counter()
    if tenk is not None:
        run_tenk(tenk, emb, show_progress=not args.quiet)
        print(f"      first result after {time.perf_counter() - t0:.0f} s", flush=True)
    else:
        print("\n[1/2] skipped: no 10-K questions (llamaindex_qa/...) beside the BEIR folder")
    if beir is None:
        print("\n[2/2] skipped: no scifact/ BEIR folder found", flush=True)
        return 0
    print(
        f"\n[2/2] The NUDGE paper's protocol on {beir} (what `nudge-rag finetune` prints)",
        flush=True,
    )
    from nudge_rag import sources

    run = sources.finetune_beir(beir, embed_model=emb, show_progress=not args.quiet)
    print(run.summary(), flush=True)
    print(f"\nnudge_rag demo: done in {time.perf_counter() - t0:.0f} s.", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
