"""Shared helpers of the benchmarks: data preparation, evaluation, timing and memory.

Not part of the library and never collected by pytest. Importing this module puts the repository
root on ``sys.path`` so the benchmarks run from a plain checkout.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import resource
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nudge_rag.core import QuerySet  # noqa: E402
from nudge_rag.embedding import LocalEmbedder, default_cache_dir  # noqa: E402
from nudge_rag.evaluation.datasets import load_beir, paper_split  # noqa: E402
from nudge_rag.experiment import evaluate_embeddings, qrels_order  # noqa: E402

logger = logging.getLogger("benchmarks")

DATA_ROOT = (REPO / ".." / "shared" / "data").resolve()
DEFAULT_DATASETS = ("scifact", "nfcorpus")


# ---------------------------------------------------------------------------------------------
# Memory and time
# ---------------------------------------------------------------------------------------------
def current_rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")  # pragma: no cover


def reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark (VmHWM) to its current size.

    Linux: writing ``5`` to ``/proc/self/clear_refs`` resets VmHWM. Returns False where that is
    not possible; :func:`peak_rss_mb` then falls back to the lifetime ``ru_maxrss``.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Resident high-water mark of this process in MB: VmHWM (since the last
    :func:`reset_peak_rss`), else ``ru_maxrss`` (lifetime; KB on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Swallow what third-party code prints (nudge-ft prints its progress)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


# ---------------------------------------------------------------------------------------------
# Prepared data: embeddings + split, as plain files in a work folder
# ---------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A data set ready for the methods: vectors, the split, and record rows per query."""

    name: str
    doc_ids: list[str]
    doc_emb: np.ndarray  # (N, d) float32, unit rows, corpus order
    doc_texts: list[str]
    q_ids: dict[str, list[str]]  # split -> query ids
    q_texts: dict[str, list[str]]
    q_emb: dict[str, np.ndarray]  # split -> (n, d) float32
    answers: dict[str, list[dict[int, int]]]  # split -> per query {row: grade}

    def binary(self, split: str) -> list[list[int]]:
        return [sorted(a) for a in self.answers[split]]


def prepare(folder: Path, work: Path, *, batch_size: int = 32, progress: bool = True) -> Path:
    """Embed (disk-cached) and split one BEIR folder; write the arrays the workers read.

    Writes ``work/doc_emb.npy``, ``work/q_{train,val,test}.npy`` and ``work/meta.json``.
    """
    work.mkdir(parents=True, exist_ok=True)
    order = qrels_order(folder)
    present = list(order)
    data = load_beir(folder, qrels=present)
    train, val, test = paper_split(data.qrels, order)
    emb = LocalEmbedder(batch_size=batch_size, show_progress=progress)
    doc_ids = data.corpus_ids
    row = {d: i for i, d in enumerate(doc_ids)}
    t0 = time.perf_counter()
    q_all = list(train) + list(val) + list(test)
    qv = emb.embed_queries([data.queries[q] for q in q_all])
    dv = emb.embed_documents([data.corpus[d] for d in doc_ids])
    logger.info("%s: embeddings ready in %.1f s", folder.name, time.perf_counter() - t0)
    np.save(work / "doc_emb.npy", dv, allow_pickle=False)
    meta: dict[str, object] = {
        "name": folder.name,
        "folder": str(folder),
        "order": present,
        "model_id": emb.model_id,
        "doc_ids": doc_ids,
        "splits": {},
    }
    start = 0
    for split, judg in (("train", train), ("val", val), ("test", test)):
        ids = list(judg)
        np.save(work / f"q_{split}.npy", qv[start : start + len(ids)], allow_pickle=False)
        start += len(ids)
        meta["splits"][split] = {  # type: ignore[index]
            "ids": ids,
            "answers": [[[row[d], g] for d, g in judg[q].items()] for q in ids],
        }
    (work / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return work


def load_prepared(work: Path, *, texts: bool = False) -> Prepared:
    """Read what :func:`prepare` wrote (texts re-read from the data folder only if asked)."""
    meta = json.loads((work / "meta.json").read_text(encoding="utf-8"))
    q_ids = {s: v["ids"] for s, v in meta["splits"].items()}
    answers = {s: [{r: g for r, g in a} for a in v["answers"]] for s, v in meta["splits"].items()}
    q_texts: dict[str, list[str]] = {}
    doc_texts: list[str] = []
    if texts:
        data = load_beir(meta["folder"], qrels=meta["order"])
        doc_texts = [data.corpus[d] for d in meta["doc_ids"]]
        q_texts = {s: [data.queries[q] for q in ids] for s, ids in q_ids.items()}
    return Prepared(
        name=meta["name"],
        doc_ids=meta["doc_ids"],
        doc_emb=np.load(work / "doc_emb.npy", allow_pickle=False),
        doc_texts=doc_texts,
        q_ids=q_ids,
        q_texts=q_texts,
        q_emb={s: np.load(work / f"q_{s}.npy", allow_pickle=False) for s in q_ids},
        answers=answers,
    )


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def evaluate(
    doc_emb: np.ndarray, q_emb: np.ndarray, answers: list[dict[int, int]], k: int = 10
) -> dict[str, list[float]]:
    """Per-query NDCG@k (graded gains) and Recall@k, ranking records by inner product.

    Inner product, not cosine: NUDGE-M's output is not unit-norm and must be searched by dot.
    """
    m = evaluate_embeddings(doc_emb, QuerySet(q_emb, answers), k)
    return {"ndcg": m.ndcg.tolist(), "recall": m.recall.tolist()}


def covered_mask(train: list[dict[int, int]], test: list[dict[int, int]]) -> np.ndarray:
    """True for test queries with a relevant record that some training query also points to."""
    seen = {r for a in train for r, g in a.items() if g > 0}
    return np.array([any(r in seen for r, g in a.items() if g > 0) for a in test], dtype=bool)


def summarise(per_query: Mapping[str, list[float]], covered: np.ndarray) -> dict[str, float]:
    nd = np.asarray(per_query["ndcg"])
    rc = np.asarray(per_query["recall"])
    return {
        "ndcg@10": float(nd.mean()),
        "recall@10": float(rc.mean()),
        "ndcg@10_covered": float(nd[covered].mean()) if covered.any() else float("nan"),
        "ndcg@10_uncovered": float(nd[~covered].mean()) if (~covered).any() else float("nan"),
    }


def cache_root() -> Path:
    return default_cache_dir()
