"""Choosing what a fine-tune applies: NUDGE-N on the records, a query-side adaptor, both, or nothing.

NUDGE moves the records training questions point to toward those questions. That pays when the
questions users ask are like the training ones (human queries, a chatbot's own traffic), and it
does not when they are not (a second, differently worded question about the same chunk; records
no question points to, which lose rank to the moved ones). A query-side linear adaptor
(:mod:`nudge_rag.core.adaptor`) learns how questions relate to chunks instead, and carries over
to new questions. Which one helps depends on the data, so it is measured, not assumed:

* **folds**: ``N_FOLDS`` covered validation splits of the questions (seeded from the finetuner's
  seed; every record a validation question answers keeps a training question). Every NUDGE-N
  candidate is fitted on each fold's training questions and scored (NDCG@10) on its validation
  questions; a question validated by several folds counts once, with its mean. Adaptor
  candidates, whose training is the cost of the choice, are trained on the first
  ``ADAPTOR_FOLDS`` folds, and compared (paired) on those folds' validation questions.
* **probes**: pseudo-questions written from the words of a seeded sample of the records *no*
  question points to (:class:`~nudge_rag.querygen.offline.OfflineGenerator`), each answered by its
  own record. They are scored like the validation questions and say what those records lose: an
  estimate drawn from the untrained records themselves, not from held-out trained ones (which
  share the trained records' distribution and said "+0.45" where the 10-K cross split lost 3.3).
* **candidates**: nothing; NUDGE-N over a γ grid; the adaptor after each epoch of ``EPOCHS`` and,
  at the best epoch, shrunk toward the identity (``I + α (W - I)``, α in ``ALPHAS``); the best
  admissible adaptor followed by NUDGE-N over the γ grid.
* **admissible**: a candidate whose probes lose at most ``MAX_UNTRAINED_LOSS`` (0.5 point) of
  NDCG@10 against nothing, or a tenth (``UNTRAINED_GAIN_SHARE``) of what it gains on the
  validation questions when that is larger, when there are at least ``MIN_PROBES`` probes and at
  least ``MIN_UNTRAINED_SHARE`` of the store's records have no question (with every record
  covered, there is nothing to protect). NUDGE-N on SciFact gains 31 points on validation and
  costs untrained records 1.4 (what the users' own questions gain that much from is worth a
  small, stated price); on the 10-K cross split it gains 3-4 and costs the other company's
  records 1-2: refused. The shrinkage levels are what lets an adaptor pass the bound.
* **the pick**: simplest first (nothing < NUDGE-N < adaptor < adaptor + NUDGE-N); the best
  admissible candidate of the next kind replaces the current pick only if it beats it on the
  validation questions by more than ``NOISE_Z`` standard errors of the paired per-question
  differences (a one-standard-error rule). A lucky split cannot flip the choice to a more complex
  candidate that is only as good.
* **refit**: NUDGE-N fitted again on every question at the chosen γ; the adaptor is the (mean of
  the) fold map(s) at the chosen epoch, shrunk by the chosen α (no retraining).

Records outside the fitted ones are scored through a *pool*: per held-out question, its best
``POOL`` records among the others (by the original question vector), whatever the candidate. A
candidate that moves only fitted records sees them exactly; an adaptor candidate, which changes
the question vector, sees them through the pool (a record outside a question's top ``POOL`` is
taken not to reach its top 10). The probes' own records are fitted records that no question
points to (NUDGE never moves them), so they are scored exactly.

Measured in ``benchmarks/bench_gains.py`` (``benchmarks/results/gains.md``, ``docs/auto.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nudge_rag.core.adaptor import Adaptor, AdaptorConfig, fit_adaptor
from nudge_rag.core.nudge import NudgeN
from nudge_rag.core.pool import POOL, Pool, PoolAccumulator, pool_from_hits
from nudge_rag.core.queries import QuerySet
from nudge_rag.core.split import validation_positions
from nudge_rag.errors import ShapeError

__all__ = [
    "ADAPTOR_CONFIG",
    "POOL",
    "Candidate",
    "Choice",
    "Folds",
    "Pool",
    "PoolAccumulator",
    "choose",
    "make_folds",
    "pool_from_hits",
    "refit",
]

logger = logging.getLogger(__name__)

#: γ grid of the NUDGE-N candidates (the paper's, without 0: "nothing" is its own candidate).
GAMMAS: tuple[float, ...] = tuple(round(0.02 * i, 2) for i in range(1, 26))
#: Covered validation splits every candidate is fitted and scored on.
N_FOLDS = 3
#: Seed step between folds (fold 0 uses the finetuner's seed itself).
FOLD_SEED_STEP = 7919
#: A more complex candidate must beat the simpler one by more than this many standard errors.
NOISE_Z = 1.0
#: Pseudo-questions about untrained records needed for the bound, and the share of the store
#: without questions from which it applies.
MIN_PROBES = 20
MIN_UNTRAINED_SHARE = 0.05
MAX_UNTRAINED_LOSS = 0.005
#: ... or this share of the candidate's validation gain over nothing, when that is larger.
UNTRAINED_GAIN_SHARE = 0.1
#: Untrained records sampled for probes (one pseudo-question each): bounds memory and time.
PROBE_CHUNKS = 400
#: Shrinkage of the adaptor toward the identity tried at its best epoch (1.0 is always tried).
ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75)
#: Adaptor epochs kept as candidates.
EPOCHS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100)
#: Folds the adaptor candidates are trained on (the first ones): its training is the cost of
#: the choice, and its comparisons are paired on those folds' validation questions.
ADAPTOR_FOLDS = 1
#: No adaptor is tried below this many training questions (a d x d map needs data).
ADAPTOR_MIN_QUERIES = 100
#: Adaptor training per fold is bounded by epochs x training questions x records they answer
#: (an epoch's cost): 62 epochs on the 10-K chunks, 45 on SciFact, 5 on NFCorpus.
ADAPTOR_BUDGET = 3e7
ADAPTOR_MIN_EPOCHS = 5
#: Best records per held-out question kept among those that do not move.
K = 10
ADAPTOR_CONFIG = AdaptorConfig(
    lr=1e-4, batch_size=64, scale=20.0, negatives="covered", max_epochs=100, patience=25
)
KINDS = ("none", "nudge-n", "adaptor", "adaptor+nudge-n")


# ---------------------------------------------------------------------------------------------
# Folds and probes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Folds:
    """The questions a choice is fitted and measured on.

    Attributes:
        queries: Every training question (rows: fitted records).
        splits: Per fold, (training positions, validation positions) into ``queries``.
        held_idx: Increasing positions of the questions some fold validates on.
        probes: Pseudo-questions about untrained records (rows: fitted records no question of
            ``queries`` points to), or an empty set.
        untrained_share: Share of the store's records no training question points to.
    """

    queries: QuerySet
    splits: tuple[tuple[np.ndarray, np.ndarray], ...]
    held_idx: np.ndarray
    probes: QuerySet
    untrained_share: float
    note: str = ""

    @property
    def held(self) -> QuerySet:
        """The validated questions (``held_idx`` order), then the probes: every question the
        candidates are scored on, in the order of the pool."""
        return QuerySet.concat(self.queries.subset(self.held_idx), self.probes)

    @property
    def probe_rule(self) -> bool:
        """Whether the bound on the untrained records applies."""
        return len(self.probes) >= MIN_PROBES and self.untrained_share >= MIN_UNTRAINED_SHARE

    def train(self, f: int) -> QuerySet:
        return self.queries.subset(self.splits[f][0])

    def val(self, f: int) -> QuerySet:
        return self.queries.subset(self.splits[f][1])


def make_folds(
    queries: QuerySet,
    *,
    probes: QuerySet | None = None,
    untrained_share: float = 0.0,
    n_folds: int = N_FOLDS,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Folds:
    """``n_folds`` covered splits (fold ``f`` seeded ``seed + FOLD_SEED_STEP * f``).

    Raises:
        ConfigError: No covered validation question can be held out (from
            :func:`~nudge_rag.core.split.validation_positions`).
    """
    n = len(queries)
    splits = []
    for f in range(max(1, n_folds)):
        val = validation_positions(queries, val_fraction, seed=seed + FOLD_SEED_STEP * f)
        splits.append((np.setdiff1d(np.arange(n), val), val))
    held = np.unique(np.concatenate([v for _, v in splits]))
    if probes is None:
        probes = QuerySet(np.zeros((0, queries.dim), np.float32), [])
    note = ""
    if untrained_share >= MIN_UNTRAINED_SHARE and len(probes) < MIN_PROBES:
        note = (
            f"{untrained_share:.0%} of the store's records have no training question, but only "
            f"{len(probes)} pseudo-question(s) about them could be written (at least "
            f"{MIN_PROBES} needed): what they lose was not measured"
        )
    return Folds(queries, tuple(splits), held, probes, float(untrained_share), note)


# ---------------------------------------------------------------------------------------------
# Candidates and the pick
# ---------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One way to fine-tune, fitted on each fold's training questions and scored on its held-out
    ones.

    Attributes:
        val: Per validated question (``Folds.held_idx`` order), its mean NDCG@10 over the folds
            that validate it and that the candidate was fitted on (NaN: none; adaptor
            candidates are fitted on the first ``ADAPTOR_FOLDS`` folds only).
        probe: Per probe, its mean NDCG@10 over the folds.
        ranked: Fold 0's validation questions, their top 10 (fitted rows; -1: another record).
        weights: The adaptor's map of each fold (before shrinkage by ``alpha``).
    """

    kind: str  # "none" | "nudge-n" | "adaptor" | "adaptor+nudge-n"
    gamma: float = 0.0
    epochs: int = 0
    alpha: float = 1.0
    val: np.ndarray = field(default_factory=lambda: np.zeros(0))
    probe: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ranked: np.ndarray = field(default_factory=lambda: np.zeros((0, K), np.int64))
    weights: tuple[np.ndarray, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        if self.kind == "none":
            return "nothing"
        if self.kind == "nudge-n":
            return f"NUDGE-N γ={self.gamma:g}"
        ad = f"adaptor ({self.epochs} epochs" + (
            f", α={self.alpha:g})" if self.alpha != 1.0 else ")"
        )
        if self.kind == "adaptor":
            return ad
        return f"{ad} + NUDGE-N γ={self.gamma:g}"

    @property
    def val_ndcg(self) -> float:
        ok = np.isfinite(self.val)
        return float(self.val[ok].mean()) if ok.any() else float("nan")

    def gain_over(self, other: Candidate) -> tuple[float, float]:
        """Mean validation NDCG@10 this candidate gains over ``other`` and its standard error
        (paired per question, over the questions both were scored on)."""
        d = self.val - other.val
        return _mean_se(d[np.isfinite(d)])

    def untrained_change(self, base: Candidate) -> tuple[float, float]:
        """Mean NDCG@10 change of the probes against ``base`` and its standard error."""
        return _mean_se(self.probe - base.probe)

    def sentinel_loss(self, base: Candidate) -> tuple[float, float]:
        """What the probes lose against ``base`` (the opposite of :meth:`untrained_change`)."""
        m, se = self.untrained_change(base)
        return -m, se


def _mean_se(d: np.ndarray) -> tuple[float, float]:
    if d.size == 0:
        return 0.0, 0.0
    if d.size < 2:
        return float(d.mean()), 0.0
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


@dataclass
class Step:
    """One comparison of the pick: ``challenger`` against the ``incumbent`` (names)."""

    challenger: str
    incumbent: str
    margin: float
    noise: float
    taken: bool

    def describe(self) -> str:
        verdict = "taken" if self.taken else "within noise, not taken"
        if self.margin <= 0:
            verdict = "not better, not taken"
        return (
            f"{self.challenger} over {self.incumbent}: {100 * self.margin:+.2f} ± "
            f"{100 * self.noise:.2f} points ({verdict})"
        )


@dataclass
class Choice:
    """What :func:`choose` found: the pick, the baseline, the best of each kind, and why."""

    chosen: Candidate
    baseline: Candidate
    best_of_kind: dict[str, Candidate]
    probe_rule: bool
    n_candidates: int
    adaptor_tried: bool
    note: str = ""
    curve: list[Candidate] = field(default_factory=list)  # NUDGE-N at each γ
    steps: list[Step] = field(default_factory=list)
    n_folds: int = 1
    n_probes: int = 0
    untrained_share: float = 0.0

    @property
    def margin(self) -> float:
        """Validation NDCG@10 the pick gained over the simpler candidate it displaced (0: it is
        "nothing")."""
        taken = [s for s in self.steps if s.taken]
        return taken[-1].margin if taken else 0.0

    @property
    def noise(self) -> float:
        """Standard error of that gain (paired per question)."""
        taken = [s for s in self.steps if s.taken]
        return taken[-1].noise if taken else 0.0

    @property
    def untrained(self) -> tuple[float, float]:
        """Estimated NDCG@10 change of questions about untrained records under the pick (mean,
        standard error), from the probes (0, 0 without them)."""
        if self.n_probes == 0:
            return 0.0, 0.0
        return self.chosen.untrained_change(self.baseline)

    # kept for callers of the earlier sentinel rule
    @property
    def sentinel_rule(self) -> bool:
        return self.probe_rule


class _Scorer:
    """NDCG@10 of held-out questions over the fitted records (exact) and the pool."""

    def __init__(self, held: QuerySet, pool: Pool, n_records: int, k: int = K) -> None:
        self.held = held
        self.pool = pool
        self.k = k
        self.disc = 1.0 / np.log2(np.arange(2, k + 2))
        # graded relevance per (question, fitted record), and each question's ideal DCG: the
        # same for every candidate
        self.rel = np.zeros((len(held), max(n_records + 1, k)), dtype=np.float32)
        self.rel[held.query_of_answer, held.rows] = held.gains
        width = pool.vectors.shape[1] + pool.shared.shape[0] + n_records
        self.k_eff = min(k, width)
        self.ideal = -np.sort(-self.rel, axis=1)[:, : self.k_eff] @ self.disc[: self.k_eff]

    def __call__(
        self, q: np.ndarray, records: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-question NDCG@10 and top 10 of held-out questions ``rows`` (vectors ``q``)."""
        if rows.size == 0:
            return np.zeros(0), np.zeros((0, self.k), np.int64)
        fit = (np.asarray(q, np.float32) @ np.asarray(records, np.float32).T).astype(np.float32)
        allsc = np.concatenate([self.pool.scores(q, rows), fit], axis=1)
        k = self.k_eff
        # a full stable sort: ties (duplicate records) are broken by column, pool first, then
        # fitted records in their order, whatever the pool's width (scan and search agree)
        top = np.argsort(-allsc, axis=1, kind="stable")[:, :k]
        n_pool = allsc.shape[1] - fit.shape[1]
        ranked = np.where(top >= n_pool, top - n_pool, -1).astype(np.int64)
        picked = np.take_along_axis(self.rel[rows], np.maximum(ranked, 0), axis=1)
        dcg = np.where(ranked >= 0, picked, 0.0) @ self.disc[:k]
        ideal = self.ideal[rows]
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


def _mix(weight: np.ndarray, alpha: float) -> np.ndarray:
    if alpha == 1.0:
        return weight
    eye = np.eye(weight.shape[0], dtype=np.float32)
    out: np.ndarray = (eye + np.float32(alpha) * (weight - eye)).astype(np.float32)
    return out


def _adapt(weight: np.ndarray | None, q: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return q if weight is None else Adaptor(_mix(weight, alpha)).transform(q)


class _Tally:
    """Per candidate, the sum of NDCG@10 over the folds (validated questions, probes)."""

    def __init__(self, folds: Folds) -> None:
        self.nh = folds.held_idx.size
        self.np_ = len(folds.probes)
        self.count: dict[tuple[object, ...], np.ndarray] = {}
        self.n_folds: dict[tuple[object, ...], int] = {}
        self.val: dict[tuple[object, ...], np.ndarray] = {}
        self.probe: dict[tuple[object, ...], np.ndarray] = {}
        self.ranked: dict[tuple[object, ...], np.ndarray] = {}
        self.weights: dict[tuple[object, ...], list[np.ndarray]] = {}

    def add(
        self, key: tuple[object, ...], f: int, vpos: np.ndarray, nd: np.ndarray, ranked: np.ndarray
    ) -> None:
        nv = vpos.size
        if key not in self.val:
            self.val[key] = np.zeros(self.nh)
            self.count[key] = np.zeros(self.nh)
            self.probe[key] = np.zeros(self.np_)
            self.n_folds[key] = 0
        self.val[key][vpos] += nd[:nv]
        self.count[key][vpos] += 1
        self.probe[key] += nd[nv:]
        self.n_folds[key] += 1
        if f == 0:
            self.ranked[key] = ranked[:nv]

    def candidate(self, key: tuple[object, ...]) -> Candidate:
        kind = str(key[0])
        gamma = float(key[1])  # type: ignore[arg-type]
        epochs = int(key[2])  # type: ignore[call-overload]
        alpha = float(key[3])  # type: ignore[arg-type]
        return Candidate(
            kind,
            gamma,
            epochs,
            alpha,
            np.where(self.count[key] > 0, self.val[key] / np.maximum(self.count[key], 1), np.nan),
            self.probe[key] / max(self.n_folds[key], 1),
            self.ranked.get(key, np.zeros((0, K), np.int64)),
            tuple(self.weights.get((epochs,), ())),
        )


def choose(
    records: np.ndarray,
    folds: Folds,
    pool: Pool,
    *,
    adaptor: bool = True,
    gammas: Sequence[float] = GAMMAS,
    config: AdaptorConfig = ADAPTOR_CONFIG,
    max_untrained_loss: float = MAX_UNTRAINED_LOSS,
    z: float = NOISE_Z,
) -> Choice:
    """Fit every candidate on each fold and pick (see the module docstring).

    Args:
        records: ``(s, d)`` unit vectors of the fitted records (rows of the questions and of the
            probes).
        folds: The folds and probes (:func:`make_folds`).
        pool: The held-out questions' best records among the others, in ``folds.held`` order.
        adaptor: Try adaptor candidates (the pipeline can embed queries through one, and there
            are enough questions).
        max_untrained_loss: The bound on what the probes may lose (NDCG@10, 0.005 = 0.5 point;
            or ``UNTRAINED_GAIN_SHARE`` of the candidate's validation gain, when larger).
        z: Standard errors by which a more complex candidate must win.
    """
    x = np.asarray(records, dtype=np.float32)
    held = folds.held
    if pool.vectors.shape[0] != len(held):
        msg = f"pool has {pool.vectors.shape[0]} questions; {len(held)} are held out"
        raise ShapeError(msg)
    score = _Scorer(held, pool, x.shape[0])
    tally = _Tally(folds)
    nh = folds.held_idx.size
    probe_rows = nh + np.arange(len(folds.probes), dtype=np.int64)
    n_train_min = min(s[0].size for s in folds.splits)
    use_adaptor = adaptor and n_train_min >= ADAPTOR_MIN_QUERIES
    n_cov = max(np.unique(folds.train(f).rows).size for f in range(len(folds.splits)))
    max_ep = int(ADAPTOR_BUDGET // max(1, len(folds.queries) * n_cov))
    max_ep = min(config.max_epochs, max(ADAPTOR_MIN_EPOCHS, max_ep))
    config = AdaptorConfig(
        **{**config.__dict__, "max_epochs": max_ep, "patience": min(config.patience, max_ep)}
    )
    epochs = sorted({e for e in EPOCHS if e <= max_ep} | {max_ep})
    fold_rows: list[np.ndarray] = []
    fold_vpos: list[np.ndarray] = []
    for f in range(len(folds.splits)):
        vpos = np.searchsorted(folds.held_idx, folds.splits[f][1])
        fold_vpos.append(vpos)
        fold_rows.append(np.concatenate([vpos, probe_rows]))

    def run(key: tuple[object, ...], f: int, q: np.ndarray, recs: np.ndarray) -> None:
        nd, ranked = score(q, recs, fold_rows[f])
        tally.add(key, f, fold_vpos[f], nd, ranked)

    for f in range(len(folds.splits)):
        rows = fold_rows[f]
        qh = held.embeddings[rows]
        train = folds.train(f)
        run(("none", 0.0, 0, 1.0), f, qh, x)
        for g in gammas:
            run(("nudge-n", float(g), 0, 1.0), f, qh, _nudge(x, train, float(g)))
        if not use_adaptor or f >= ADAPTOR_FOLDS:
            continue
        val = folds.val(f)
        q_all = np.concatenate([train.embeddings, val.embeddings])
        tp = [(j, a) for j, a in enumerate(train.answers())]
        vp = [(len(train) + j, a) for j, a in enumerate(val.answers())]
        kept: dict[int, np.ndarray] = {}

        def on_epoch(ep: int, w: np.ndarray, f: int = f, qh: np.ndarray = qh,
                     kept: dict[int, np.ndarray] = kept) -> None:  # fmt: skip
            if ep in epochs:
                kept[ep] = w
                run(("adaptor", 0.0, ep, 1.0), f, _adapt(w, qh), x)

        fit_adaptor(q_all, x, tp, vp, config, on_epoch=on_epoch)
        last = max(kept) if kept else 0
        for ep in epochs:  # a fold that stopped early keeps its last map
            if ep not in kept:
                if last:
                    kept[ep] = kept[last]
                    run(("adaptor", 0.0, ep, 1.0), f, _adapt(kept[last], qh), x)
                else:
                    kept[ep] = np.eye(x.shape[1], dtype=np.float32)
                    run(("adaptor", 0.0, ep, 1.0), f, qh, x)
            tally.weights.setdefault((ep,), []).append(kept[ep])

    base = tally.candidate(("none", 0.0, 0, 1.0))
    rule = folds.probe_rule

    def admissible(c: Candidate) -> bool:
        if not rule or c.kind == "none":
            return True
        bound = max(max_untrained_loss, UNTRAINED_GAIN_SHARE * (c.val_ndcg - base.val_ndcg))
        return c.sentinel_loss(base)[0] <= bound + 1e-12

    cands: list[Candidate] = [base]
    cands += [tally.candidate(("nudge-n", float(g), 0, 1.0)) for g in gammas]
    if use_adaptor:
        ads = [tally.candidate(("adaptor", 0.0, ep, 1.0)) for ep in epochs]
        best_ep = max(ads, key=lambda c: c.val_ndcg).epochs
        for a in ALPHAS:
            key = ("adaptor", 0.0, best_ep, float(a))
            for f in range(min(ADAPTOR_FOLDS, len(folds.splits))):
                qh = held.embeddings[fold_rows[f]]
                run(key, f, _adapt(tally.weights[(best_ep,)][f], qh, a), x)
            ads.append(tally.candidate(key))
        cands += ads
        ok = [c for c in ads if c.epochs == best_ep and admissible(c)]
        if ok:
            ad = max(ok, key=lambda c: (c.val_ndcg, -c.alpha))
            for f in range(min(ADAPTOR_FOLDS, len(folds.splits))):
                w = _mix(tally.weights[(best_ep,)][f], ad.alpha)
                qh = _adapt(w, held.embeddings[fold_rows[f]])
                tr = folds.train(f)
                t_ad = QuerySet(_adapt(w, tr.embeddings), tr.answers())
                for g in gammas:
                    key = ("adaptor+nudge-n", float(g), best_ep, ad.alpha)
                    run(key, f, qh, _nudge(x, t_ad, float(g)))
            cands += [
                tally.candidate(("adaptor+nudge-n", float(g), best_ep, ad.alpha)) for g in gammas
            ]

    kinds: dict[str, Candidate] = {}
    best_ok: dict[str, Candidate] = {}
    for c in cands:
        if c.kind not in kinds or c.val_ndcg > kinds[c.kind].val_ndcg + 1e-12:
            kinds[c.kind] = c
        if admissible(c) and (
            c.kind not in best_ok or c.val_ndcg > best_ok[c.kind].val_ndcg + 1e-12
        ):
            best_ok[c.kind] = c
    chosen = base
    steps: list[Step] = []
    for kind in KINDS[1:]:
        nxt = best_ok.get(kind)
        if nxt is None:
            continue
        m, se = nxt.gain_over(chosen)
        taken = m > 0 and m > z * se + 1e-12
        steps.append(Step(nxt.name, chosen.name, m, se, taken))
        if taken:
            chosen = nxt
    notes = [folds.note] if folds.note else []
    if rule:
        rejected = [c for c in cands if not admissible(c)]
        top = max(rejected, key=lambda c: c.val_ndcg) if rejected else None
        if top is not None and top.val_ndcg > chosen.val_ndcg + 1e-12:
            loss, se = top.sentinel_loss(base)
            gain = top.val_ndcg - base.val_ndcg
            bound = max(max_untrained_loss, UNTRAINED_GAIN_SHARE * gain)
            notes.append(
                f"{top.name} did best on the validation questions (+{100 * gain:.1f} points) but "
                f"would cost questions about untrained records {100 * loss:.1f} ± "
                f"{100 * se:.1f} points NDCG@10 (bound: {100 * bound:.1f}), so it was not applied"
            )
    logger.info(
        "choice: %s (validation NDCG@10 %.4f, nothing %.4f; %d candidates, %d folds)",
        chosen.name,
        chosen.val_ndcg,
        base.val_ndcg,
        len(cands),
        len(folds.splits),
    )
    curve = [c for c in cands if c.kind == "nudge-n"]
    return Choice(
        chosen, base, kinds, rule, len(cands), use_adaptor, "\n".join(notes), curve, steps,
        len(folds.splits), len(folds.probes), folds.untrained_share,
    )  # fmt: skip


def refit(
    records: np.ndarray,
    queries: QuerySet,
    choice: Choice,
) -> tuple[np.ndarray, Adaptor | None]:
    """The chosen candidate applied with every question: (new records, adaptor or None).

    NUDGE-N is fitted again on every question at the chosen γ (through the adaptor, for
    "adaptor + NUDGE-N"). The adaptor is the mean of the folds' maps at the chosen epoch, shrunk
    toward the identity by the chosen α: not trained again (retraining on every question for as
    many steps gave the same test numbers within noise, ``benchmarks/results/gains.md`` point 8,
    at twice the training time), and the mean of several folds' maps varies less with the seed
    than any one of them.
    """
    c = choice.chosen
    x = np.asarray(records, dtype=np.float32)
    if c.kind == "none":
        return x.copy(), None
    if c.kind == "nudge-n":
        return _nudge(x, queries, c.gamma), None
    assert c.weights
    w = _mix(np.mean(np.stack(c.weights), axis=0).astype(np.float32), c.alpha)
    ad = Adaptor(
        w,
        c.epochs,
        choice.baseline.val_ndcg,
        c.val_ndcg,
        (),
        {**ADAPTOR_CONFIG.__dict__, "alpha": c.alpha, "folds": len(c.weights)},
    )
    if c.kind == "adaptor":
        return x.copy(), ad
    qa = QuerySet(ad.transform(queries.embeddings), queries.answers())
    return _nudge(x, qa, c.gamma), ad
