"""Issue 11, "Gains users can bank on": what to fit so that held-out questions gain, never lose.

A research benchmark (never collected by pytest). Parts (``--parts``):

  repro    the issue's numbers on the 10-K chunks (Lyft + Uber, 729 chunks, 2 LLM questions each):
           sister protocol, cross protocol, fixed γ, the LlamaIndex-style adaptor, centring.
  sister   candidates on the target sister protocol (1/8 of the chunks train both questions).
  cross    candidates trained on the Lyft questions, tested on the Uber ones.
  beir     the same candidates on SciFact and NFCorpus (paper split, test queries).
  chat     the simulated chatbot on SciFact (and NFCorpus with --chat-datasets).
  real     the default NUDGE rows once through the real finetuner and a LangChain
           InMemoryVectorStore, to check that the numpy simulation matches it.
  seeds    issue 18: ``method="auto"`` through the real finetuner per finetuner seed (--seeds),
           SciFact, NFCorpus, 10-K sister and cross (--seed-cases), directly and through
           ``generate_queries`` with a replay LLM (--paths); what auto chose, its margin and
           noise, and its estimate for untrained records.

Embeddings come from all-MiniLM-L6-v2 through ``nudge_rag.embedding.LocalEmbedder`` (disk
cache); BEIR data through ``common.prepare``. Everything after the embeddings is numpy.

Run: ``python benchmarks/bench_gains.py --parts repro,sister,cross,beir,chat`` (writes
``benchmarks/results/gains.md`` and ``gains.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from nudge_rag.core import (
    Adaptor,
    AdaptorConfig,
    NudgeN,
    QuerySet,
    fit_adaptor,
    validation_split,
)
from nudge_rag.core.split import validation_positions
from nudge_rag.errors import ConfigError
from nudge_rag.experiment import evaluate_embeddings

logger = logging.getLogger("bench_gains")

TENK = common.DATA_ROOT / "llamaindex_qa" / "run-llama-finetune-embedding"
RESULTS = common.REPO / "benchmarks" / "results"
K = 10


# =============================================================================================
# Data
# =============================================================================================
@dataclass
class Corpus:
    """Records, questions and, per question, its answers (record rows, graded)."""

    name: str
    doc: np.ndarray  # (N, d) unit float32
    q: np.ndarray  # (n, d) unit float32
    answers: list[dict[int, float]]
    group: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per record (10-K: company)
    texts: list[str] = field(default_factory=list)  # question texts
    doc_texts: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)

    def qs(self, idx: Sequence[int] | np.ndarray, q: np.ndarray | None = None) -> QuerySet:
        idx = np.asarray(idx, dtype=np.int64)
        src = self.q if q is None else q
        return QuerySet(src[idx], [self.answers[i] for i in idx.tolist()])


def load_tenk() -> Corpus:
    """Lyft (train_dataset.json) + Uber (val_dataset.json) chunks, 729 records, 1,458 questions."""
    from nudge_rag.embedding import LocalEmbedder
    from nudge_rag.evaluation.datasets import QADataset

    emb = LocalEmbedder(show_progress=False)
    docs: list[np.ndarray] = []
    qv: list[np.ndarray] = []
    answers: list[dict[int, float]] = []
    group: list[int] = []
    texts: list[str] = []
    doc_texts: list[str] = []
    doc_ids: list[str] = []
    base = 0
    for g, f in enumerate(("train_dataset.json", "val_dataset.json")):
        ds = QADataset.from_json(TENK / f)
        ids = list(ds.corpus)
        row = {c: base + i for i, c in enumerate(ids)}
        doc_texts += [ds.corpus[c] for c in ids]
        doc_ids += ids
        docs.append(emb.embed_documents([ds.corpus[c] for c in ids]))
        qids = list(ds.queries)
        qt = [ds.queries[x] for x in qids]
        qv.append(emb.embed_queries(qt))
        texts += qt
        answers += [{row[d]: 1.0 for d in ds.relevant_docs[x]} for x in qids]
        group += [g] * len(ids)
        base += len(ids)
    return Corpus(
        "10-K",
        np.concatenate(docs).astype(np.float32),
        np.concatenate(qv).astype(np.float32),
        answers,
        np.asarray(group),
        texts,
        doc_texts,
        doc_ids,
    )


def load_beir(name: str, *, texts: bool = False) -> tuple[Corpus, dict[str, np.ndarray]]:
    """A BEIR set as one Corpus (train, val, test queries stacked) and the split's indices."""
    work = common.cache_root() / "bench" / name
    if not (work / "meta.json").is_file():
        common.prepare(common.DATA_ROOT / name, work, progress=False)
    p = common.load_prepared(work, texts=texts)
    q = np.concatenate([p.q_emb[s] for s in ("train", "val", "test")]).astype(np.float32)
    answers = [
        {int(r): float(g) for r, g in a.items()}
        for s in ("train", "val", "test")
        for a in p.answers[s]
    ]
    n = {s: len(p.answers[s]) for s in ("train", "val", "test")}
    idx = {
        "train": np.arange(n["train"]),
        "val": np.arange(n["train"], n["train"] + n["val"]),
        "test": np.arange(n["train"] + n["val"], len(answers)),
    }
    corpus = Corpus(name, p.doc_emb.astype(np.float32), q, answers)
    if texts:
        corpus.texts = [x for sp in ("train", "val", "test") for x in p.q_texts[sp]]
        corpus.doc_texts = p.doc_texts
        corpus.doc_ids = p.doc_ids
    return corpus, idx


def chunk_questions(c: Corpus) -> dict[int, list[int]]:
    """Record row -> its questions (10-K: every question has one record)."""
    out: dict[int, list[int]] = {}
    for j, a in enumerate(c.answers):
        for r in a:
            out.setdefault(r, []).append(j)
    return out


# =============================================================================================
# Evaluation
# =============================================================================================
@dataclass
class Fitted:
    """What a method produced: record vectors and an optional query-side adaptor."""

    doc: np.ndarray
    adaptor: Adaptor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def queries(self, q: np.ndarray) -> np.ndarray:
        return q if self.adaptor is None else self.adaptor.transform(q)


def per_query(f: Fitted, qs: QuerySet) -> tuple[np.ndarray, np.ndarray]:
    """Per-query NDCG@10 and hit@10 (exact search by inner product; unit vectors: = cosine)."""
    m = evaluate_embeddings(f.doc, QuerySet(f.queries(qs.embeddings), qs.answers()), K)
    return m.ndcg, m.hit


def score(f: Fitted, qs: QuerySet) -> tuple[float, float]:
    nd, hit = per_query(f, qs)
    return float(nd.mean()), float(hit.mean())


# =============================================================================================
# Building blocks of the methods
# =============================================================================================
GRID = np.round(np.arange(0, 26) * 0.02, 4)  # the paper's γ grid, 0 .. 0.5


def nudge(
    doc: np.ndarray, train: QuerySet, gamma: float, *, center: np.ndarray | None = None
) -> np.ndarray:
    """NUDGE-N at a fixed γ; ``center``: subtract it from the training queries first."""
    if gamma <= 0 or len(train) == 0:
        return doc
    if center is not None:
        train = QuerySet(train.embeddings - center[None, :], train.answers())
    res = NudgeN(gamma=gamma).fit(doc, train)
    assert res.embeddings is not None
    return res.embeddings


def finetuner_default(doc: np.ndarray, train: QuerySet) -> Fitted:
    """What ``NudgeEmbeddingFinetuner.finetune`` does today, in numpy: covered split (20 %, seed 0),
    γ by top-1 on the held-out queries, nothing written if their NDCG@10 drops, refit on all."""
    model = NudgeN(val_fraction=0.2, seed=0)
    try:
        tr, va = model.split(train)
    except ConfigError as exc:
        return Fitted(doc, info={"gamma": 0.0, "note": f"no covered split: {str(exc)[:60]}"})
    res = model.fit(doc, tr, va)
    assert res.embeddings is not None
    before = score(Fitted(doc), va)[0]
    after = score(Fitted(res.embeddings), va)[0]
    if res.gamma == 0 or after < before - 1e-12:
        return Fitted(doc, info={"gamma": 0.0, "chosen": res.gamma, "val": (before, after)})
    return Fitted(nudge(doc, train, res.gamma), info={"gamma": res.gamma, "val": (before, after)})


def finetuner_bagged(
    doc: np.ndarray, train: QuerySet, seeds: Sequence[int] = (0, 1, 2, 3, 4)
) -> Fitted:
    """The finetuner's defaults with γ chosen on several covered splits: γ = the median of the γ
    chosen (top-1) on each split's held-out queries; nothing when the mean NDCG@10 change of
    those held-out queries is negative (the guard); refit on all."""
    gammas, gains = [], []
    for s in seeds:
        model = NudgeN(val_fraction=0.2, seed=s)
        try:
            tr, va = model.split(train)
        except ConfigError:
            continue
        res = model.fit(doc, tr, va)
        assert res.embeddings is not None
        gammas.append(res.gamma)
        gains.append(score(Fitted(res.embeddings), va)[0] - score(Fitted(doc), va)[0])
    if not gammas:
        return Fitted(doc, info={"gamma": 0.0, "note": "no covered split"})
    g = float(np.median(gammas))
    if g <= 0 or float(np.mean(gains)) < -1e-12:
        return Fitted(doc, info={"gamma": 0.0, "gammas": tuple(gammas)})
    return Fitted(nudge(doc, train, g), info={"gamma": g, "gammas": tuple(gammas)})


def llamaindex_adaptor(doc: np.ndarray, train: QuerySet, val: QuerySet) -> Adaptor:
    """The LlamaIndex ``EmbeddingAdapterFinetuneEngine`` model as the issue measured it: W = I,
    in-batch negatives, batch 10, Adam lr 1e-3, epochs chosen on validation NDCG@10."""
    q = np.concatenate([train.embeddings, val.embeddings])
    tp = [(j, a) for j, a in enumerate(train.answers())]
    vp = [(len(train) + j, a) for j, a in enumerate(val.answers())]
    return fit_adaptor(
        q, doc, tp, vp, lr=1e-3, batch_size=10, negatives="batch", max_epochs=40, patience=40
    )


def adaptor_on(doc: np.ndarray, train: QuerySet, val: QuerySet, config: AdaptorConfig) -> Adaptor:
    q = np.concatenate([train.embeddings, val.embeddings])
    tp = [(j, a) for j, a in enumerate(train.answers())]
    vp = [(len(train) + j, a) for j, a in enumerate(val.answers())]
    return fit_adaptor(q, doc, tp, vp, config)


def random_split(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    nv = max(1, round(frac * n))
    return np.sort(perm[nv:]), np.sort(perm[:nv])


def covered_split(
    c: Corpus, idx: np.ndarray, frac: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The finetuner's covered split of the questions ``idx`` (positions into c)."""
    held = validation_positions(c.qs(idx), frac, seed=seed)
    mask = np.zeros(len(idx), dtype=bool)
    mask[held] = True
    return idx[~mask], idx[mask]


# =============================================================================================
# Reporting
# =============================================================================================
@dataclass
class Table:
    title: str
    base: tuple[float, float] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def rebase(self) -> None:
        """The next row becomes the reference of the deltas."""
        self.base = None
        self.rows.append({"method": "", "rebase": True})

    def add(self, method: str, ndcg: float, hit: float, **info: Any) -> None:
        row = {"method": method, "ndcg": ndcg, "hit": hit, **info}
        if self.base is None:
            self.base = (ndcg, hit)
        self.rows.append(row)
        b = self.base
        logger.info(
            "[%s] %-60s NDCG@10 %.4f (%+.2f)  hit@10 %.4f (%+.2f) %s",
            self.title[:20], method, ndcg, 100 * (ndcg - b[0]), hit, 100 * (hit - b[1]),
            {k: v for k, v in info.items() if k != "curve"},
        )  # fmt: skip

    def markdown(self) -> str:
        first = next((r for r in self.rows if not r.get("rebase")), None)
        b = (first["ndcg"], first["hit"]) if first else (float("nan"), float("nan"))
        out = [
            f"### {self.title}",
            "",
            "| method | NDCG@10 | hit@10 | Δ NDCG (points) | Δ hit (points) | notes |",
            "|---|---|---|---|---|---|",
        ]
        rows = iter(self.rows)
        for r in rows:
            if r.get("rebase"):
                nxt = next(rows)
                b = (nxt["ndcg"], nxt["hit"])
                r = nxt
            notes = ", ".join(
                f"{k}={_fmt(v)}"
                for k, v in r.items()
                if k not in ("method", "ndcg", "hit", "curve")
            )
            out.append(
                f"| {r['method']} | {r['ndcg']:.4f} | {r['hit']:.4f} | "
                f"{100 * (r['ndcg'] - b[0]):+.2f} | {100 * (r['hit'] - b[1]):+.2f} | {notes} |"
            )
        out += ["", *self.notes]
        return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


PartFn = Callable[[argparse.Namespace], list[Table]]


# =============================================================================================
# The recipe: held-out questions (covered validation + sentinels), candidates, a constrained pick
# =============================================================================================
@dataclass
class HeldOut:
    """Positions (into the Corpus) of the fitting, validation and sentinel questions.

    ``T`` fits the candidates. ``V`` (covered validation) are held-out questions whose records
    keep a training question in ``T``: they measure what a candidate gains. ``S`` (sentinels)
    are every question of a seeded sample of records: those records get no training question
    while candidates are compared, so ``S`` measures what records no question points to lose.
    ``drop`` lists (question, record) pairs of ``T`` removed because the record is a sentinel.
    """

    T: np.ndarray
    V: np.ndarray
    S: np.ndarray
    sentinel_records: np.ndarray


def hold_out(
    c: Corpus,
    train: np.ndarray,
    *,
    sentinel_frac: float = 0.1,
    val_frac: float = 0.2,
    seed: int = 0,
) -> HeldOut:
    rows = np.unique([r for j in train for r in c.answers[j]])
    rng = np.random.default_rng(seed + 1)
    n_s = round(sentinel_frac * rows.size)
    sent = np.sort(rng.choice(rows, n_s, replace=False)) if n_s else np.zeros(0, np.int64)
    sset = set(sent.tolist())
    s_idx = np.array([j for j in train if all(r in sset for r in c.answers[j])], dtype=np.int64)
    rest = np.array([j for j in train if not all(r in sset for r in c.answers[j])], dtype=np.int64)
    try:
        t_idx, v_idx = covered_split(c, rest, val_frac, seed)
    except (ConfigError, ValueError):
        t_idx, v_idx = rest, np.zeros(0, np.int64)
    return HeldOut(t_idx, v_idx, s_idx, sent)


def without_sentinels(c: Corpus, idx: np.ndarray, sentinel_records: np.ndarray) -> QuerySet:
    """Questions ``idx`` with their answers among sentinel records removed (multi-answer sets)."""
    sset = set(sentinel_records.tolist())
    keep = [j for j in idx.tolist() if any(r not in sset for r in c.answers[j])]
    return QuerySet(
        c.q[keep], [{r: g for r, g in c.answers[j].items() if r not in sset} for j in keep]
    )


@dataclass
class Candidate:
    name: str
    kind: str  # none | nudge | nudge-centred | adaptor | both
    params: dict[str, Any]
    fitted: Fitted
    v: tuple[float, float] = (float("nan"), float("nan"))
    s: tuple[float, float] = (float("nan"), float("nan"))
    s_per_query: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def sentinel_loss(self, base: Candidate) -> tuple[float, float]:
        """Mean NDCG@10 the sentinels lose against ``base``, and its standard error (paired)."""
        d = base.s_per_query - self.s_per_query
        if d.size < 2:
            return 0.0, 0.0
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


ADAPTOR_CONFIGS: dict[str, AdaptorConfig] = {
    "covered lr1e-4": AdaptorConfig(lr=1e-4, max_epochs=100, patience=100, negatives="covered"),
}


def candidates(
    c: Corpus,
    h: HeldOut,
    *,
    kinds: Sequence[str] = ("nudge", "nudge-centred", "adaptor", "both"),
    gammas: np.ndarray = GRID,
    adaptor_configs: dict[str, AdaptorConfig] | None = None,
    epoch_stride: int = 1,
) -> list[Candidate]:
    """Every candidate fitted on ``h.T`` and scored on ``h.V`` and ``h.S``."""
    T = without_sentinels(c, h.T, h.sentinel_records)
    V, S = c.qs(h.V), c.qs(h.S)
    out = [Candidate("no fine-tuning", "none", {}, Fitted(c.doc))]
    mu = T.embeddings.mean(axis=0)
    for g in gammas[gammas > 0]:
        if "nudge" in kinds:
            out.append(
                Candidate(
                    f"NUDGE-N γ={g:g}", "nudge", {"gamma": float(g)}, Fitted(nudge(c.doc, T, g))
                )
            )
        if "nudge-centred" in kinds:
            out.append(
                Candidate(f"NUDGE-N centred γ={g:g}", "nudge-centred", {"gamma": float(g)},
                          Fitted(nudge(c.doc, T, g, center=mu)))
            )  # fmt: skip
    best_ad: Adaptor | None = None
    if ("adaptor" in kinds or "both" in kinds) and len(V):
        q = np.concatenate([T.embeddings, V.embeddings])
        tp = [(j, a) for j, a in enumerate(T.answers())]
        vp = [(len(T) + j, a) for j, a in enumerate(V.answers())]
        for cname, cfg in (adaptor_configs or ADAPTOR_CONFIGS).items():
            snaps: list[Candidate] = []

            def cb(
                ep: int,
                w: np.ndarray,
                cname: str = cname,
                cfg: AdaptorConfig = cfg,
                snaps: list[Candidate] = snaps,
            ) -> None:
                if ep % epoch_stride == 0:
                    snaps.append(
                        Candidate(f"adaptor {cname} ep{ep}", "adaptor",
                                  {"config": cname, "cfg": cfg, "epochs": ep}, Fitted(c.doc, Adaptor(w)))
                    )  # fmt: skip

            ad = fit_adaptor(q, c.doc, tp, vp, cfg, on_epoch=cb)
            if "adaptor" in kinds:
                out += snaps
            if best_ad is None or ad.val_after > best_ad.val_after:
                best_ad = ad
    if "both" in kinds and best_ad is not None and not best_ad.is_identity:
        qa = best_ad.transform(T.embeddings)
        Ta = QuerySet(qa, T.answers())
        for g in gammas[gammas > 0]:
            out.append(
                Candidate(f"adaptor ep{best_ad.epochs} + NUDGE-N γ={g:g}", "both",
                          {"gamma": float(g), "config": "best", "cfg": AdaptorConfig(**{k: v for k, v in best_ad.config.items() if k in AdaptorConfig.__dataclass_fields__}), "epochs": best_ad.epochs},
                          Fitted(nudge(c.doc, Ta, g), best_ad))
            )  # fmt: skip
    for cd in out:
        cd.v = score(cd.fitted, V) if len(V) else (float("nan"), float("nan"))
        if len(S):
            nd, hit = per_query(cd.fitted, S)
            cd.s = (float(nd.mean()), float(hit.mean()))
            cd.s_per_query = nd
    return out


def pick(
    cands: list[Candidate],
    *,
    max_sentinel_loss: float = 0.005,
    min_sentinels: int = 20,
    n_sentinels: int = 0,
    kinds: Sequence[str] | None = None,
    first_violation: bool = False,
    z: float = 0.0,
    uncovered_share: float = 1.0,
    scale_by_share: bool = False,
    min_share: float = 0.0,
) -> Candidate:
    """Best validation NDCG@10 among candidates whose sentinel NDCG@10 loses at most
    ``max_sentinel_loss``; "no fine-tuning" unless something beats it on validation.

    ``first_violation``: along each ordered family (the epochs of one adaptor configuration,
    the γ grid of one NUDGE variant), stop at the first candidate that breaks the constraint:
    a later one that happens to pass again is not taken (the sentinels are few and noisy).
    ``z``: a candidate is rejected only when its sentinel loss exceeds the cap by more than ``z``
    standard errors (paired over the sentinel questions); 0: the point estimate decides.
    ``uncovered_share``: share of the store's records that no training question points to.
    Below ``min_share`` the constraint is off (nothing, or next to nothing, to protect: the
    sentinels then stand for records the final fit does not have). ``scale_by_share``: bound
    ``uncovered_share × sentinel loss`` instead (the store-wide loss they cause if queries spread
    over records like the store).
    """
    base = cands[0]
    pool = [cd for cd in cands if kinds is None or cd.kind in kinds or cd.kind == "none"]
    if uncovered_share <= 0 or uncovered_share < min_share:
        n_sentinels = 0  # (next to) every record has a training question: nothing to protect
    if scale_by_share:
        max_sentinel_loss = max_sentinel_loss / max(uncovered_share, 1e-9)
    if n_sentinels >= min_sentinels:
        ok = []
        for cd in pool:
            loss, se = cd.sentinel_loss(base)
            ok.append(loss - z * se <= max_sentinel_loss + 1e-12)
        if first_violation:
            broken: set[str] = set()
            for i, cd in enumerate(pool):
                fam = cd.kind + str(cd.params.get("config", ""))
                if fam in broken or not ok[i]:
                    broken.add(fam)
                    ok[i] = False
        pool = [cd for cd, good in zip(pool, ok, strict=True) if good]
    best = max(pool, key=lambda cd: (cd.v[0], cd.kind == "none"))
    return best if best.v[0] > base.v[0] + 1e-12 else base


def refit(
    c: Corpus, train: np.ndarray, cd: Candidate, *, adaptor_refit: str = "steps", n_fit: int = 0
) -> Fitted:
    """The chosen candidate's hyper-parameters, fitted again on every training question.

    ``adaptor_refit``: ``"none"`` keeps the adaptor trained on the fitting questions only;
    ``"epochs"`` retrains on every question for the chosen number of epochs; ``"steps"`` for as
    many optimiser steps as the chosen epochs took on the ``n_fit`` fitting questions.
    """
    allq = c.qs(train)
    if cd.kind == "none":
        return Fitted(c.doc)
    if cd.kind == "nudge":
        return Fitted(nudge(c.doc, allq, cd.params["gamma"]))
    if cd.kind == "nudge-centred":
        return Fitted(nudge(c.doc, allq, cd.params["gamma"], center=allq.embeddings.mean(axis=0)))
    cfg = cd.params["cfg"]
    ep = int(cd.params["epochs"])
    tp = [(j, a) for j, a in enumerate(allq.answers())]
    if adaptor_refit == "none":
        ad = cd.fitted.adaptor
    else:
        if adaptor_refit == "steps" and n_fit:
            ep = max(1, round(ep * n_fit / len(allq)))
        ad = fit_adaptor(allq.embeddings, c.doc, tp, [], cfg, max_epochs=ep) if ep else None
    if cd.kind == "adaptor":
        return Fitted(c.doc, ad)
    assert ad is not None
    qa = QuerySet(ad.transform(allq.embeddings), allq.answers())
    return Fitted(nudge(c.doc, qa, cd.params["gamma"]), ad)


def run_recipe(
    c: Corpus,
    train: np.ndarray,
    test: QuerySet,
    table: Table,
    *,
    label: str = "recipe",
    seed: int = 0,
    variants: Sequence[tuple[str, Sequence[str] | None]] = (("all kinds", None),),
    show_candidates: bool = False,
    max_sentinel_loss: float = 0.005,
    **cand_kw: Any,
) -> list[Candidate]:
    """Hold out, fit every candidate, pick under the sentinel constraint, refit, test."""
    t0 = time.perf_counter()
    h = hold_out(c, train, seed=seed)
    cands = candidates(c, h, **cand_kw)
    secs = time.perf_counter() - t0
    logger.info(
        "%s: T %d, V %d, S %d; %d candidates in %.0f s",
        label,
        len(h.T),
        len(h.V),
        len(h.S),
        len(cands),
        secs,
    )
    base = cands[0]
    if show_candidates:
        for cd in cands:
            t = score(cd.fitted, test)
            table.add(
                f"candidate (fit on T): {cd.name}", *t,
                val=f"{100 * (cd.v[0] - base.v[0]):+.2f}",
                sentinel=f"{100 * (cd.s[0] - base.s[0]):+.2f}",
            )  # fmt: skip
    for vname, kinds in variants:
        for cap_name, cap in (("sentinel ≤ 0.5 pt", max_sentinel_loss), ("no sentinel", 9.0)):
            cd = pick(cands, max_sentinel_loss=cap, n_sentinels=len(h.S), kinds=kinds)
            f = refit(c, train, cd)
            table.add(
                f"{label} [{vname}; {cap_name}] → {cd.name}, refit on all", *score(f, test),
                val=f"{100 * (cd.v[0] - base.v[0]):+.2f}",
                sentinel=f"{100 * (cd.s[0] - base.s[0]):+.2f}",
                no_refit=f"{score(cd.fitted, test)[0]:.4f}",
            )  # fmt: skip
    table.notes.append(
        f"{label}: held out V = {len(h.V)} covered validation questions, S = {len(h.S)} sentinel "
        f"questions ({h.sentinel_records.size} records), T = {len(h.T)}; {len(cands)} candidates, "
        f"{secs:.0f} s."
    )
    return cands


# =============================================================================================
# The simulated chatbot: traffic in batches, feedback = relevant records shown in the top 10
# =============================================================================================
@dataclass
class Feedback:
    """One query of the traffic and what its user confirmed."""

    j: int  # position of the query in the Corpus
    confirmed: dict[int, float]  # record row -> grade (may hold wrong confirmations)
    shown: list[int]  # the top 10 the user saw, best first


def top_k(f: Fitted, q: np.ndarray, k: int = K) -> np.ndarray:
    sc = f.queries(q) @ f.doc.T
    part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sc, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def confirmations(
    c: Corpus, j: int, shown: np.ndarray, rng: np.random.Generator, *, wrong: float, noise: str
) -> dict[int, float]:
    """What the user confirms among ``shown`` for query ``j``.

    ``noise`` (applied with probability ``wrong``): ``"replace"``: each confirmed record is
    replaced by a random non-relevant shown one; ``"add"``: a random non-relevant shown record is
    confirmed too (also when nothing relevant was shown); ``"query"``: the query's confirmations
    are replaced by one random non-relevant shown record.
    """
    rel = c.answers[j]
    good = {int(r): 1.0 for r in shown if rel.get(int(r), 0) > 0}
    if wrong <= 0:
        return good
    bad = [int(r) for r in shown if rel.get(int(r), 0) <= 0]
    if not bad:
        return good
    if noise == "replace":
        out: dict[int, float] = {}
        for r in good:
            out[int(rng.choice(bad)) if rng.random() < wrong else r] = 1.0
        return out
    if noise == "add":
        if rng.random() < wrong:
            good[int(rng.choice(bad))] = 1.0
        return good
    if rng.random() < wrong:
        return {int(rng.choice(bad)): 1.0}
    return good


Learner = Callable[[Corpus, list[Feedback]], Fitted]


def simulate_chat(
    c: Corpus,
    traffic: np.ndarray,
    learner: Learner,
    *,
    batch: int = 50,
    wrong: float = 0.0,
    noise: str = "add",
    seed: int = 0,
    test: QuerySet | None = None,
) -> tuple[Fitted, list[Feedback], list[dict[str, float]]]:
    """Serve ``traffic`` in batches with the current retriever, collect feedback, refit."""
    rng = np.random.default_rng(seed)
    current = Fitted(c.doc)
    log: list[Feedback] = []
    trace: list[dict[str, float]] = []
    for s in range(0, len(traffic), batch):
        js = traffic[s : s + batch]
        shown = top_k(current, c.q[js])
        for j, sh in zip(js.tolist(), shown, strict=True):
            log.append(
                Feedback(j, confirmations(c, j, sh, rng, wrong=wrong, noise=noise), sh.tolist())
            )
        current = learner(c, log)
        n_conf = sum(bool(f.confirmed) for f in log)
        point: dict[str, Any] = {"queries": len(log), "with_feedback": n_conf, **current.info}
        if test is not None:
            point["test_ndcg"] = score(current, test)[0]
        trace.append(point)
    return current, log, trace


def _positives(c: Corpus, log: list[Feedback]) -> QuerySet | None:
    fb = [f for f in log if f.confirmed]
    if not fb:
        return None
    return QuerySet(c.q[[f.j for f in fb]], [dict(f.confirmed) for f in fb])


def learner_plain(c: Corpus, log: list[Feedback]) -> Fitted:
    """NUDGE-N, default γ selection (covered split of the feedback, top-1), from the originals."""
    pos = _positives(c, log)
    if pos is None:
        return Fitted(c.doc)
    try:
        res = NudgeN().fit(c.doc, pos)
    except ConfigError:
        return Fitted(c.doc, info={"gamma": 0.0})
    assert res.embeddings is not None
    return Fitted(res.embeddings, info={"gamma": res.gamma})


def nudge_rag_auto(doc: np.ndarray, qs: QuerySet, seed: int = 0, adaptor: bool = True) -> Fitted:
    """What ``finetune()`` does by default (``method="auto"``), in numpy: the choice of
    :mod:`nudge_rag.core.choose` over its folds on the fitted records, the pool from every other
    record (what a store scan gives), refit on every question. Without probes: the numpy
    simulation has no texts to write pseudo-questions from (part ``seeds`` runs the real
    finetuner, which does)."""
    from nudge_rag.core.choose import POOL, PoolAccumulator, choose, make_folds
    from nudge_rag.core.choose import refit as choose_refit

    rows = np.unique(qs.rows)
    pos = np.full(doc.shape[0], -1, dtype=np.int64)
    pos[rows] = np.arange(rows.size)
    local = QuerySet(qs.embeddings, [{int(pos[r]): g for r, g in a.items()} for a in qs.answers()])
    try:
        h = make_folds(local, untrained_share=1 - rows.size / doc.shape[0], seed=seed)
    except ConfigError:
        return Fitted(doc, info={"chosen": "nothing (no covered split)"})
    others = np.setdiff1d(np.arange(doc.shape[0]), rows)
    acc = PoolAccumulator(h.held.embeddings, POOL)
    for s in range(0, others.size, 4096):
        part = doc[others[s : s + 4096]]
        acc.update(part / np.linalg.norm(part, axis=1, keepdims=True))
    recs = doc[rows] / np.linalg.norm(doc[rows], axis=1, keepdims=True)
    ch = choose(recs, h, acc.result(), adaptor=adaptor)
    new, ad = choose_refit(recs, local, ch)
    out = doc.copy()
    out[rows] = new
    return Fitted(out, ad, info={"chosen": ch.chosen.name})


def learner_auto(c: Corpus, log: list[Feedback]) -> Fitted:
    """nudge_rag's default (``method="auto"``, what ``update()`` runs) on all confirmed so far."""
    pos = _positives(c, log)
    if pos is None:
        return Fitted(c.doc)
    return nudge_rag_auto(c.doc, pos)


def learner_auto_nudge(c: Corpus, log: list[Feedback]) -> Fitted:
    """``ft.update()``'s refit: ``method="auto"`` without adaptor candidates (NUDGE-N or
    nothing, γ and the sentinel rule on held-out feedback)."""
    pos = _positives(c, log)
    if pos is None:
        return Fitted(c.doc)
    return nudge_rag_auto(c.doc, pos, adaptor=False)


def learner_finetuner(c: Corpus, log: list[Feedback]) -> Fitted:
    """The finetuner's defaults (covered split, top-1, guard, refit) on the feedback."""
    pos = _positives(c, log)
    if pos is None:
        return Fitted(c.doc)
    return finetuner_default(c.doc, pos)


def learner_bagged(c: Corpus, log: list[Feedback]) -> Fitted:
    """:func:`finetuner_bagged` (γ = median over 5 covered splits) on the feedback."""
    pos = _positives(c, log)
    if pos is None:
        return Fitted(c.doc)
    return finetuner_bagged(c.doc, pos)


def covered_share(log: list[Feedback], tail: float = 0.5, unconfirmed: bool = True) -> float:
    """Share of the last ``tail`` of the traffic whose confirmed records were all confirmed by an
    earlier query (log order); ``unconfirmed``: queries with no confirmation count as not
    covered (else they are left out)."""
    seen: set[int] = set()
    flags: list[bool] = []
    for f in log:
        if f.confirmed:
            flags.append(all(r in seen for r in f.confirmed))
            seen.update(f.confirmed)
        elif unconfirmed:
            flags.append(False)
    return float(np.mean(flags[int(len(flags) * (1 - tail)) :])) if flags else 0.0


def future_gamma_learner(*, unconfirmed: bool = True) -> Learner:
    """NUDGE-N at the γ (or nothing) that maximises an estimate of NDCG@10 over future traffic:
    c · NDCG(covered validation questions) + (1 − c) · NDCG(sentinel questions), c from
    :func:`covered_share`; held-out split, sentinels and pool of :mod:`nudge_rag.core.choose`."""
    from nudge_rag.core.choose import POOL, PoolAccumulator, choose, hold_out
    from nudge_rag.core.choose import refit as choose_refit

    def learn(c: Corpus, log: list[Feedback]) -> Fitted:
        pos = _positives(c, log)
        if pos is None:
            return Fitted(c.doc)
        rows = np.unique(pos.rows)
        at = np.full(c.doc.shape[0], -1, dtype=np.int64)
        at[rows] = np.arange(rows.size)
        local = QuerySet(
            pos.embeddings, [{int(at[r]): g for r, g in a.items()} for a in pos.answers()]
        )
        try:
            h = hold_out(local, uncovered_share=1 - rows.size / c.doc.shape[0])
        except ConfigError:
            return Fitted(c.doc, info={"gamma": 0.0})
        others = np.setdiff1d(np.arange(c.doc.shape[0]), rows)
        acc = PoolAccumulator(h.held.embeddings, POOL)
        acc.update(c.doc[others] / np.linalg.norm(c.doc[others], axis=1, keepdims=True))
        recs = c.doc[rows] / np.linalg.norm(c.doc[rows], axis=1, keepdims=True)
        ch = choose(recs, h, acc.result(), adaptor=False)
        share = covered_share(log, unconfirmed=unconfirmed)

        def future(k: Any) -> float:
            if not len(h.sentinels):
                return float(k.val_ndcg)
            return share * k.val_ndcg + (1 - share) * float(k.sentinel_ndcg.mean())

        ch.chosen = max([ch.baseline, *ch.curve], key=lambda k: (future(k), k.kind == "none"))
        new, _ = choose_refit(recs, local, ch)
        out = c.doc.copy()
        out[rows] = new
        return Fitted(out, info={"gamma": ch.chosen.gamma, "c": round(share, 3)})

    return learn


def oracle_learner(test: QuerySet, *, adaptor: bool = False) -> Learner:
    """Diagnostic, not a method: after every batch, NUDGE-N at the γ of the grid that is best on
    the TEST queries (the ceiling of NUDGE-N refit loops on this feedback). ``adaptor``: also a
    query-side adaptor trained on all feedback (``ADAPTOR_CONFIG``, no validation), its epoch
    (0, 10, 20, 40, 70, 100) chosen on the TEST queries with γ in {0, .08, .12, .16, .2, .24}."""
    from nudge_rag.core.choose import ADAPTOR_CONFIG

    def learn(c: Corpus, log: list[Feedback]) -> Fitted:
        pos = _positives(c, log)
        if pos is None:
            return Fitted(c.doc)
        if not adaptor:
            fits = {float(g): Fitted(nudge(c.doc, pos, float(g))) for g in GRID}
            g = max(fits, key=lambda x: score(fits[x], test)[0])
            return Fitted(fits[g].doc, info={"gamma": g})
        weights: dict[int, np.ndarray | None] = {0: None}

        def keep(ep: int, w: np.ndarray) -> None:
            if ep in (10, 20, 40, 70, 100):
                weights[ep] = w

        tp = [(j, a) for j, a in enumerate(pos.answers())]
        fit_adaptor(pos.embeddings, c.doc, tp, [], ADAPTOR_CONFIG, on_epoch=keep)
        best: tuple[float, Fitted] = (-1.0, Fitted(c.doc))
        for ep, w in weights.items():
            ad = None if w is None else Adaptor(w)
            qa = pos if ad is None else QuerySet(ad.transform(pos.embeddings), pos.answers())
            for g in (0.0, 0.08, 0.12, 0.16, 0.2, 0.24):
                f = Fitted(nudge(c.doc, qa, g), ad, info={"gamma": g, "adaptor_epochs": ep})
                v = score(f, test)[0]
                if v > best[0]:
                    best = (v, f)
        return best[1]

    return learn


def signed_queries(
    c: Corpus, log: list[Feedback], *, beta: float, negatives: str, q: np.ndarray | None = None
) -> QuerySet | None:
    """Confirmed records as positives, and with ``beta > 0`` shown-but-not-confirmed records as
    negatives: a negative pair enters G with the query vector times ``-beta``.

    ``negatives``: ``"above"``: shown records ranked above the last confirmed one (or all shown
    ones when nothing was confirmed); ``"all"``: every unconfirmed shown record;
    ``"unconfirmed"``: all shown records of queries where nothing was confirmed, none otherwise.
    """
    src = c.q if q is None else q
    vecs: list[np.ndarray] = []
    answers: list[dict[int, float]] = []
    for f in log:
        if f.confirmed:
            vecs.append(src[f.j])
            answers.append(dict(f.confirmed))
        if beta <= 0:
            continue
        if negatives == "unconfirmed" and f.confirmed:
            continue
        last = max(
            (f.shown.index(r) for r in f.confirmed if r in f.shown), default=len(f.shown) - 1
        )
        pool = f.shown if negatives == "all" or not f.confirmed else f.shown[:last]
        neg = [r for r in pool if r not in f.confirmed]
        if neg:
            vecs.append(-beta * src[f.j])
            answers.append({r: 1.0 for r in neg})
    if not vecs:
        return None
    return QuerySet(np.asarray(vecs, np.float32), answers)


@dataclass
class ChatLearner:
    """A refit loop: NUDGE-N (optionally with negatives and a query-side adaptor), γ (and β)
    chosen on held-out feedback.

    Args:
        betas: Weights of negative pairs to choose among (0: positives only).
        negatives: Which unconfirmed impressions are negatives (see :func:`signed_queries`).
        gammas: γ grid.
        adaptor: Also train a query-side adaptor on the confirmed pairs (covered negatives,
            epochs chosen on the held-out feedback); NUDGE then moves records toward adapted queries.
        val_fraction: Share of confirmed queries held out (covered split) to choose γ, β.
    """

    betas: Sequence[float] = (0.0,)
    negatives: str = "above"
    gammas: np.ndarray = field(default_factory=lambda: GRID)
    adaptor: bool = False
    adaptor_config: AdaptorConfig = field(
        default_factory=lambda: AdaptorConfig(
            lr=1e-4, max_epochs=60, patience=15, negatives="covered"
        )
    )
    val_fraction: float = 0.2
    min_val: int = 10

    def __call__(self, c: Corpus, log: list[Feedback]) -> Fitted:
        conf = [i for i, f in enumerate(log) if f.confirmed]
        if not conf:
            return Fitted(c.doc)
        pos = QuerySet(c.q[[log[i].j for i in conf]], [dict(log[i].confirmed) for i in conf])
        try:
            tr, va = validation_split(pos, self.val_fraction, seed=0)
        except ConfigError:
            return Fitted(c.doc, info={"gamma": 0.0})
        # which log entries are held out: rebuild from the split's rule (same seed, same order)
        held = _held_positions(pos, self.val_fraction)
        val_log = {conf[i] for i in held}
        fit_log = [f for i, f in enumerate(log) if i not in val_log]
        ad = None
        q = c.q
        if self.adaptor and len(va) >= self.min_val:
            tp = [(j, a) for j, a in enumerate(tr.answers())]
            vp = [(len(tr) + j, a) for j, a in enumerate(va.answers())]
            ad0 = fit_adaptor(
                np.concatenate([tr.embeddings, va.embeddings]), c.doc, tp, vp, self.adaptor_config
            )
            if not ad0.is_identity:
                ad = ad0
                q = ad.transform(c.q)
                va = QuerySet(
                    q[[log[i].j for i in sorted(val_log)]],
                    [dict(log[i].confirmed) for i in sorted(val_log)],
                )
        best = (score(Fitted(c.doc), va)[0], 0.0, 0.0)  # va holds adapted queries if ad
        for beta in self.betas:
            qs = signed_queries(c, fit_log, beta=beta, negatives=self.negatives, q=q)
            if qs is None:
                continue
            for g in self.gammas[self.gammas > 0]:
                res = NudgeN(gamma=float(g), skip_opposed=beta <= 0).fit(c.doc, qs)
                assert res.embeddings is not None
                v = score(Fitted(res.embeddings), va)[0]
                if v > best[0] + 1e-12:
                    best = (v, float(g), float(beta))
        _, gamma, beta = best
        info = {"gamma": gamma, "beta": beta, "adaptor_epochs": 0 if ad is None else ad.epochs}
        if gamma == 0:
            return Fitted(c.doc, ad, info=info)
        qs = signed_queries(c, log, beta=beta, negatives=self.negatives, q=q)
        assert qs is not None
        res = NudgeN(gamma=gamma, skip_opposed=beta <= 0).fit(c.doc, qs)
        assert res.embeddings is not None
        return Fitted(res.embeddings, ad, info=info)


def _held_positions(qs: QuerySet, frac: float, seed: int = 0) -> list[int]:
    """Positions ``validation_split`` holds out (none where it cannot hold any out)."""
    try:
        return validation_positions(qs, frac, seed=seed).tolist()
    except ConfigError:
        return []


# =============================================================================================
# Protocols on the 10-K chunks
# =============================================================================================
def sister_split(c: Corpus, seed: int, both_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Per chunk (seeded shuffle) one question trains and the other tests; for ``both_frac`` of
    the chunks (seeded) the second question trains too."""
    per = chunk_questions(c)
    chunks = np.array(sorted(per))
    rng = np.random.default_rng(seed)
    first, second = {}, {}
    for r in chunks.tolist():
        a = rng.permutation(per[r])
        first[r], second[r] = int(a[0]), int(a[1])
    n_both = int(len(chunks) * both_frac)
    both = set(rng.choice(chunks, n_both, replace=False).tolist()) if n_both else set()
    train = [first[r] for r in chunks.tolist()] + [second[r] for r in chunks.tolist() if r in both]
    test = [second[r] for r in chunks.tolist() if r not in both]
    return np.array(train), np.array(test)


def cross_split(c: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Lyft questions train, Uber questions test."""
    comp = np.array([c.group[next(iter(a))] for a in c.answers])
    return np.flatnonzero(comp == 0), np.flatnonzero(comp == 1)


def part_repro(args: argparse.Namespace) -> list[Table]:
    c = load_tenk()
    tables = []
    # -- sister, every chunk: one question trains, the other tests
    tr, te = sister_split(c, 0, 0.0)
    test = c.qs(te)
    t = Table(
        f"Reproduction, sister protocol (every chunk: 1 question trains, its sister tests; {len(tr)} / {len(te)})"
    )
    t.add("no fine-tuning", *score(Fitted(c.doc), test))
    f = finetuner_default(c.doc, c.qs(tr))
    t.add(
        "finetuner defaults (NUDGE-N, covered split)",
        *score(f, test),
        gamma=f.info["gamma"],
        note="no covered split possible",
    )
    for g in (0.02, 0.1, 0.5):
        t.add(f"NUDGE-N fixed γ={g}", *score(Fitted(nudge(c.doc, c.qs(tr), g)), test))
    a_tr, a_va = random_split(len(tr), 0.2, 0)
    curve_test: list[float] = []

    def cb(ep: int, w: np.ndarray) -> None:
        curve_test.append(score(Fitted(c.doc, Adaptor(w)), test)[0])

    q = c.q[np.concatenate([tr[a_tr], tr[a_va]])]
    tp = [(j, c.answers[i]) for j, i in enumerate(tr[a_tr])]
    vp = [(len(a_tr) + j, c.answers[i]) for j, i in enumerate(tr[a_va])]
    ad = fit_adaptor(
        q,
        c.doc,
        tp,
        vp,
        lr=1e-3,
        batch_size=10,
        negatives="batch",
        max_epochs=30,
        patience=30,
        on_epoch=cb,
    )
    t.add(
        "LlamaIndex-style adaptor (in-batch, batch 10, lr 1e-3), epochs on a random 20 % of training questions",
        *score(Fitted(c.doc, ad), test),
        epochs=ad.epochs,
    )
    best_ep = int(np.argmax(curve_test)) + 1
    ad_o = fit_adaptor(
        q, c.doc, tp, [], lr=1e-3, batch_size=10, negatives="batch", max_epochs=best_ep
    )
    t.add(
        f"same adaptor, epoch chosen on the TEST questions (oracle, diagnostic only): epoch {best_ep}",
        *score(Fitted(c.doc, ad_o), test),
    )
    qa = QuerySet(ad_o.transform(c.q[tr]), [c.answers[i] for i in tr])
    for g in (0.02, 0.1):
        t.add(
            f"  + NUDGE-N γ={g} on adapted queries (oracle adaptor)",
            *score(Fitted(nudge(c.doc, qa, g), ad_o), test),
        )
    t.notes.append(
        "Test NDCG@10 of that adaptor after each epoch: "
        + ", ".join(f"{x:.4f}" for x in curve_test)
        + ". Validation (training questions of other chunks) never beats the identity."
    )
    tables.append(t)
    # -- cross: Lyft questions train, Uber questions test
    tr, te = cross_split(c)
    test = c.qs(te)
    t = Table(
        f"Reproduction, cross protocol (train: {len(tr)} Lyft questions; test: {len(te)} Uber questions)"
    )
    t.add("no fine-tuning", *score(Fitted(c.doc), test))
    f = finetuner_default(c.doc, c.qs(tr))
    t.add("finetuner defaults (NUDGE-N)", *score(f, test), gamma=f.info["gamma"])
    mu = c.q[tr].mean(axis=0)
    for g in (0.02, 0.2):
        t.add(f"NUDGE-N fixed γ={g}", *score(Fitted(nudge(c.doc, c.qs(tr), g)), test))
        t.add(
            f"NUDGE-N fixed γ={g}, training questions centred",
            *score(Fitted(nudge(c.doc, c.qs(tr), g, center=mu)), test),
        )
    tables.append(t)
    return tables


def _recipe_rows(
    t: Table,
    c: Corpus,
    train: np.ndarray,
    test: QuerySet,
    cands: list[Candidate],
    h: HeldOut,
    *,
    tag: str = "",
    summary: dict[str, list[tuple[float, float]]] | None = None,
    extra: Callable[[Fitted], dict[str, Any]] | None = None,
) -> None:
    """Rows for the choices made from one candidate pool (same held-out questions)."""
    base = cands[0]
    covered = {r for j in train.tolist() for r in c.answers[j]}
    u = 1.0 - len(covered) / len(c.doc)
    gated = {"z": 1.0, "uncovered_share": u, "min_share": MIN_SHARE}
    choices: list[tuple[str, Sequence[str] | None, float, dict[str, Any]]] = [
        (RECIPE, None, 0.005, gated),
        ("same, no gate (constraint also when u < 5 %)", None, 0.005, {"z": 1.0}),
        ("same, no gate, hard bound (sentinel loss ≤ 0.5 pt, point estimate)", None, 0.005, {"z": 0.0}),
        ("same, bound scaled by u (u × (sentinel loss − 1 SE) ≤ 0.5 pt)", None, 0.005,
         {"z": 1.0, "uncovered_share": u, "scale_by_share": True}),
        ("same, without the sentinel constraint", None, 9.0, {}),
        ("NUDGE-N variants only (γ on V), gated bound", ("nudge", "nudge-centred"), 0.005, gated),
        ("NUDGE-N variants only (γ on V), no sentinel", ("nudge", "nudge-centred"), 9.0, {}),
        ("adaptor only (epoch on V), gated bound", ("adaptor",), 0.005, gated),
    ]  # fmt: skip
    t.notes.append(f"{tag}share of records no training question points to: u = {u:.3f}")
    refits: dict[str, Fitted] = {}
    for name, kinds, cap, kw in choices:
        cd = pick(cands, max_sentinel_loss=cap, n_sentinels=len(h.S), kinds=kinds, **kw)
        if cd.name not in refits:
            refits[cd.name] = refit(c, train, cd, adaptor_refit="steps", n_fit=len(h.T))
        f = refits[cd.name]
        nd, hit = score(f, test)
        loss, se = cd.sentinel_loss(base)
        t.add(
            f"{tag}{name} → {cd.name}", nd, hit,
            V=f"{100 * (cd.v[0] - base.v[0]):+.2f}", S=f"{-100 * loss:+.2f}±{100 * se:.2f}",
            **(extra(f) if extra else {}),
        )  # fmt: skip
        if summary is not None:
            summary.setdefault(name, []).append((nd, hit))


MIN_SHARE = 0.05
RECIPE = (
    "recipe: best V of {nothing, NUDGE-N, centred NUDGE-N, adaptor, both}; "
    "sentinel loss − 1 SE ≤ 0.5 pt when u ≥ 5 %"
)


def _summary_rows(
    t: Table, base: list[tuple[float, float]], summary: dict[str, list[tuple[float, float]]]
) -> None:
    b = np.array(base)
    lines = ["", "Over the seeds (Δ vs no fine-tuning of the same seed, points): mean [min, max]", "",
             "| method | Δ NDCG@10 | Δ hit@10 |", "|---|---|---|"]  # fmt: skip
    for name, vals in summary.items():
        d = 100 * (np.array(vals) - b[: len(vals)])
        lines.append(
            f"| {name} | {d[:, 0].mean():+.2f} [{d[:, 0].min():+.2f}, {d[:, 0].max():+.2f}] "
            f"| {d[:, 1].mean():+.2f} [{d[:, 1].min():+.2f}, {d[:, 1].max():+.2f}] |"
        )
    t.notes += lines


def part_sister(args: argparse.Namespace) -> list[Table]:
    c = load_tenk()
    t = Table(
        "Target sister protocol (10-K, 729 chunks: 1 question per chunk trains, 1/8 of the chunks train both, the other sisters test)"
    )
    base_all: list[tuple[float, float]] = []
    summary: dict[str, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        tr, te = sister_split(c, seed, 1 / 8)
        test = c.qs(te)
        b = score(Fitted(c.doc), test)
        base_all.append(b)
        if t.rows:
            t.rebase()
        t.add(f"[seed {seed}] no fine-tuning ({len(tr)} train / {len(te)} test)", *b)
        f = finetuner_default(c.doc, c.qs(tr))
        fs = score(f, test)
        t.add(
            f"[seed {seed}] finetuner defaults (NUDGE-N, top-1, covered split, refit)",
            *fs,
            gamma=f.info["gamma"],
        )
        summary.setdefault("finetuner defaults", []).append(fs)
        t0 = time.perf_counter()
        h = hold_out(c, tr, seed=0)
        cands = candidates(c, h)
        t.notes.append(
            f"seed {seed}: V {len(h.V)}, S {len(h.S)}, T {len(h.T)}, {len(cands)} candidates in {time.perf_counter() - t0:.0f} s"
        )
        _recipe_rows(t, c, tr, test, cands, h, tag=f"[seed {seed}] ", summary=summary)
    _summary_rows(t, base_all, summary)
    return [t]


def part_cross(args: argparse.Namespace) -> list[Table]:
    c = load_tenk()
    tr, te = cross_split(c)
    test = c.qs(te)
    t = Table(
        f"Cross protocol (train: {len(tr)} Lyft questions; test: {len(te)} Uber questions; seeds = seeds of the held-out questions)"
    )
    b = score(Fitted(c.doc), test)
    t.add("no fine-tuning", *b)
    f = finetuner_default(c.doc, c.qs(tr))
    t.add("finetuner defaults (NUDGE-N)", *score(f, test), gamma=f.info["gamma"])
    summary: dict[str, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        h = hold_out(c, tr, seed=seed)
        cands = candidates(c, h)
        _recipe_rows(t, c, tr, test, cands, h, tag=f"[seed {seed}] ", summary=summary)
        # the corpus-negatives adaptor, for the record
        if seed == args.seeds[0]:
            cc = candidates(
                c,
                h,
                kinds=("adaptor",),
                adaptor_configs={
                    "corpus lr1e-4": AdaptorConfig(
                        lr=1e-4, max_epochs=100, patience=100, negatives="corpus"
                    )
                },
            )
            for cap, nm in ((0.005, "sentinel ≤ 0.5 pt"), (9.0, "no sentinel")):
                cd = pick(cc, max_sentinel_loss=cap, n_sentinels=len(h.S))
                nd, hit = score(refit(c, tr, cd, adaptor_refit="steps", n_fit=len(h.T)), test)
                t.add(f"[seed {seed}] adaptor with corpus-wide negatives (epoch on V), {nm} → {cd.name}", nd, hit,
                      V=f"{100 * (cd.v[0] - cc[0].v[0]):+.2f}", S=f"{100 * (cd.s[0] - cc[0].s[0]):+.2f}")  # fmt: skip
    _summary_rows(t, [b] * len(args.seeds), summary)
    return [t]


def part_beir(args: argparse.Namespace) -> list[Table]:
    tables = []
    for name in args.datasets:
        c, idx = load_beir(name)
        pool = np.concatenate([idx["train"], idx["val"]])
        test = c.qs(idx["test"])
        t = Table(
            f"{name} (paper split: the finetuner gets train + val = {len(pool)} queries; test {len(idx['test'])})"
        )
        seen = {r for j in pool.tolist() for r in c.answers[j]}
        unc = np.array([not any(r in seen for r in a) for a in test.answers()])
        base_nd = per_query(Fitted(c.doc), test)[0]

        def extra(
            f: Fitted, unc: np.ndarray = unc, base_nd: np.ndarray = base_nd, test: QuerySet = test
        ) -> dict[str, Any]:
            nd = per_query(f, test)[0]
            return (
                {"uncovered_Δ": f"{100 * (nd[unc] - base_nd[unc]).mean():+.2f}"}
                if unc.any()
                else {}
            )

        t.notes.append(
            f"{int(unc.sum())} of {len(unc)} test queries are uncovered (no relevant record of theirs is an answer of a training query); uncovered_Δ = their NDCG@10 change in points."
        )
        t.add("no fine-tuning", *score(Fitted(c.doc), test))
        res = NudgeN(refit=True).fit(c.doc, c.qs(idx["train"]), c.qs(idx["val"]))
        assert res.embeddings is not None
        t.add(
            "NUDGE-N, paper protocol (γ on the paper's val, top-1, refit)",
            *score(Fitted(res.embeddings), test),
            gamma=res.gamma,
            **extra(Fitted(res.embeddings)),
        )
        f = finetuner_default(c.doc, c.qs(pool))
        t.add(
            "finetuner defaults on train + val (covered split, top-1, guard, refit)",
            *score(f, test),
            gamma=f.info["gamma"],
            **extra(f),
        )
        cfgs = {k: AdaptorConfig(**{**v.__dict__, "max_epochs": args.beir_epochs, "patience": args.beir_epochs})
                for k, v in ADAPTOR_CONFIGS.items()}  # fmt: skip
        for seed in args.beir_seeds:
            t0 = time.perf_counter()
            h = hold_out(c, pool, seed=seed)
            cands = candidates(c, h, adaptor_configs=cfgs, epoch_stride=args.beir_stride)
            t.notes.append(
                f"seed {seed}: V {len(h.V)}, S {len(h.S)} ({h.sentinel_records.size} sentinel records), T {len(h.T)}; {len(cands)} candidates in {time.perf_counter() - t0:.0f} s"
            )
            _recipe_rows(t, c, pool, test, cands, h, tag=f"[seed {seed}] ", extra=extra)
        tables.append(t)
    return tables


def _traffic(c: Corpus, idx: dict[str, np.ndarray], which: str) -> np.ndarray:
    return idx["train"] if which == "train" else np.concatenate([idx["train"], idx["val"]])


def part_chat(args: argparse.Namespace) -> list[Table]:
    tables = []
    for name in args.chat_datasets:
        c, idx = load_beir(name)
        traffic = _traffic(c, idx, args.traffic)
        test = c.qs(idx["test"])
        t = Table(
            f"Simulated chatbot, {name}: {len(traffic)} queries ({args.traffic}) arrive in batches "
            f"of 50; feedback = relevant records in the current top 10; refit after each batch; "
            f"test {len(idx['test'])}"
        )
        t.add("no fine-tuning", *score(Fitted(c.doc), test))
        full = c.qs(traffic)
        res = NudgeN().fit(c.doc, full)
        assert res.embeddings is not None
        t.add(
            "full judgements, NUDGE-N default γ selection (once, on all traffic)",
            *score(Fitted(res.embeddings), test),
            gamma=res.gamma,
        )
        f = finetuner_default(c.doc, full)
        t.add("full judgements, finetuner defaults (refit)", *score(f, test), gamma=f.info["gamma"])
        learners: dict[str, tuple[Learner, bool]] = {
            "nudge_rag default (method='auto', what ft.update() runs) on all confirmed so far": (
                learner_auto,
                True,
            ),
            "plain loop: NUDGE-N default γ selection on all confirmed so far": (
                learner_plain,
                True,
            ),
            "finetuner defaults (refit, guard) on all confirmed so far": (learner_finetuner, True),
            "finetuner defaults with γ = median of the γ chosen on 5 covered splits (seeds 0-4), guard on their mean": (
                learner_bagged,
                True,
            ),
            "γ maximising c × NDCG(covered validation) + (1 − c) × NDCG(sentinels), c = share of later traffic whose confirmations were covered before (unconfirmed queries count as uncovered)": (
                future_gamma_learner(),
                True,
            ),
            "γ maximising c × NDCG(covered validation) + (1 − c) × NDCG(sentinels), c over confirmed traffic only": (
                future_gamma_learner(unconfirmed=False),
                True,
            ),
            "diagnostic: γ chosen on the TEST queries after every batch (ceiling of NUDGE-N loops, not a method)": (
                oracle_learner(test),
                False,
            ),
            "diagnostic: adaptor epoch and γ chosen on the TEST queries after every batch (ceiling of adaptor + NUDGE-N loops, not a method)": (
                oracle_learner(test, adaptor=True),
                False,
            ),
            "γ chosen on held-out feedback by NDCG@10, refit": (ChatLearner(), True),
            "+ unconfirmed impressions ranked above a confirmation as negatives (β on held-out feedback)": (
                ChatLearner(betas=(0.0, 0.25, 0.5, 1.0), negatives="above"),
                False,
            ),
            "+ adaptor learned from the feedback (covered negatives, epochs on held-out feedback)": (
                ChatLearner(adaptor=True),
                False,
            ),
        }
        only = set(args.learners.split(",")) if args.learners else None
        final_log: list[Feedback] = []
        curves: dict[str, list[dict[str, Any]]] = {}
        for wrong in (0.0, 0.2):
            for lname, (learner, many) in learners.items():
                if only and not any(o in lname for o in only):
                    continue
                seeds = args.noise_seeds if (wrong and many) else args.noise_seeds[:1]
                vals = []
                for seed in seeds:
                    t0 = time.perf_counter()
                    fit, log, trace = simulate_chat(
                        c, traffic, learner, wrong=wrong, noise=args.noise, seed=seed, test=test
                    )
                    if seed == seeds[0]:
                        curves[f"{'20 % wrong' if wrong else 'clean'}: {lname}"] = trace
                    vals.append(
                        (
                            *score(fit, test),
                            sum(bool(x.confirmed) for x in log),
                            time.perf_counter() - t0,
                        )
                    )
                    if wrong == 0 and learner is learner_plain:
                        final_log = log
                v = np.array(vals)
                last = {
                    k: w
                    for k, w in trace[-1].items()
                    if k in ("gamma", "beta", "adaptor_epochs", "chosen")
                }
                extra = (
                    {"seeds": len(seeds), "ndcg_per_seed": tuple(np.round(v[:, 0], 4))}
                    if len(seeds) > 1
                    else {}
                )
                t.add(
                    f"{'20 % wrong' if wrong else 'clean'}: {lname}", float(v[:, 0].mean()), float(v[:, 1].mean()),
                    with_feedback=int(v[:, 2].mean()), final=last, seconds=int(v[:, 3].mean()), **extra,
                )  # fmt: skip
        if final_log:
            # Diagnostics: what the feedback of the plain loop can give at best
            fb = [x for x in final_log if x.confirmed]
            nofb = [x.j for x in final_log if not x.confirmed]
            judged = c.qs([x.j for x in fb])
            r2 = NudgeN().fit(c.doc, judged)
            assert r2.embeddings is not None
            t.add(
                f"diagnostic: full judgements of only the {len(fb)} queries that got feedback (NUDGE-N default)",
                *score(Fitted(r2.embeddings), test), gamma=r2.gamma,
            )  # fmt: skip
            pos = QuerySet(c.q[[x.j for x in fb]], [x.confirmed for x in fb])
            best = max(
                ((g, ctr) for g in GRID[GRID > 0] for ctr in (False, True)),
                key=lambda gc: score(Fitted(nudge(c.doc, pos, gc[0], center=pos.embeddings.mean(0) if gc[1] else None)), test)[0],
            )  # fmt: skip
            fb_best = Fitted(
                nudge(c.doc, pos, best[0], center=pos.embeddings.mean(0) if best[1] else None)
            )
            t.add(
                f"diagnostic: best γ (and centring) for the clean loop's final feedback, chosen on the TEST queries (ceiling, not a method): γ={best[0]:g}{' centred' if best[1] else ''}",
                *score(fb_best, test),
            )  # fmt: skip
            sc = c.q[nofb] @ c.doc.T
            ranks = [
                int((sc[i] > max(sc[i][r] for r in c.answers[j])).sum()) + 1
                for i, j in enumerate(nofb)
            ]
            t.notes.append(
                f"{len(nofb)} of {len(final_log)} traffic queries get no feedback in the clean plain loop "
                f"(no relevant record in the top 10 they were shown); rank of their best relevant "
                f"record under the original vectors: median {int(np.median(ranks))}, quartiles "
                f"{int(np.percentile(ranks, 25))}–{int(np.percentile(ranks, 75))}."
            )
        if curves:
            base_nd = score(Fitted(c.doc), test)[0]
            full_nd = score(Fitted(res.embeddings), test)[0]
            plot_chat(name, curves, base_nd, full_nd, RESULTS / f"chat_{name}.png")
            t.notes.append(f"Curves: `benchmarks/results/chat_{name}.png` (first noise seed).")
            t.curves = curves
        t.notes.append(
            f"Wrong confirmations: model '{args.noise}' (see `confirmations`); noise seeds {args.noise_seeds} "
            "for the loops whose row shows ndcg_per_seed (mean shown), the first seed for the others."
        )
        tables.append(t)
    return tables


def plot_chat(
    name: str, curves: dict[str, list[dict[str, Any]]], base: float, full: float, out: Path
) -> None:
    """Test NDCG@10 after each batch of traffic, per refit loop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    for label, trace in curves.items():
        x = [p["queries"] for p in trace]
        y = [p["test_ndcg"] for p in trace]
        ax.plot(x, y, ("--" if label.startswith("20 %") else "-"), label=label[:70])
    ax.axhline(base, color="grey", ls=":", label=f"no fine-tuning ({base:.3f})")
    ax.axhline(
        full,
        color="black",
        ls="-.",
        label=f"NUDGE-N on full judgements of all traffic ({full:.3f})",
    )
    ax.set_xlabel("traffic queries served (feedback: relevant records seen in the top 10)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"Simulated chatbot, {name}: ft.update() after every 50 queries")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def part_real(args: argparse.Namespace) -> list[Table]:
    """The default NUDGE rows through the real finetuner and a LangChain InMemoryVectorStore."""
    import tempfile

    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag import NudgeEmbeddingFinetuner
    from nudge_rag.embedding import LocalEmbedder
    from nudge_rag.integrations.langchain import as_langchain_embeddings

    tenk = load_tenk()
    sci, sidx = load_beir("scifact", texts=True)
    embed = as_langchain_embeddings(LocalEmbedder())
    t = Table(
        "Check: the real finetuner (LangChain InMemoryVectorStore, k = 10) against the numpy simulation"
    )
    cases = [
        *[(f"10-K sister 1/8, seed {s}", tenk, *sister_split(tenk, s, 1 / 8)) for s in args.seeds],
        ("10-K cross", tenk, *cross_split(tenk)),
        (
            "SciFact, train + val → test",
            sci,
            np.concatenate([sidx["train"], sidx["val"]]),
            sidx["test"],
        ),
    ]
    if "nfcorpus" in args.datasets:
        nfc, nidx = load_beir("nfcorpus", texts=True)
        cases.append(
            (
                "NFCorpus, train + val → test",
                nfc,
                np.concatenate([nidx["train"], nidx["val"]]),
                nidx["test"],
            )
        )
    if args.real_cases:
        cases = [cs for cs in cases if any(x in cs[0] for x in args.real_cases.split(","))]
    for label, c, tr, te in cases:
        row = {d: i for i, d in enumerate(c.doc_ids)}
        if t.rows:
            t.rebase()
        store = InMemoryVectorStore(embed)
        store.add_texts(c.doc_texts, ids=c.doc_ids)
        retriever = store.as_retriever(search_kwargs={"k": K})
        test = c.qs(te)

        def through_store(
            test: QuerySet = test,
            retriever: Any = retriever,
            te: np.ndarray = te,
            c: Corpus = c,
            row: dict[str, int] = row,
        ) -> tuple[float, float]:
            ranked = np.array(
                [[row[d.id] for d in retriever.invoke(c.texts[j])] for j in te.tolist()]
            )
            from nudge_rag.evaluation.metrics import ranking_metrics

            m = ranking_metrics(ranked, test.indptr, test.rows, test.gains, K)
            return float(m.ndcg.mean()), float(m.hit.mean())

        t.add(f"{label}: no fine-tuning, through the store", *through_store())
        t.add(f"{label}: no fine-tuning, numpy", *score(Fitted(c.doc), test))
        pairs = [(c.texts[j], [c.doc_ids[r] for r in c.answers[j]]) for j in tr.tolist()]
        with tempfile.TemporaryDirectory() as state:
            ft = NudgeEmbeddingFinetuner(store, state_dir=state)
            try:
                t0 = time.perf_counter()
                tuned = ft.finetune(pairs, similarity_top_k=K)
                secs = time.perf_counter() - t0
                rep = ft.report
                note = rep.note if rep is not None else ""
                t.add(
                    f"{label}: finetuner defaults (method='auto'), through the retriever it returns",
                    *through_store(retriever=tuned),
                    chosen=rep.chosen if rep else "",
                    gamma=rep.gamma if rep else float("nan"),
                    seconds=f"{secs:.1f}",
                    stages={k: round(v, 1) for k, v in (rep.seconds if rep else {}).items()},
                    note=note[:90],
                )
                ft.revert()
                t.add(f"{label}: after revert(), through the store", *through_store())
            except Exception as exc:  # the finetuner raises when no covered split exists, etc.
                t.add(
                    f"{label}: finetuner defaults, through the store: raised {type(exc).__name__}",
                    float("nan"),
                    float("nan"),
                    note=str(exc)[:80],
                )
        if c is tenk:
            # the same through generate_queries: an "LLM" that answers each chunk with its
            # training questions (none for a chunk without one)
            by_text: dict[str, list[str]] = {}
            for j in tr.tolist():
                for r in c.answers[j]:
                    by_text.setdefault(c.doc_texts[r], []).append(c.texts[j])

            async def replay(prompt: str, by_text: dict[str, list[str]] = by_text) -> str:
                context = prompt.split("---------------------\n")[1].removesuffix("\n")
                return json.dumps(by_text.get(context, []))

            with tempfile.TemporaryDirectory() as state:
                ft = NudgeEmbeddingFinetuner(store, llm=replay, state_dir=state)
                try:
                    tuned = ft.finetune(similarity_top_k=K)
                    rep = ft.report
                    gen = ft.generated
                    t.add(
                        f"{label}: finetune() on generate_queries with the questions replayed as the LLM",
                        *through_store(retriever=tuned),
                        chosen=rep.chosen if rep else "",
                        questions=len(gen.queries) if gen is not None else 0,
                    )  # fmt: skip
                    ft.revert()
                except Exception as exc:
                    t.add(
                        f"{label}: generate_queries replay: raised {type(exc).__name__}",
                        float("nan"),
                        float("nan"),
                        note=str(exc)[:120],
                    )
        f = finetuner_default(c.doc, c.qs(tr))
        t.add(
            f"{label}: finetuner defaults before 'auto' (NUDGE-N), numpy simulation",
            *score(f, test),
            gamma=f.info["gamma"],
        )
        g = nudge_rag_auto(c.doc, c.qs(tr))
        t.add(f"{label}: method='auto', numpy simulation", *score(g, test), **g.info)
    return [t]


def part_seeds(args: argparse.Namespace) -> list[Table]:
    """``method="auto"`` through the real finetuner, per finetuner seed: SciFact and NFCorpus
    (paper split, train + val → test), 10-K sister (split seed 0) and cross; each directly
    (``finetune(pairs)``) and through ``generate_queries`` with a replay LLM (each chunk answered
    with the questions linked to it). A LangChain InMemoryVectorStore of MiniLM vectors, k = 10,
    test questions through the retriever ``finetune()`` returns; ``revert()`` after each run."""
    import tempfile

    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag import NudgeEmbeddingFinetuner
    from nudge_rag.embedding import LocalEmbedder
    from nudge_rag.evaluation.metrics import ranking_metrics
    from nudge_rag.integrations.langchain import as_langchain_embeddings

    embed = as_langchain_embeddings(LocalEmbedder(show_progress=False))
    wanted = args.seed_cases.split(",")
    paths = args.paths.split(",")
    cases: list[tuple[str, Corpus, np.ndarray, np.ndarray]] = []
    if "sister" in wanted or "cross" in wanted:
        tenk = load_tenk()
        if "sister" in wanted:
            cases.append(("10-K sister (split seed 0)", tenk, *sister_split(tenk, 0, 1 / 8)))
        if "cross" in wanted:
            cases.append(("10-K cross (Lyft → Uber)", tenk, *cross_split(tenk)))
    for name in ("scifact", "nfcorpus"):
        if name in wanted:
            c, idx = load_beir(name, texts=True)
            cases.append(
                (f"{name}, paper split", c, np.concatenate([idx["train"], idx["val"]]),
                 idx["test"])
            )  # fmt: skip
    order = {"sister": 2, "cross": 3, "scifact": 0, "nfcorpus": 1}
    cases.sort(key=lambda cs: next(v for k, v in order.items() if k in cs[0].lower()))
    tables = []
    for label, c, tr, te in cases:
        t = Table(f"Per finetuner seed: {label} ({len(tr)} training questions, {len(te)} test)")
        row = {d: i for i, d in enumerate(c.doc_ids)}
        store = InMemoryVectorStore(embed)
        store.add_texts(c.doc_texts, ids=c.doc_ids)
        test = c.qs(te)

        def through(retriever: Any, test: QuerySet = test, te: np.ndarray = te, c: Corpus = c,
                    row: dict[str, int] = row) -> tuple[float, float]:  # fmt: skip
            ranked = np.array(
                [[row[d.id] for d in retriever.invoke(c.texts[j])] for j in te.tolist()]
            )
            m = ranking_metrics(ranked, test.indptr, test.rows, test.gains, K)
            return float(m.ndcg.mean()), float(m.hit.mean())

        base = through(store.as_retriever(search_kwargs={"k": K}))
        t.add("no fine-tuning", *base)
        pairs = [(c.texts[j], [c.doc_ids[r] for r in c.answers[j]]) for j in tr.tolist()]
        by_text: dict[str, list[str]] = {}
        for j in tr.tolist():
            for r in c.answers[j]:
                by_text.setdefault(c.doc_texts[r], []).append(c.texts[j])

        async def replay(prompt: str, by_text: dict[str, list[str]] = by_text) -> str:
            context = prompt.split("---------------------\n")[1].removesuffix("\n")
            return json.dumps(by_text.get(context, []))

        for seed in args.seeds:
            for path in paths:
                with tempfile.TemporaryDirectory() as state:
                    kw: dict[str, Any] = {"llm": replay} if path == "replay" else {}
                    ft = NudgeEmbeddingFinetuner(store, state_dir=state, seed=seed, **kw)
                    t0 = time.perf_counter()
                    tuned = ft.finetune(pairs if path == "direct" else None, similarity_top_k=K)
                    secs = time.perf_counter() - t0
                    rep = ft.report
                    assert rep is not None
                    nd, hit = through(tuned)
                    est = rep.untrained_change
                    t.add(
                        f"seed {seed}, {path}", nd, hit,
                        chosen=rep.chosen,
                        margin=f"{100 * rep.margin:+.2f}±{100 * rep.noise:.2f}",
                        untrained=(f"{100 * est:+.2f}±{100 * (rep.untrained_se or 0):.2f}"
                                   if est is not None else "n/a"),
                        est=est, n_train=rep.n_train, n_val=rep.n_val, n_probes=rep.n_probes,
                        seconds=round(secs, 1),
                    )  # fmt: skip
                    logger.info("%s", rep.summary())
                    ft.revert()
        after = through(store.as_retriever(search_kwargs={"k": K}))
        t.notes.append(
            f"After the last revert(), through the store: NDCG@10 {after[0]:.4f} "
            f"(no fine-tuning {base[0]:.4f})."
        )
        tables.append(t)
    return tables


PARTS: dict[str, PartFn] = {
    "seeds": part_seeds,
    "repro": part_repro,
    "sister": part_sister,
    "cross": part_cross,
    "beir": part_beir,
    "chat": part_chat,
    "real": part_real,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", default="repro,sister,cross,beir,chat,real")
    ap.add_argument(
        "--seeds", default="0,1,2", help="seeds of the 10-K splits / held-out questions"
    )
    ap.add_argument("--datasets", default="scifact,nfcorpus", help="BEIR sets of part beir")
    ap.add_argument("--beir-seeds", default="0", help="held-out seeds of part beir")
    ap.add_argument("--beir-epochs", type=int, default=60)
    ap.add_argument("--beir-stride", type=int, default=2, help="adaptor epochs kept as candidates")
    ap.add_argument("--chat-datasets", default="scifact")
    ap.add_argument("--traffic", choices=("train", "train+val"), default="train+val")
    ap.add_argument("--noise", choices=("add", "replace", "query"), default="add")
    ap.add_argument("--noise-seeds", default="0,1,2")
    ap.add_argument("--learners", default="", help="comma-separated substrings of learner names")
    ap.add_argument(
        "--real-cases", default="", help="comma-separated substrings of part real's cases"
    )
    ap.add_argument(
        "--seed-cases", default="scifact,nfcorpus,sister,cross", help="cases of part seeds"
    )
    ap.add_argument("--paths", default="direct,replay", help="paths of part seeds")
    ap.add_argument("--out", type=Path, default=RESULTS / "gains")
    args = ap.parse_args(argv)
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.beir_seeds = [int(x) for x in args.beir_seeds.split(",")]
    args.datasets = args.datasets.split(",")
    args.chat_datasets = args.chat_datasets.split(",")
    args.noise_seeds = [int(x) for x in args.noise_seeds.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("nudge_rag").setLevel(logging.WARNING)
    out_json = args.out.with_suffix(".json")
    raw: dict[str, Any] = (
        json.loads(out_json.read_text(encoding="utf-8")) if out_json.is_file() else {}
    )
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        tables = PARTS[part](args)
        raw[part] = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "seconds": round(time.perf_counter() - t0),
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "tables": [
                {
                    "title": t.title,
                    "rows": t.rows,
                    "notes": t.notes,
                    "markdown": t.markdown(),
                    "curves": t.curves,
                }
                for t in tables
            ],
        }
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")
        for t in tables:
            print(t.markdown() + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
