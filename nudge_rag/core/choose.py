"""Choosing what a fine-tune applies: NUDGE-N on the records, a query-side adaptor, both, or nothing.

NUDGE moves the records training questions point to toward those questions. That pays when the
questions users ask are like the training ones (human queries, a chatbot's own traffic), and it
does not when they are not (a second, differently worded question about the same chunk; records
no question points to, which lose rank to the moved ones). A query-side linear adaptor
(:mod:`nudge_rag.core.adaptor`) learns how questions relate to chunks instead, and carries over
to new questions. Which one helps depends on the data, so it is measured, not assumed:

* **held out**: a seeded sample of the records questions point to becomes *sentinel* records
  (``SENTINEL_FRACTION``): their questions (``S``) are held out and no candidate is fitted on
  them, so ``S`` measures what records no question points to lose. Of the other questions, a
  covered validation set ``V`` is held out (every record it answers keeps a question in ``T``);
* **candidates** fitted on ``T``: nothing, NUDGE-N over a γ grid, the adaptor after each epoch,
  and the best adaptor followed by NUDGE-N over the γ grid;
* **the pick**: the best NDCG@10 on ``V`` among candidates whose NDCG@10 on ``S`` drops by at most
  ``MAX_SENTINEL_LOSS`` (0.5 point) plus one standard error (the bound applies when there are at
  least ``MIN_SENTINELS`` sentinel questions and at least ``MIN_UNCOVERED_SHARE`` of the store's
  records have no question: with every record covered there is nothing to protect); "nothing"
  unless a candidate beats it on ``V``;
* **refit**: NUDGE-N fitted again on every question at the chosen γ; the adaptor is the one
  chosen (retraining it on every question changed test numbers within noise, at twice the cost).

Records outside the fitted ones are scored through a *pool*: per held-out question, its best
``POOL`` records among the others (by the original question vector), whatever the candidate. A
candidate that moves only fitted records sees them exactly; an adaptor candidate, which changes
the question vector, sees them through the pool (a record outside a question's top ``POOL`` is
taken not to reach its top 10).

Measured in ``benchmarks/bench_gains.py`` (``benchmarks/results/gains.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nudge_rag.core.adaptor import Adaptor, AdaptorConfig, fit_adaptor
from nudge_rag.core.nudge import NudgeN
from nudge_rag.core.queries import QuerySet
from nudge_rag.core.split import validation_split
from nudge_rag.errors import ShapeError

__all__ = [
    "ADAPTOR_CONFIG",
    "Candidate",
    "Choice",
    "HeldOut",
    "Pool",
    "PoolAccumulator",
    "choose",
    "hold_out",
    "refit",
]

logger = logging.getLogger(__name__)

#: γ grid of the NUDGE-N candidates (the paper's, without 0: "nothing" is its own candidate).
GAMMAS: tuple[float, ...] = tuple(round(0.02 * i, 2) for i in range(1, 26))
SENTINEL_FRACTION = 0.1
MIN_SENTINELS = 20
MIN_UNCOVERED_SHARE = 0.05
MAX_SENTINEL_LOSS = 0.005
SENTINEL_Z = 1.0
#: No adaptor is tried below this many training questions (a d x d map needs data).
ADAPTOR_MIN_QUERIES = 100
#: Best records per held-out question kept among those that do not move.
POOL = 64
K = 10
ADAPTOR_CONFIG = AdaptorConfig(
    lr=1e-4, batch_size=64, scale=20.0, negatives="covered", max_epochs=100, patience=25
)


# ---------------------------------------------------------------------------------------------
# Held-out questions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOut:
    """The questions a choice is fitted on (``train``) and measured on (``val``, ``sentinels``).

    Rows are those of the queries given to :func:`hold_out` (the fitted records).
    ``sentinel_rows``: records whose questions are all in ``sentinels`` (empty when the sentinel
    rule does not apply); ``train`` holds no answer among them.
    """

    train: QuerySet
    val: QuerySet
    sentinels: QuerySet
    sentinel_rows: np.ndarray
    note: str = ""

    @property
    def held(self) -> QuerySet:
        """``val`` then ``sentinels``: every held-out question, in that order."""
        return QuerySet.concat(self.val, self.sentinels)


def hold_out(
    queries: QuerySet,
    *,
    uncovered_share: float,
    val_fraction: float = 0.2,
    seed: int = 0,
    sentinel_fraction: float = SENTINEL_FRACTION,
    min_sentinels: int = MIN_SENTINELS,
    min_share: float = MIN_UNCOVERED_SHARE,
) -> HeldOut:
    """Sentinels (when the store has records no question points to), then a covered split.

    Raises:
        ConfigError: No covered validation question can be held out (from
            :func:`~nudge_rag.core.split.validation_split`).
    """
    n = len(queries)
    note = ""
    sent = np.zeros(0, dtype=np.int64)
    s_idx: list[int] = []
    rest_idx = list(range(n))
    if uncovered_share >= min_share and n:
        rows = np.unique(queries.rows)
        n_s = round(sentinel_fraction * rows.size)
        rng = np.random.default_rng(seed + 1)
        cand = np.sort(rng.choice(rows, n_s, replace=False)) if n_s else sent
        is_s = np.zeros(int(rows.max()) + 1, dtype=bool)
        is_s[cand] = True
        s_idx = [j for j in range(n) if bool(np.all(is_s[queries.answer_rows(j)]))]
        if len(s_idx) >= min_sentinels:
            sent = cand
            taken = set(s_idx)
            rest_idx = [j for j in range(n) if j not in taken]
        else:
            note = (
                f"only {len(s_idx)} held-out question(s) about records outside the training "
                f"sample (at least {min_sentinels} needed): what records no question points to "
                "lose could not be measured"
            )
            s_idx = []
    answers = queries.answers()
    is_sent = set(sent.tolist())
    kept = [j for j in rest_idx if any(r not in is_sent for r in answers[j])]
    rest = QuerySet(
        queries.embeddings[kept] if kept else np.zeros((0, queries.dim), np.float32),
        [{r: g for r, g in answers[j].items() if r not in is_sent} for j in kept],
    )
    train, val = validation_split(rest, val_fraction, seed=seed)
    sentinels = queries.subset(np.asarray(s_idx, dtype=np.int64))
    return HeldOut(train, val, sentinels, sent, note)


# ---------------------------------------------------------------------------------------------
# The pool: the best records of each held-out question among those that do not move
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pool:
    """Per held-out question, up to ``P`` unit vectors of records that do not move (``vectors``
    ``(h, P, d)``, ``valid`` ``(h, P)``), plus ``shared`` records every question sees."""

    vectors: np.ndarray
    valid: np.ndarray
    shared: np.ndarray

    def scores(self, q: np.ndarray) -> np.ndarray:
        """``(h, P + s)`` scores of the pooled records for question vectors ``q`` (``-inf``
        where a question's pool has fewer records)."""
        q32 = np.asarray(q, dtype=np.float32)
        own = np.einsum("hd,hpd->hp", q32, self.vectors)
        own = np.where(self.valid, own, -np.inf).astype(np.float32)
        if self.shared.shape[0]:
            return np.concatenate([own, q32 @ self.shared.T], axis=1)
        return own


class PoolAccumulator:
    """Builds a :class:`Pool` from pages of records (unit vectors), as a store is scanned."""

    def __init__(self, queries: np.ndarray, size: int = POOL) -> None:
        self._q = np.ascontiguousarray(queries, dtype=np.float32)
        h, d = self._q.shape
        self._p = int(size)
        self._s = np.full((h, self._p), -np.inf, dtype=np.float32)
        self._v = np.zeros((h, self._p, d), dtype=np.float32)

    def update(self, unit_records: np.ndarray) -> None:
        page = np.asarray(unit_records, dtype=np.float32)
        if page.shape[0] == 0 or self._q.shape[0] == 0:
            return
        sc = self._q @ page.T  # (h, n)
        # only questions whose pool this page improves are merged
        better = np.flatnonzero(sc.max(axis=1) > self._s[:, -1])
        if better.size == 0:
            return
        p = self._p
        both = np.concatenate([self._s[better], sc[better]], axis=1)  # (b, P + n)
        take = min(p, both.shape[1])
        top = np.argpartition(-both, take - 1, axis=1)[:, :take]
        order = np.argsort(-np.take_along_axis(both, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        new_s = np.full((better.size, p), -np.inf, dtype=np.float32)
        new_v = np.zeros((better.size, p, page.shape[1]), dtype=np.float32)
        new_s[:, :take] = np.take_along_axis(both, top, axis=1)
        old = top < p
        bi, ci = np.nonzero(old)
        new_v[bi, ci] = self._v[better[bi], top[bi, ci]]
        bi, ci = np.nonzero(~old)
        new_v[bi, ci] = page[top[bi, ci] - p]
        self._s[better] = new_s
        self._v[better] = new_v

    def result(self, shared: np.ndarray | None = None) -> Pool:
        d = self._q.shape[1]
        sh = np.zeros((0, d), np.float32) if shared is None else np.asarray(shared, np.float32)
        return Pool(self._v.copy(), np.isfinite(self._s), sh)


def pool_from_hits(
    n_queries: int, hits: Sequence[Sequence[str]], vectors: dict[str, np.ndarray], dim: int,
    shared: np.ndarray | None = None,
) -> Pool:  # fmt: skip
    """A :class:`Pool` from a store's search results (ids per question) and their unit vectors."""
    p = max((len(h) for h in hits), default=0) or 1
    v = np.zeros((n_queries, p, dim), dtype=np.float32)
    ok = np.zeros((n_queries, p), dtype=bool)
    for j, ids in enumerate(hits):
        for c, rid in enumerate(ids):
            vec = vectors.get(rid)
            if vec is not None:
                v[j, c] = vec
                ok[j, c] = True
    sh = np.zeros((0, dim), np.float32) if shared is None else np.asarray(shared, np.float32)
    return Pool(v, ok, sh)


# ---------------------------------------------------------------------------------------------
# Candidates and the pick
# ---------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One way to fine-tune, fitted on the training questions and scored on the held-out ones."""

    kind: str  # "none" | "nudge-n" | "adaptor" | "adaptor+nudge-n"
    gamma: float = 0.0
    epochs: int = 0
    val_ndcg: float = float("nan")
    sentinel_ndcg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ranked: np.ndarray = field(default_factory=lambda: np.zeros((0, K), np.int64))
    weight: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        if self.kind == "none":
            return "nothing"
        if self.kind == "nudge-n":
            return f"NUDGE-N γ={self.gamma:g}"
        if self.kind == "adaptor":
            return f"adaptor ({self.epochs} epochs)"
        return f"adaptor ({self.epochs} epochs) + NUDGE-N γ={self.gamma:g}"

    def sentinel_loss(self, base: Candidate) -> tuple[float, float]:
        """Mean NDCG@10 the sentinel questions lose against ``base``, and its standard error."""
        d = base.sentinel_ndcg - self.sentinel_ndcg
        if d.size < 2:
            return (float(d.mean()) if d.size else 0.0), 0.0
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


@dataclass
class Choice:
    """What :func:`choose` found: the pick, the baseline, the best of each kind, and why."""

    chosen: Candidate
    baseline: Candidate
    best_of_kind: dict[str, Candidate]
    sentinel_rule: bool
    n_candidates: int
    adaptor_tried: bool
    note: str = ""
    curve: list[Candidate] = field(default_factory=list)  # NUDGE-N at each γ


class _Scorer:
    """NDCG@10 of held-out questions over the fitted records (exact) and the pool."""

    def __init__(self, held: QuerySet, pool: Pool, n_records: int, k: int = K) -> None:
        self.held = held
        self.pool = pool
        self.k = k
        self.disc = 1.0 / np.log2(np.arange(2, k + 2))
        # graded relevance per (question, fitted record), and each question's ideal DCG: the
        # same for every candidate
        self.rel = np.zeros((len(held), max(n_records + 1, k)))
        self.rel[held.query_of_answer, held.rows] = held.gains
        width = pool.vectors.shape[1] + pool.shared.shape[0] + n_records
        self.k_eff = min(k, width)
        self.ideal = -np.sort(-self.rel, axis=1)[:, : self.k_eff] @ self.disc[: self.k_eff]

    def __call__(self, q: np.ndarray, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = len(self.held)
        if h == 0:
            return np.zeros(0), np.zeros((0, self.k), np.int64)
        fit = (np.asarray(q, np.float32) @ np.asarray(records, np.float32).T).astype(np.float32)
        allsc = np.concatenate([self.pool.scores(q), fit], axis=1)
        k = self.k_eff
        # a full stable sort: ties (duplicate records) are broken by column, pool first, then
        # fitted records in their order, whatever the pool's width (scan and search agree)
        top = np.argsort(-allsc, axis=1, kind="stable")[:, :k]
        n_pool = allsc.shape[1] - fit.shape[1]
        ranked = np.where(top >= n_pool, top - n_pool, -1).astype(np.int64)
        picked = np.take_along_axis(self.rel, np.maximum(ranked, 0), axis=1)
        dcg = np.where(ranked >= 0, picked, 0.0) @ self.disc[:k]
        ideal = self.ideal
        ndcg = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)
        if k < self.k:
            ranked = np.pad(ranked, ((0, 0), (0, self.k - k)), constant_values=-1)
        return ndcg, ranked


def _nudge(records: np.ndarray, train: QuerySet, gamma: float) -> np.ndarray:
    """Fitted records after NUDGE-N at ``gamma`` on ``train`` (rows into ``records``)."""
    out: np.ndarray = np.array(records, dtype=np.float32)
    if gamma <= 0 or len(train) == 0:
        return out
    s = records.shape[0]
    res = NudgeN(gamma=gamma).fit_partial(records, np.arange(s), train, None, None, n_records=s)
    out[np.asarray(res.moved, dtype=np.int64)] = res.moved_embeddings
    return out


def _adapt(weight: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    return q if weight is None else Adaptor(weight).transform(q)


def choose(
    records: np.ndarray,
    h: HeldOut,
    pool: Pool,
    *,
    adaptor: bool = True,
    gammas: Sequence[float] = GAMMAS,
    config: AdaptorConfig = ADAPTOR_CONFIG,
    max_sentinel_loss: float = MAX_SENTINEL_LOSS,
    z: float = SENTINEL_Z,
) -> Choice:
    """Fit every candidate on ``h.train`` and pick (see the module docstring).

    Args:
        records: ``(s, d)`` unit vectors of the fitted records (rows of the questions).
        h: The held-out split (:func:`hold_out`).
        pool: The held-out questions' best records among the others, in ``h.held`` order.
        adaptor: Try adaptor candidates (the pipeline can embed queries through one, and there
            are enough questions).
    """
    x = np.asarray(records, dtype=np.float32)
    held = h.held
    if pool.vectors.shape[0] != len(held):
        msg = f"pool has {pool.vectors.shape[0]} questions; {len(held)} are held out"
        raise ShapeError(msg)
    nv = len(h.val)
    score = _Scorer(held, pool, x.shape[0])
    qh = held.embeddings
    cands: list[Candidate] = []

    def add(
        kind: str,
        q: np.ndarray,
        recs: np.ndarray,
        gamma: float = 0.0,
        epochs: int = 0,
        weight: np.ndarray | None = None,
    ) -> Candidate:
        nd, ranked = score(q, recs)
        c = Candidate(kind, gamma, epochs, float(nd[:nv].mean()) if nv else float("nan"),
                      nd[nv:], ranked[:nv], weight)  # fmt: skip
        cands.append(c)
        return c

    base = add("none", qh, x)
    for g in gammas:
        add("nudge-n", qh, _nudge(x, h.train, float(g)), gamma=float(g))
    use_adaptor = adaptor and len(h.train) >= ADAPTOR_MIN_QUERIES and nv > 0
    best_ad: Candidate | None = None
    if use_adaptor:
        q_all = np.concatenate([h.train.embeddings, h.val.embeddings])
        tp = [(j, a) for j, a in enumerate(h.train.answers())]
        vp = [(len(h.train) + j, a) for j, a in enumerate(h.val.answers())]

        def on_epoch(ep: int, w: np.ndarray) -> None:
            nonlocal best_ad
            c = add("adaptor", _adapt(w, qh), x, epochs=ep, weight=w)
            if best_ad is None or c.val_ndcg > best_ad.val_ndcg + 1e-12:
                best_ad = c

        fit_adaptor(q_all, x, tp, vp, config, on_epoch=on_epoch)
        if best_ad is not None and best_ad.val_ndcg > base.val_ndcg + 1e-12:
            w = best_ad.weight
            t_ad = QuerySet(_adapt(w, h.train.embeddings), h.train.answers())
            qa = _adapt(w, qh)
            for g in gammas:
                add("adaptor+nudge-n", qa, _nudge(x, t_ad, float(g)), gamma=float(g),
                    epochs=best_ad.epochs, weight=w)  # fmt: skip
    rule = len(h.sentinels) >= MIN_SENTINELS and h.sentinel_rows.size > 0
    pool_ok = cands
    if rule:
        pool_ok = []
        for c in cands:
            loss, se = c.sentinel_loss(base)
            if c.kind == "none" or loss - z * se <= max_sentinel_loss + 1e-12:
                pool_ok.append(c)
    best = max(pool_ok, key=lambda c: (c.val_ndcg, c.kind == "none"))
    if not best.val_ndcg > base.val_ndcg + 1e-12:
        best = base
    kinds: dict[str, Candidate] = {}
    for c in cands:
        if c.kind not in kinds or c.val_ndcg > kinds[c.kind].val_ndcg + 1e-12:
            kinds[c.kind] = c
    note = h.note
    if rule:
        kept = {id(c) for c in pool_ok}
        rejected = [c for c in cands if id(c) not in kept]
        top = max(rejected, key=lambda c: c.val_ndcg) if rejected else None
        if top is not None and top.val_ndcg > best.val_ndcg + 1e-12:
            loss, se = top.sentinel_loss(base)
            note = (note + "\n" if note else "") + (
                f"{top.name} did best on the validation questions but would cost the held-out "
                f"questions about untrained records {100 * loss:.1f} ± {100 * se:.1f} points "
                f"NDCG@10 (bound: {100 * max_sentinel_loss:.1f}), so it was not applied"
            )
    logger.info(
        "choice: %s (validation NDCG@10 %.4f, nothing %.4f; %d candidates)",
        best.name,
        best.val_ndcg,
        base.val_ndcg,
        len(cands),
    )
    curve = [c for c in cands if c.kind == "nudge-n"]
    return Choice(best, base, kinds, rule, len(cands), use_adaptor, note, curve)


def refit(
    records: np.ndarray,
    queries: QuerySet,
    choice: Choice,
) -> tuple[np.ndarray, Adaptor | None]:
    """The chosen candidate applied with every question: (new records, adaptor or None).

    NUDGE-N is fitted again on every question at the chosen γ (through the adaptor, for
    "adaptor + NUDGE-N"). The adaptor is the one chosen on the held-out questions, not trained
    again: retraining on every question for as many optimiser steps gave the same test numbers
    within noise (``benchmarks/results/gains.md``, point 8) at twice the training time.
    """
    c = choice.chosen
    x = np.asarray(records, dtype=np.float32)
    if c.kind == "none":
        return x.copy(), None
    if c.kind == "nudge-n":
        return _nudge(x, queries, c.gamma), None
    assert c.weight is not None
    ad = Adaptor(
        np.asarray(c.weight, dtype=np.float32),
        c.epochs,
        choice.baseline.val_ndcg,
        c.val_ndcg,
        (),
        dict(ADAPTOR_CONFIG.__dict__),
    )
    if c.kind == "adaptor":
        return x.copy(), ad
    qa = QuerySet(ad.transform(queries.embeddings), queries.answers())
    return _nudge(x, qa, c.gamma), ad
