"""The paper's protocol on a BEIR folder: embed, split, fine-tune, evaluate before and after.

Used by ``nudge-rag finetune`` on a BEIR folder and by the benchmarks.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.beir import load_beir, paper_split
from nudge_rag.core import NudgeM, NudgeN, NudgeResult, QuerySet
from nudge_rag.core.topk import topk_rows
from nudge_rag.errors import DatasetError
from nudge_rag.evaluation.metrics import RankingMetrics, answers_to_csr, ranking_metrics
from nudge_rag.judged import JudgedQueries

__all__ = ["BeirExperiment", "ExperimentRow", "evaluate_embeddings", "prepare_beir", "run_methods"]

logger = logging.getLogger(__name__)


@dataclass
class BeirExperiment:
    """A BEIR data set embedded and split as in the paper (train / validation / test).

    Attributes:
        name: The folder name.
        doc_ids: Record ids, in row order of ``doc_emb``.
        doc_emb: ``(N, d)`` float32 record vectors (unit rows).
        train, val, test: Queries with their answer rows (graded where the qrels are).
        covered: Per test query: does some relevant record of it also answer a training query?
            NUDGE moves only such records.
    """

    name: str
    doc_ids: list[str]
    doc_emb: np.ndarray
    train: QuerySet
    val: QuerySet
    test: QuerySet
    covered: np.ndarray


def qrels_order(folder: Path) -> tuple[str, ...]:
    """The paper's pooling order; a graded train file (NFCorpus) replaces the flattened one."""
    qdir = folder / "qrels"
    train = "train_graded" if (qdir / "train_graded.tsv").is_file() else "train"
    return tuple(s for s in (train, "dev", "test") if (qdir / f"{s}.tsv").is_file())


def prepare_beir(
    folder: str | os.PathLike[str], embedder: Any = None, *, show_progress: bool = True
) -> BeirExperiment:
    """Load ``folder`` (BEIR format), split it as the paper does, and embed it.

    Args:
        folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/*.tsv``.
        embedder: Anything with ``embed_documents`` / ``embed_queries``; default the local
            all-MiniLM-L6-v2 (:class:`~nudge_rag.embedding.LocalEmbedder`, disk-cached).
        show_progress: Progress bars while embedding.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        msg = f"data folder not found: {str(path)!r}"
        raise DatasetError(msg)
    order = qrels_order(path)
    if not order:
        msg = f"{path}: no qrels/train.tsv, qrels/dev.tsv or qrels/test.tsv; is it a BEIR folder?"
        raise DatasetError(msg)
    data = load_beir(path, qrels=list(order))
    train_j, val_j, test_j = paper_split(data.qrels, order)
    if not train_j or not val_j or not test_j:
        msg = f"{path}: too few judged queries to split into train / validation / test"
        raise DatasetError(msg)
    if embedder is None:
        from nudge_rag.embedding import LocalEmbedder

        embedder = LocalEmbedder(show_progress=show_progress)
    doc_ids = data.corpus_ids
    row = {d: i for i, d in enumerate(doc_ids)}
    t0 = time.perf_counter()
    doc_emb = np.asarray(embedder.embed_documents([data.corpus[d] for d in doc_ids]), np.float32)
    sets = []
    for part, judg in zip(("train", "validation", "test"), (train_j, val_j, test_j), strict=True):
        jq = JudgedQueries.from_any(
            {"queries": data.queries, "relevant_docs": judg}, name=f"{path.name} {part} split"
        )
        q = np.asarray(embedder.embed_queries(list(jq.texts or ())), np.float32)
        sets.append(jq.to_query_set(row, q))
    logger.info("%s embedded in %.1f s", path.name, time.perf_counter() - t0)
    train, val, test = sets
    seen = set(train.rows.tolist())
    covered = np.array(
        [any(r in seen for r in test.answer_rows(i).tolist()) for i in range(len(test))]
    )
    return BeirExperiment(path.name, doc_ids, doc_emb, train, val, test, covered)


def evaluate_embeddings(
    doc_emb: np.ndarray, queries: QuerySet, k: int = 10, *, chunk: int = 1024
) -> RankingMetrics:
    """Per-query NDCG@k (graded), Recall@k, MRR@k and hit rate, ranking by inner product.

    Inner product, not cosine: NUDGE-M's output is not unit-norm and is searched by dot product.
    """
    d = np.asarray(doc_emb, np.float32)
    ranked = (
        np.concatenate(
            [
                topk_rows(queries.embeddings[s : s + chunk] @ d.T, k)
                for s in range(0, len(queries), chunk)
            ]
        )
        if len(queries)
        else np.zeros((0, k), np.int64)
    )
    return ranking_metrics(ranked, *answers_to_csr(queries.answers()), k=k)


@dataclass(frozen=True)
class ExperimentRow:
    """One method's test results."""

    name: str
    ndcg: float
    recall: float
    ndcg_covered: float
    ndcg_uncovered: float
    seconds: float
    gamma: float | None
    n_moved: int


def _row(
    name: str, m: RankingMetrics, covered: np.ndarray, seconds: float, res: NudgeResult | None
) -> ExperimentRow:
    nd = m.ndcg
    return ExperimentRow(
        name,
        float(nd.mean()),
        float(m.recall.mean()),
        float(nd[covered].mean()) if covered.any() else float("nan"),
        float(nd[~covered].mean()) if (~covered).any() else float("nan"),
        seconds,
        None if res is None else res.gamma,
        0 if res is None else int(res.moved.size),
    )


def run_methods(
    exp: BeirExperiment, methods: list[str], *, objective: str = "top1"
) -> list[ExperimentRow]:
    """No fine-tuning, then each of ``methods`` (``"nudge-n"``, ``"nudge-m"``) on ``exp``."""
    rows = [
        _row("no fine-tuning", evaluate_embeddings(exp.doc_emb, exp.test), exp.covered, 0.0, None)
    ]
    for method in methods:
        model = NudgeN(objective=objective) if method == "nudge-n" else NudgeM(objective=objective)
        t0 = time.perf_counter()
        res = model.fit(exp.doc_emb, exp.train, exp.val)
        secs = time.perf_counter() - t0
        assert res.embeddings is not None
        rows.append(
            _row(method, evaluate_embeddings(res.embeddings, exp.test), exp.covered, secs, res)
        )
    return rows
