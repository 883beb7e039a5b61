"""NUDGE-N and NUDGE-M: closed-form moves of record embeddings, and the choice of γ.

See docs/how-it-works.md in the repository and the paper: S. Zeighami, Z. Wellmer,
A. Parameswaran, *NUDGE: Lightweight Non-Parametric Fine-Tuning of Embeddings for Retrieval*,
ICLR 2025.

Only records that training queries point to can move. Everything γ selection needs from the other
records is, per validation query, its best ``k`` scores among them (:mod:`nudge_rag.core.topk`);
the records that can move, and the answers of the validation queries, are scored exactly. Memory
is ``O(N·d)`` for the output plus ``O(Q·(k + moved))``; no (queries × corpus) matrix is built.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nudge_rag.core.queries import QuerySet, as_float32_matrix
from nudge_rag.core.split import validation_split
from nudge_rag.core.topk import BestUnmovedScores, UnmovedTopK, normalize_rows, row_norms
from nudge_rag.errors import ConfigError, ShapeError

__all__ = ["NudgeM", "NudgeN", "NudgeResult", "ValidationCurve"]

logger = logging.getLogger(__name__)

Objective = str  # "top1" or "ndcg@<k>"
_NDCG = re.compile(r"^ndcg@(\d+)$")


@dataclass(frozen=True)
class ValidationCurve:
    """The validation objective at each γ that was tried.

    Attributes:
        gammas: γ values tried, increasing.
        scores: Mean validation objective at each γ (top-1 accuracy or NDCG@k).
        objective: ``"top1"`` or ``"ndcg@k"``.
        n_queries: Number of validation queries behind each score.
    """

    gammas: np.ndarray
    scores: np.ndarray
    objective: str
    n_queries: int

    @property
    def baseline(self) -> float:
        """The objective at γ = 0 (no fine-tuning)."""
        i = int(np.argmin(np.abs(self.gammas)))
        return float(self.scores[i]) if self.gammas.size and self.gammas[i] == 0 else float("nan")

    @property
    def best(self) -> float:
        return float(self.scores.max()) if self.scores.size else float("nan")


@dataclass(frozen=True)
class NudgeResult:
    """What a NUDGE fit produced.

    Attributes:
        method: ``"nudge-n"`` or ``"nudge-m"``.
        gamma: The γ applied.
        moved: Record rows whose vectors changed, increasing.
        moved_embeddings: New vectors of ``moved`` rows, ``(len(moved), d)`` float32.
        embeddings: The full fine-tuned matrix ``(N, d)`` float32 (unit rows normalised; moved rows
            replaced), or ``None`` when fitted from precomputed scores (:meth:`NudgeN.fit_partial`).
        curve: Validation objective per γ tried (``None`` when γ was fixed).
        objective: The objective γ was chosen by.
        n_train: Training queries behind the moves (validation ones included after a refit).
        n_val: Validation queries γ was chosen on.
        refit: Whether the final move was fitted on training + validation queries.
    """

    method: str
    gamma: float
    moved: np.ndarray
    moved_embeddings: np.ndarray
    embeddings: np.ndarray | None
    curve: ValidationCurve | None
    objective: str
    n_train: int
    n_val: int
    refit: bool

    def __repr__(self) -> str:
        return (
            f"NudgeResult(method={self.method!r}, gamma={self.gamma:.6g}, "
            f"moved={self.moved.size}, n_train={self.n_train}, n_val={self.n_val})"
        )


# ---------------------------------------------------------------------------------------------
# The moves themselves
# ---------------------------------------------------------------------------------------------
@dataclass
class _Moves:
    """Per record of the fitted set S: its unit vector and what NUDGE needs to move it."""

    d: np.ndarray  # (s, dim) unit vectors (float64; float32 for large problems)
    moves: np.ndarray  # (s,) bool: the record moves for γ > 0
    ghat: np.ndarray  # (s, dim) unit G (zero where G is zero), d's dtype
    u: np.ndarray | None  # NUDGE-N: unit component of G orthogonal to d
    cap: np.ndarray | None  # NUDGE-N: d·Ĝ; the record jumps to Ĝ once 1 - γ/2 <= cap
    perp: np.ndarray | None = None  # NUDGE-N: ||Ĝ - cap·d|| (so that q·u = (q·Ĝ - cap q·d) / perp)
    gnorm: np.ndarray | None = None  # ||G||


def _gradient(
    rows_local: np.ndarray,
    queries: QuerySet,
    s: int,
    block: int = 1024,
    dtype: type[np.floating] = np.float64,
) -> np.ndarray:
    """G_i = sum of the training queries that point to record i (local rows), in ``dtype``.

    The (query, record) pairs are sorted by record; records with the same number L of queries
    are summed together as an (n, L, d) gather, a few thousand pairs at a time. (``np.add.reduceat``
    along axis 0 is an order of magnitude slower here: it walks each short run column by column.)
    """
    g = np.zeros((s, queries.dim), dtype=dtype)
    if rows_local.size == 0:
        return g
    order = np.argsort(rows_local, kind="stable")
    rows_sorted = rows_local[order]
    queries_sorted = queries.query_of_answer[order]
    heads = np.flatnonzero(np.concatenate([[True], rows_sorted[1:] != rows_sorted[:-1]]))
    lens = np.diff(np.append(heads, rows_sorted.size))
    by_len = np.argsort(lens, kind="stable")
    sizes, firsts = np.unique(lens[by_len], return_index=True)
    bounds = np.append(firsts, by_len.size)
    emb = queries.embeddings
    for size, lo, hi in zip(sizes.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        runs = by_len[lo:hi]
        step = max(1, block // size)
        for start in range(0, runs.size, step):
            r = runs[start : start + step]
            pairs = heads[r][:, None] + np.arange(size)
            # float32 sums (a run holds one record's queries: few, unit-scale) are accurate to
            # ~1e-7 relative and far faster than float64 ones.
            g[rows_sorted[heads[r]]] = emb[queries_sorted[pairs]].sum(axis=1)
    return g


def _new_vectors(method: str, mv: _Moves, gamma: float) -> np.ndarray:
    """Moved vectors (float32) of every record flagged in ``mv.moves`` at ``gamma``."""
    idx = np.flatnonzero(mv.moves)
    if method == "nudge-m":
        out = mv.ghat[idx]
        out *= gamma
        out += mv.d[idx]
        return out.astype(np.float32)
    assert mv.u is not None and mv.cap is not None
    alpha = 1.0 - gamma / 2.0
    beta = np.sqrt(max(gamma * (4.0 - gamma), 0.0)) / 2.0
    out = mv.u[idx]
    out *= beta
    out += alpha * mv.d[idx]
    capped = idx[mv.cap[idx] >= alpha]
    result = out.astype(np.float32)
    if capped.size:
        result[np.searchsorted(idx, capped)] = mv.ghat[capped]
    return result


# ---------------------------------------------------------------------------------------------
# Validation scoring
# ---------------------------------------------------------------------------------------------
@dataclass
class _Validation:
    """Validation queries scored against the fitted set S and the best unmoved records."""

    a: np.ndarray  # (nv, s) q·d over S
    b: np.ndarray | None  # (nv, s) q·u (NUDGE-N)
    c: np.ndarray  # (nv, s) q·Ĝ
    moves: np.ndarray  # (s,) bool
    cap: np.ndarray | None
    rel_gain: np.ndarray  # (nv, s) relevance grade of S record for the query (0 = not relevant)
    const: np.ndarray  # (nv, k) best constant non-relevant scores, decreasing (-inf padded)
    idcg: np.ndarray  # (nv,) ideal DCG@k (ndcg objectives)


@dataclass
class _Cands:
    """Per validation query, S records that can matter, with precomputed scores.

    Laid out so that a score at γ is three element-wise operations: records that never move
    are stored as "always capped" (``cap = +inf``) with their constant score in ``c``, and
    padding as a constant ``-inf``.
    """

    gains: np.ndarray  # (nv, w) relevance grade (0 = not relevant)
    a: np.ndarray  # (nv, w) q·d
    b: np.ndarray  # (nv, w) q·u (NUDGE-N; zeros for NUDGE-M)
    c: np.ndarray  # (nv, w) q·Ĝ for moving records, the constant score otherwise
    cap: np.ndarray  # (nv, w) d·Ĝ (NUDGE-N); +inf for records that never move


def _gather(v: _Validation, keep: np.ndarray, method: str, qs: np.ndarray) -> _Cands:
    """Candidates of the validation queries ``qs`` (rows of ``v``); ``keep`` is ``(len(qs), s)``."""
    nv = keep.shape[0]
    counts = keep.sum(axis=1)
    width = max(int(counts.max()) if counts.size else 0, 1)
    cols = np.full((nv, width), -1, dtype=np.int64)
    qi, si = np.nonzero(keep)
    pos = np.arange(qi.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cols[qi, pos] = si
    valid = cols >= 0
    safe = np.where(valid, cols, 0)
    rows = np.asarray(qs)[:, None]
    moves = valid & v.moves[safe]
    a = np.where(valid, v.a[rows, safe].astype(np.float64), -np.inf)
    b = np.where(moves, v.b[rows, safe], 0.0) if v.b is not None else np.zeros(cols.shape)
    cap = np.where(moves, v.cap[safe], np.inf) if v.cap is not None else np.zeros(cols.shape)
    # NUDGE-M scores a + γc: a record that never moves has c = 0. NUDGE-N: see the class doc.
    still = 0.0 if method == "nudge-m" else a
    return _Cands(
        gains=np.where(valid, v.rel_gain[rows, safe], 0.0),
        a=a,
        b=b,
        c=np.where(moves, v.c[rows, safe], still),
        cap=cap,
    )


def _score_candidates(method: str, cd: _Cands, gammas: np.ndarray) -> np.ndarray:
    """Scores ``(len(gammas), nv, w)`` of the candidates at each γ (padding scores -inf)."""
    g = np.asarray(gammas, dtype=np.float64)[:, None, None]
    if method == "nudge-m":
        scores: np.ndarray = cd.a[None] + g * cd.c[None]
        return scores
    alpha = 1.0 - g / 2.0
    beta = np.sqrt(np.maximum(g * (4.0 - g), 0.0)) / 2.0
    # Padding (a = -inf, cap = +inf) takes c = -inf below; at γ = 2 (alpha = 0) its
    # alpha·a is NaN on the way, harmlessly.
    with np.errstate(invalid="ignore"):
        out = alpha * cd.a[None]
        out += beta * cd.b[None]
    return np.where(cd.cap[None] >= alpha, cd.c[None], out)


def _objective_values(
    objective: Objective, v: _Validation, rel: np.ndarray, rel_s: np.ndarray, non_s: np.ndarray
) -> np.ndarray:
    """Per γ and query ``(G, nv)``: the objective from the scores of the answers (``rel_s``,
    ``(G, nv, wr)``), of the other candidates (``non_s``) and the constant scores."""
    if objective == "top1":
        best_non = np.maximum(non_s.max(axis=2), v.const[None, :, 0])
        wins: np.ndarray = (rel_s.max(axis=2) > best_non).astype(np.float64)
        return wins
    k = v.const.shape[1]
    G = rel_s.shape[0]
    # Constants first: a tie between a constant and a candidate goes to the constant (pessimistic).
    const = np.broadcast_to(v.const[None], (G, *v.const.shape))
    allscores = np.concatenate([const, non_s, rel_s], axis=2)
    gains = np.concatenate([np.zeros(v.const.shape), np.zeros(non_s.shape[1:]), rel], axis=1)
    width = allscores.shape[2]
    kk = min(k, width)
    if width > kk:
        part = np.argpartition(-allscores, kk - 1, axis=2)[:, :, :kk]
    else:
        part = np.broadcast_to(np.arange(width), allscores.shape).copy()
    sc = np.take_along_axis(allscores, part, axis=2)
    # the k best in order, ties broken by column (as a stable full sort would)
    order = np.lexsort((part, -sc), axis=2)
    idx = np.take_along_axis(part, order, axis=2)
    g = np.take_along_axis(np.broadcast_to(gains[None], allscores.shape), idx, axis=2)
    g = np.where(np.isfinite(np.take_along_axis(allscores, idx, axis=2)), g, 0.0)
    dcg = g @ (1.0 / np.log2(np.arange(2, kk + 2)))
    safe = np.where(v.idcg > 0, v.idcg, 1.0)
    return np.where(v.idcg[None] > 0, dcg / safe[None], 0.0)


def _gamma_blocks(gammas: np.ndarray, per_gamma: int, budget: int = 2_000_000) -> list[np.ndarray]:
    """Split ``gammas`` into blocks whose scores fit in ``budget`` elements."""
    size = max(1, budget // max(per_gamma, 1))
    return [gammas[i : i + size] for i in range(0, gammas.size, size)]


def _bounds(
    method: str, v: _Validation, g_lo: float, g_hi: float, qs: slice
) -> tuple[np.ndarray, np.ndarray]:
    """The best and worst score each S record can take for queries ``qs`` over γ in [g_lo, g_hi].

    Records that never move score ``a`` at every γ (both bounds).
    """
    a, c = v.a[qs], v.c[qs]
    if method == "nudge-m":
        ub = np.where(v.moves, a + np.where(c > 0, g_hi, g_lo) * c, a)
        lb = np.where(v.moves, a + np.where(c > 0, g_lo, g_hi) * c, a)
        return ub, lb
    assert v.b is not None and v.cap is not None
    b = v.b[qs]
    # A moving record follows the great circle from d towards Ĝ: at angle θ its score is
    # f(θ) = a·cos θ + b·sin θ (cos θ = 1 - γ/2), until it reaches Ĝ itself (score c) when
    # d·Ĝ >= 1 - γ/2 ("capped"). Over [θ0, θ1] (an arc shorter than π) f has at most one
    # turning point: a peak (r) inside when f rises at θ0 and falls at θ1, a trough (-r) when it
    # falls then rises; otherwise the ends bound it. For records capped inside the range the
    # same tests against the uncapped arc over-cover, which keeps the bounds valid.
    ends = []
    slopes = []
    for g in (min(g_lo, 4.0), min(g_hi, 4.0)):
        if g == 0.0:  # θ = 0: the record itself (nothing is capped at γ = 0 unless d = Ĝ)
            ends.append(np.where(v.cap >= 1.0, c, a))
            slopes.append(b)
            continue
        alpha, beta = 1.0 - g / 2.0, np.sqrt(g * (4.0 - g)) / 2.0
        end = a * alpha
        end += beta * b
        capped = v.cap >= alpha
        if capped.any():
            end = np.where(capped, c, end)
        ends.append(end)
        slope = b * alpha  # f'(θ) with cos θ = alpha, sin θ = beta
        slope -= beta * a
        slopes.append(slope)
    peak = (slopes[0] >= 0) & (slopes[1] <= 0)
    trough = (slopes[0] < 0) & (slopes[1] > 0)
    ub = np.maximum(ends[0], ends[1])
    lb = np.minimum(ends[0], ends[1], out=ends[0])
    if peak.any() or trough.any():
        r = a * a
        r += b * b
        np.sqrt(r, out=r)
        np.maximum(ub, r, out=ub, where=peak)
        np.negative(r, out=r)
        np.copyto(lb, r, where=trough)
    if not v.moves.all():
        ub = np.where(v.moves, ub, a)
        lb = np.where(v.moves, lb, a)
    return ub, lb


def _kth(s: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest along the last axis (-inf where there are fewer than k)."""
    if s.shape[-1] < k:
        return np.full(s.shape[:-1], -np.inf)
    return s.max(axis=-1) if k == 1 else -np.partition(-s, k - 1, axis=-1)[..., k - 1]


def _buckets(counts: np.ndarray) -> list[np.ndarray]:
    """Group queries by candidate count (powers of two), so padding at most doubles the work."""
    key = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    return [np.flatnonzero(key == b) for b in np.unique(key)]


class _RangeEvaluator:
    """The objective at any γ of ``gammas`` (one contiguous range), candidates prepared once.

    Per query only the records that can enter its top k at some γ of the range are scored: a
    record is left out when its best possible score over the range stays below the k-th best
    score guaranteed at every γ of the range (records' worst scores and the constants). Queries
    are grouped by how many candidates they keep, and a block of γ values costs a few
    element-wise operations per group.
    """

    def __init__(
        self, method: str, objective: Objective, v: _Validation, gammas: np.ndarray
    ) -> None:
        self.method, self.objective, self.nv = method, objective, v.const.shape[0]
        relmask = v.rel_gain > 0
        k = v.const.shape[1]
        g_lo, g_hi = (float(gammas.min()), float(gammas.max())) if gammas.size else (0.0, 0.0)
        keep = np.zeros_like(relmask)
        rel_keep = np.zeros_like(relmask)
        # Query blocks keep the temporaries small (cache-resident, and reused by the allocator).
        step = max(1, 262_144 // max(relmask.shape[1], 1))
        for start in range(0, self.nv, step):
            blk = slice(start, start + step)
            ub, lb = _bounds(method, v, g_lo, g_hi, blk)
            rel, moves = relmask[blk], v.moves[None, :]
            # The k-th best score that is guaranteed at every γ: from the records' lower bounds
            # (records that never move and answer nothing are in the constants already) and the
            # constants. A record whose best stays below it never enters the top k.
            sure = np.where(rel | moves, lb, -np.inf)
            floor_k = _kth(np.concatenate([sure, v.const[blk]], axis=1), k)[:, None]
            can_enter = (ub >= floor_k) & (ub > v.const[blk, -1:])
            keep[blk] = ~rel & moves & can_enter
            rel_keep[blk] = rel & (ub >= floor_k)
        self.groups = []
        for qs in _buckets(np.maximum(rel_keep.sum(axis=1), keep.sum(axis=1))):
            rc, nc = _gather(v, rel_keep[qs], method, qs), _gather(v, keep[qs], method, qs)
            self.groups.append((_subset(v, qs), rc, nc))

    def scores(self, gammas: np.ndarray) -> np.ndarray:
        """Summed (not averaged) objective over the queries at each γ."""
        out = np.zeros(gammas.size, dtype=np.float64)
        for sub, rc, nc in self.groups:
            pos = 0
            for blk in _gamma_blocks(gammas, rc.a.size + nc.a.size + sub.const.size):
                rel_s = _score_candidates(self.method, rc, blk)
                non_s = _score_candidates(self.method, nc, blk)
                vals = _objective_values(self.objective, sub, rc.gains, rel_s, non_s)
                out[pos : pos + blk.size] += vals.sum(axis=1)
                pos += blk.size
        return out


class _GridEvaluator:
    """The objective at any γ of ``gammas_all``, which is cut into ``ranges`` contiguous ranges.

    Each range gets its own candidates (a narrow range keeps far fewer: bounds over it are
    tight), prepared the first time one of its γ values is asked for.
    """

    def __init__(
        self,
        method: str,
        objective: Objective,
        v: _Validation,
        gammas_all: np.ndarray,
        ranges: int = 1,
    ) -> None:
        self.method, self.objective, self.v = method, objective, v
        self.nv = v.const.shape[0]
        self.grid = np.unique(np.asarray(gammas_all, dtype=np.float64))
        n = max(1, min(int(ranges), self.grid.size))
        self.cuts = [part for part in np.array_split(self.grid, n) if part.size]
        self.uppers = np.array([part[-1] for part in self.cuts])
        self.parts: dict[int, _RangeEvaluator] = {}

    def scores(self, gammas: np.ndarray) -> np.ndarray:
        gammas = np.asarray(gammas, dtype=np.float64)
        if gammas.size and (gammas.min() < self.grid[0] or gammas.max() > self.grid[-1]):
            msg = "γ outside the evaluator's grid"  # internal: callers ask for grid points only
            raise ValueError(msg)
        out = np.zeros(gammas.size, dtype=np.float64)
        which = np.minimum(np.searchsorted(self.uppers, gammas), len(self.cuts) - 1)
        for r in np.unique(which).tolist():
            if r not in self.parts:
                self.parts[r] = _RangeEvaluator(self.method, self.objective, self.v, self.cuts[r])
            sel = np.flatnonzero(which == r)
            out[sel] = self.parts[r].scores(gammas[sel])
        mean: np.ndarray = out / max(self.nv, 1)
        return mean


# Above this many (validation queries × fitted records), the fit works in float32.
_FLOAT32_ABOVE = 1_000_000

# Rows whose norm is within this of 1 count as unit vectors and are not divided (fit()).
_UNIT_TOL = 1e-6


def _ranges(method: str, gammas: np.ndarray) -> int:
    """How many γ ranges to prepare candidates for. NUDGE-N's grid is narrow (0 to 0.5): one
    range prunes well. NUDGE-M's candidate γ values follow the interval ends, which spread far
    (γ up to 10 or more on NFCorpus): bounds over 8 narrower ranges prune far more (1.7x faster
    there, same curve)."""
    return 8 if method == "nudge-m" and gammas.size > 16 else 1


def _grid_search(
    method: str, objective: Objective, v: _Validation, gammas: np.ndarray
) -> tuple[float, np.ndarray]:
    """Evaluate the objective at every γ of ``gammas``; return the best (smallest among ties)."""
    scores = _GridEvaluator(method, objective, v, gammas, ranges=_ranges(method, gammas)).scores(
        gammas
    )
    best = int(np.argmax(scores))  # first maximum: the smallest γ among ties
    return float(gammas[best]), scores


def _coarse_to_fine(
    method: str, objective: Objective, v: _Validation, fine: np.ndarray, stride: int = 8
) -> tuple[float, np.ndarray, np.ndarray]:
    """Best γ of the ``fine`` grid, found by evaluating every ``stride``-th point, then every
    fine point within one coarse step of each coarse maximum. Returns (γ, γs tried, scores)."""
    ev = _GridEvaluator(method, objective, v, fine, ranges=_ranges(method, fine))
    coarse_idx = np.unique(np.concatenate([np.arange(0, fine.size, stride), [fine.size - 1]]))
    coarse = ev.scores(fine[coarse_idx])
    tops = coarse_idx[coarse >= coarse.max() - 1e-12]
    near = np.zeros(fine.size, dtype=bool)
    for t in tops:
        near[max(t - stride, 0) : t + stride + 1] = True
    near[coarse_idx] = False
    refine_idx = np.flatnonzero(near)
    idx = np.concatenate([coarse_idx, refine_idx])
    scores = np.concatenate([coarse, ev.scores(fine[refine_idx])])
    order = np.argsort(idx)
    idx, scores = idx[order], scores[order]
    return float(fine[idx[_prefer_coarse(idx, scores, coarse_idx)]]), fine[idx], scores


def _prefer_coarse(idx: np.ndarray, scores: np.ndarray, coarse_idx: np.ndarray) -> int:
    """Position of the best score; ties go to the smallest coarse point, then the smallest γ.

    A fine point wins only when it scores strictly better than every coarse point. On a plateau
    of equal validation scores the smallest fine γ sits right on the plateau's edge, the least
    robust choice; the coarse grid (the paper's) keeps a margin of up to one fine step per tie.
    """
    tied = scores >= scores.max() - 1e-12
    on_coarse = tied & np.isin(idx, coarse_idx)
    return int(np.argmax(on_coarse)) if on_coarse.any() else int(np.argmax(tied))


def _subset(v: _Validation, qs: np.ndarray) -> _Validation:
    """The constant scores and ideal DCG of queries ``qs`` (all the objective reads from ``v``)."""
    empty = np.zeros((0, 0))
    return _Validation(
        a=empty,
        b=None,
        c=empty,
        moves=v.moves,
        cap=v.cap,
        rel_gain=empty,
        const=v.const[qs],
        idcg=v.idcg[qs],
    )


def _m_envelope_lines(v: _Validation) -> tuple[np.ndarray, np.ndarray]:
    """Per validation query, the lines that can lead its ranking at some γ >= 0.

    Scores are lines s_i(γ) = a_i + γ c_i (records, and the best constant with c = 0). A line
    that another beats in both intercept and slope is never strictly ahead of it for γ >= 0, so
    only the Pareto front in (a, c) can rank first; a record "first" against the front is first
    against all. Returns ``(a, c)`` of shape ``(nv, w)``, padded with a = -inf, c = 0.
    """
    nv = v.a.shape[0]
    c_eff = np.where(v.moves[None, :], v.c, 0.0)
    a_all = np.concatenate([v.a, v.const[:, :1].astype(v.a.dtype)], axis=1)
    c_all = np.concatenate([c_eff, np.zeros((nv, 1), dtype=c_eff.dtype)], axis=1)
    r = np.arange(nv)
    # The front lies in the box between the best-intercept line and the steepest line.
    ia, ic = a_all.argmax(axis=1), c_all.argmax(axis=1)
    box = (a_all >= a_all[r, ic][:, None]) & (c_all >= c_all[r, ia][:, None])
    qi, si = np.nonzero(box)
    a_b, c_b = a_all[qi, si].astype(np.float64), c_all[qi, si].astype(np.float64)
    order = np.lexsort((-c_b, -a_b, qi))  # per query: intercept down, then slope down
    qi, a_b, c_b = qi[order], a_b[order], c_b[order]
    # Running best slope per query (|c| <= ||q|| keeps queries apart); keep a line unless an
    # earlier one (intercept >= its own) is steeper. A small tolerance keeps near-ties: a
    # superset of the front gives the same intervals.
    span = 2.0 * float(np.abs(c_b).max(initial=0.0)) + 1.0
    key = c_b + span * qi
    prev = np.concatenate([[-np.inf], np.maximum.accumulate(key)[:-1]])
    keep = key >= prev - 1e-9 * span
    qi, a_b, c_b = qi[keep], a_b[keep], c_b[keep]
    counts = np.bincount(qi, minlength=nv)
    width = max(int(counts.max(initial=0)), 1)
    pos = np.arange(qi.size) - np.repeat(np.cumsum(counts) - counts, counts)
    la = np.full((nv, width), -np.inf)
    lc = np.zeros((nv, width))
    la[qi, pos], lc[qi, pos] = a_b, c_b
    return la, lc


def _m_intervals(v: _Validation, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NUDGE-M: for every (validation query, answer x), the γ >= 0 where x ranks first.

    Returns ``(lo, hi, query)`` for the non-empty intervals.

    Scores are linear in γ, s_i(γ) = a_i + γ c_i, so "x first" is an intersection of half-lines.
    Competitors are every other record, the query's other answers included (as in the paper),
    and the best constant; only those on the upper envelope's candidate front can bind.
    """
    qi, xi = np.nonzero(v.rel_gain > 0)
    la, lc = _m_envelope_lines(v)
    ax = v.a[qi, xi].astype(np.float64)
    cx = np.where(v.moves[xi], v.c[qi, xi], 0.0).astype(np.float64)
    los: list[np.ndarray] = []
    his: list[np.ndarray] = []
    who: list[np.ndarray] = []
    step = max(1, chunk * 64 // la.shape[1])
    for start in range(0, qi.size, step):
        q = qi[start : start + step]
        sd = la[q] - ax[start : start + step, None]
        gd = lc[q] - cx[start : start + step, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = -sd / gd
        lo = np.max(np.where(gd < 0, ratio, -np.inf), axis=1)
        lo = np.maximum(lo, 0.0)
        hi = np.min(np.where(gd > 0, ratio, np.inf), axis=1)
        blocked = np.any((gd == 0) & (sd > 0), axis=1)
        ok = ~blocked & (hi >= lo)
        los.append(lo[ok])
        his.append(hi[ok])
        who.append(q[ok])
    if not los:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(los), np.concatenate(his), np.concatenate(who)


def _most_covered_point(lo: np.ndarray, hi: np.ndarray) -> float:
    """The γ where the most intervals overlap (its left end; 0 when none)."""
    if lo.size == 0:
        return 0.0
    vals = np.concatenate([lo, hi])
    signs = np.concatenate([np.ones(lo.size), -np.ones(hi.size)])
    uniq, inv = np.unique(vals, return_inverse=True)
    total = np.cumsum(np.bincount(inv, weights=signs, minlength=uniq.size))
    best = int(np.argmax(total))
    return float(uniq[best]) if total[best] > 0 else 0.0


def _m_curve_gammas(lo: np.ndarray, hi: np.ndarray, n: int = 200) -> np.ndarray:
    """γ values strictly inside the pieces between interval ends (never on an end, where two
    records tie): 0, the midpoints between consecutive ends, and one point past the last end."""
    ends = np.unique(np.concatenate([lo, hi[np.isfinite(hi)], [0.0]]))
    if ends.size > n:
        ends = np.unique(np.quantile(ends, np.linspace(0, 1, n)))
    mids = (ends[:-1] + ends[1:]) / 2.0
    tail = [ends[-1] * 1.25 + 1e-3]
    return np.unique(np.concatenate([[0.0], mids, tail]))


# ---------------------------------------------------------------------------------------------
# The public estimators
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Nudge:
    gamma: float | None = None
    gammas: Sequence[float] | None = None
    objective: Objective = "top1"
    refit: bool = False
    val_fraction: float = 0.2
    seed: int = 0
    chunk_size: int = 4096

    method: ClassVar[str] = ""
    _gamma_limit: ClassVar[float] = float("inf")

    def __post_init__(self) -> None:
        if self.objective != "top1" and not _NDCG.match(str(self.objective)):
            msg = f"objective must be 'top1' or 'ndcg@<k>' (e.g. 'ndcg@10'); received {self.objective!r}"
            raise ConfigError(msg)
        if _NDCG.match(str(self.objective)) and int(self.objective.split("@")[1]) < 1:
            msg = f"objective {self.objective!r}: k must be >= 1"
            raise ConfigError(msg)
        if self.gamma is not None:
            self._check_gamma(self.gamma, "gamma")
        if self.gammas is not None:
            g = np.asarray(self.gammas, dtype=np.float64)
            if g.ndim != 1 or g.size == 0:
                msg = f"gammas must be a non-empty 1-D sequence; received shape {g.shape}"
                raise ConfigError(msg)
            for x in g:
                self._check_gamma(float(x), "gammas")
        if not 0.0 < self.val_fraction < 1.0:
            msg = f"val_fraction must be in (0, 1); received {self.val_fraction}"
            raise ConfigError(msg)
        if self.chunk_size < 1:
            msg = f"chunk_size must be >= 1; received {self.chunk_size}"
            raise ConfigError(msg)

    def _check_gamma(self, g: float, name: str) -> None:
        if not np.isfinite(g) or g < 0 or g > self._gamma_limit:
            msg = f"{name} must be in [0, {self._gamma_limit}] for {self.method}; received {g}"
            raise ConfigError(msg)

    # -------------------------------------------------------------- public API
    @property
    def unmoved_k(self) -> int:
        """How many best unmoved scores per validation query γ selection needs."""
        m = _NDCG.match(str(self.objective))
        return int(m.group(1)) if m else 1

    def split(self, train: QuerySet) -> tuple[QuerySet, QuerySet]:
        """The (train, validation) split :meth:`fit` makes when ``val`` is not given."""
        return validation_split(train, self.val_fraction, seed=self.seed)

    def fit(
        self,
        embeddings: Any,
        train: QuerySet,
        val: QuerySet | None = None,
        *,
        out: np.ndarray | None = None,
    ) -> NudgeResult:
        """Fine-tune ``embeddings`` (N, d) on ``train``; choose γ on ``val``.

        Args:
            embeddings: Record vectors ``(N, d)``. They are normalised first (rows already
                within 1e-6 of unit length are taken as they are); the input is not modified
                (unless it is passed as ``out``).
            train: Training queries and their answer rows.
            val: Validation queries. If ``None`` and γ is not fixed, a seeded split of ``train``
                provides them (see :func:`~nudge_rag.core.split.validation_split`).
            out: Optional float32 ``(N, d)`` array that receives the result (and becomes
                ``result.embeddings``). Pass the input matrix itself to fine-tune in place
                without a second N × d matrix: at N = 1M, d = 384 that saves 1.5 GB and the
                time to fault in fresh memory. Every input row is checked (finite, non-zero)
                before anything is written.

        Returns:
            A :class:`NudgeResult` whose ``embeddings`` is the full fine-tuned matrix.
        """
        x = as_float32_matrix(embeddings, "embeddings")
        n, dim = x.shape
        if n == 0:
            msg = "embeddings has no rows: there are no records to fine-tune"
            raise ShapeError(msg)
        if out is not None:
            if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n, dim):
                got = (getattr(out, "dtype", type(out).__name__), getattr(out, "shape", None))
                msg = f"out must be a float32 array of shape {(n, dim)}; received {got}"
                raise ShapeError(msg)
            if not out.flags.writeable:
                msg = "out is read-only"
                raise ShapeError(msg)
        train, val = self._prepare(train, val, n, dim)
        fitted = self._fitted_rows(train, val)
        # Norms first, so that bad rows are refused before anything is written to ``out``.
        norms = np.empty(n, dtype=np.float32)
        for start in range(0, n, self.chunk_size):
            stop = min(start + self.chunk_size, n)
            norms[start:stop] = row_norms(x[start:stop], first_row=start)
        if out is None:
            out = np.empty_like(x)
        in_place = out is x or (out.ctypes.data == x.ctypes.data and out.strides == x.strides)
        if not in_place and np.may_share_memory(out, x):
            msg = "out overlaps the input without being the same array: pass the input itself or separate memory"
            raise ShapeError(msg)
        acc = None
        if self._selects(train) and val is not None and len(val):
            acc = UnmovedTopK(val.embeddings, fitted, self.unmoved_k, normalize=False)
        for start in range(0, n, self.chunk_size):
            stop = min(start + self.chunk_size, n)
            nrm = norms[start:stop]
            if np.all(np.abs(nrm - 1.0) <= _UNIT_TOL):
                # Already unit length (most embedding models normalise): used as is. Dividing
                # would change them by under 1e-6, below a float32 dot product's own rounding.
                page = out[start:stop]
                if not in_place:
                    page[...] = x[start:stop]
            else:
                page = np.divide(x[start:stop], nrm[:, None], out=out[start:stop])
            if acc is not None:
                acc.update(page, first_row=start)
        unmoved = acc.result() if acc is not None else None
        res = self._fit_core(out[fitted], fitted, train, val, unmoved)
        if res.moved.size:
            out[res.moved] = res.moved_embeddings
        return NudgeResult(**{**res.__dict__, "embeddings": out})

    def fit_partial(
        self,
        records: Any,
        rows: Any,
        train: QuerySet,
        val: QuerySet | None,
        unmoved: BestUnmovedScores | None,
        *,
        n_records: int | None = None,
    ) -> NudgeResult:
        """Fit from the records that matter plus precomputed best scores of all the others.

        For callers that cannot hold all N vectors (a vector store read page by page): pass the
        vectors of every record that a training or validation query answers (``rows`` = their
        global row numbers, see :meth:`fitted_rows`), and ``unmoved`` from an
        :class:`~nudge_rag.core.topk.UnmovedTopK` pass over every other record with
        ``k = unmoved_k``. ``val`` must be given when γ is chosen (use :meth:`split` first).

        Returns:
            A :class:`NudgeResult` with ``embeddings=None``; ``moved`` holds global rows.
        """
        recs = as_float32_matrix(records, "records")
        rows_arr = np.asarray(rows, dtype=np.int64)
        if rows_arr.ndim != 1 or rows_arr.size != recs.shape[0]:
            msg = f"rows must give one global row per record: {rows_arr.shape} vs {recs.shape[0]} records"
            raise ShapeError(msg)
        if np.unique(rows_arr).size != rows_arr.size:
            msg = "rows must not repeat a record"
            raise ShapeError(msg)
        n = n_records if n_records is not None else int(rows_arr.max(initial=-1)) + 1
        train.check_records(n, recs.shape[1])
        if self._selects(train) and val is None:
            msg = "fit_partial needs val= to choose γ (split train with .split() first) or a fixed gamma"
            raise ConfigError(msg)
        if val is not None:
            val.check_records(n, recs.shape[1])
        need = self._fitted_rows(train, val)
        order = np.argsort(rows_arr)
        pos = np.searchsorted(rows_arr[order], need)
        if need.size and (
            np.any(pos >= rows_arr.size)
            or np.any(rows_arr[order][np.minimum(pos, rows_arr.size - 1)] != need)
        ):
            missing = need[
                (pos >= rows_arr.size)
                | (rows_arr[order][np.minimum(pos, rows_arr.size - 1)] != need)
            ]
            msg = f"records are missing {missing.size} rows that queries answer (e.g. row {int(missing[0])})"
            raise ShapeError(msg)
        recs_s = (
            normalize_rows(recs[order[pos]])
            if need.size
            else np.zeros((0, recs.shape[1]), np.float32)
        )
        if unmoved is not None and val is not None and unmoved.scores.shape[0] != len(val):
            msg = f"unmoved scores have {unmoved.scores.shape[0]} rows for {len(val)} validation queries"
            raise ShapeError(msg)
        return self._fit_core(recs_s, need, train, val, unmoved)

    def fitted_rows(self, train: QuerySet, val: QuerySet | None) -> np.ndarray:
        """Global rows scored exactly: every answer of a training or validation query."""
        return self._fitted_rows(train, val)

    # -------------------------------------------------------------- internals
    def _select(
        self, mv: _Moves, s_rows: np.ndarray, val: QuerySet, unmoved: BestUnmovedScores | None
    ) -> tuple[float, ValidationCurve]:
        raise NotImplementedError

    def _selects(self, train: QuerySet) -> bool:
        return self.gamma is None and len(train) > 0

    def _prepare(
        self, train: QuerySet, val: QuerySet | None, n: int, dim: int
    ) -> tuple[QuerySet, QuerySet | None]:
        if not isinstance(train, QuerySet):
            msg = f"train must be a QuerySet; received {type(train).__name__}"
            raise ConfigError(msg)
        train.check_records(n, dim)
        if val is not None:
            if not isinstance(val, QuerySet):
                msg = f"val must be a QuerySet or None; received {type(val).__name__}"
                raise ConfigError(msg)
            val.check_records(n, dim)
        elif self._selects(train):
            train, val = self.split(train)
        return train, val

    @staticmethod
    def _fitted_rows(train: QuerySet, val: QuerySet | None) -> np.ndarray:
        parts = [train.rows] + ([val.rows] if val is not None else [])
        return np.unique(np.concatenate(parts)).astype(np.int64)

    def _moves(self, d: np.ndarray, g: np.ndarray) -> _Moves:
        gnorm = np.sqrt(np.einsum("ij,ij->i", g, g))
        ghat = np.divide(g, gnorm[:, None], out=np.zeros_like(g), where=gnorm[:, None] > 0)
        return _Moves(d=d, moves=gnorm > 0, ghat=ghat, u=None, cap=None, gnorm=gnorm)

    def _fit_core(
        self,
        recs_s: np.ndarray,
        s_rows: np.ndarray,
        train: QuerySet,
        val: QuerySet | None,
        unmoved: BestUnmovedScores | None,
    ) -> NudgeResult:
        """Everything after the pass over unmoved records; ``recs_s`` are unit rows ``s_rows``."""
        s = s_rows.size
        # Large problems work in float32 (as the authors' package does throughout): the
        # element-wise passes over (queries × fitted records) and (fitted records × d) run 2x
        # faster; unit vectors carry ~1e-7. Small ones keep float64 for exact comparisons.
        n_val = len(val) if val is not None else 0
        work = np.float32 if n_val * s > _FLOAT32_ABOVE else np.float64
        d = recs_s.astype(work)
        loc_train = np.searchsorted(s_rows, train.rows)
        mv = self._moves(d, _gradient(loc_train, train, s, dtype=work))
        curve: ValidationCurve | None = None
        if self.gamma is not None:
            gamma = float(self.gamma)
        elif len(train) == 0:
            gamma = 0.0
        else:
            assert val is not None
            gamma, curve = self._select(mv, s_rows, val, unmoved)
        n_train, n_val = len(train), len(val) if val is not None else 0
        if self.refit and val is not None and len(val) and gamma > 0:
            both = QuerySet.concat(train, val)
            mv = self._moves(d, _gradient(np.searchsorted(s_rows, both.rows), both, s, dtype=work))
            n_train = len(both)
        if gamma > 0 and mv.moves.any():
            moved_local = np.flatnonzero(mv.moves)
            new = _new_vectors(self.method, mv, gamma)
        else:
            moved_local = np.zeros(0, dtype=np.int64)
            new = np.zeros((0, d.shape[1]), dtype=np.float32)
        logger.info(
            "%s: γ=%.4g, %d records moved (%d training, %d validation queries)",
            self.method,
            gamma,
            moved_local.size,
            n_train,
            n_val,
        )
        return NudgeResult(
            method=self.method,
            gamma=gamma,
            moved=s_rows[moved_local],
            moved_embeddings=new,
            embeddings=None,
            curve=curve,
            objective=str(self.objective),
            n_train=n_train,
            n_val=n_val,
            refit=bool(self.refit and n_train > len(train)),
        )

    def _validation(
        self, mv: _Moves, s_rows: np.ndarray, val: QuerySet, unmoved: BestUnmovedScores | None
    ) -> _Validation:
        q = val.embeddings
        big = mv.d.dtype == np.float32
        if big:
            # Large problems: float32 scores (BLAS and the element-wise passes over the
            # (queries × fitted records) matrices run 2-3x faster); unit vectors carry ~1e-7.
            a = q @ mv.d.T
            c = q @ mv.ghat.T
        else:
            a = q.astype(np.float64) @ mv.d.T
            c = q.astype(np.float64) @ mv.ghat.T
        b = None
        if mv.u is not None:
            assert mv.cap is not None and mv.perp is not None
            # u = (Ĝ - cap·d) / ||Ĝ - cap·d||: q·u follows from q·Ĝ and q·d, no third product.
            safe = np.where(mv.moves, mv.perp, 1.0)
            b = np.where(mv.moves, (c - mv.cap.astype(a.dtype) * a) / safe.astype(a.dtype), 0.0)
            b = b.astype(a.dtype, copy=False)
        nv, s = a.shape
        rel = np.zeros((nv, s), dtype=np.float32 if big else np.float64)
        rel[val.query_of_answer, np.searchsorted(s_rows, val.rows)] = val.gains
        k = self.unmoved_k
        const = (
            unmoved.scores.astype(np.float64) if unmoved is not None else np.full((nv, k), -np.inf)
        )
        if const.shape[1] < k:
            msg = f"unmoved scores keep {const.shape[1]} per query; objective {self.objective} needs {k}"
            raise ShapeError(msg)
        const = const[:, :k]
        # Records in S that never move and do not answer the query are constants too.
        if s and not np.all(mv.moves):
            still = np.flatnonzero(~mv.moves)
            fixed_non = np.where(rel[:, still] == 0, a[:, still], -np.inf)
            s_still = still.size
            if k == 1:
                const = np.maximum(const, fixed_non.max(axis=1, keepdims=True))
            else:
                kk = min(k, s_still)
                top = -np.partition(-fixed_non, kk - 1, axis=1)[:, :kk]
                const = -np.sort(-np.concatenate([const, top], axis=1), axis=1)[:, :k]
        idcg = np.zeros(nv)
        if k > 1 or self.objective != "top1":
            disc = 1.0 / np.log2(np.arange(2, k + 2))
            for i in range(nv):
                g = np.sort(val.answer_gains(i))[::-1][:k]
                idcg[i] = g @ disc[: g.size]
        return _Validation(
            a=a, b=b, c=c, moves=mv.moves, cap=mv.cap, rel_gain=rel, const=const, idcg=idcg
        )


@dataclass(frozen=True, kw_only=True)
class NudgeN(_Nudge):
    """NUDGE-N: move each record within ``||d' - d||² <= γ`` on the unit sphere.

    Output vectors stay unit-norm, so cosine, dot product and L2 rank alike: safe for every vector
    store. γ is picked on validation queries over ``gammas`` (default: 0 to 0.5 in steps of 0.0025,
    searched coarse to fine: every 8th point, then every point near the coarse maxima; the
    authors' package tries 0 to 0.48 in steps of 0.02). Each γ costs only element-wise work on
    precomputed scores of the records that can move. An explicit ``gammas`` is searched in full.

    Example:
        >>> docs = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
        >>> train = QuerySet(np.array([[0, 1, 0.2]], np.float32), [[2]])
        >>> res = NudgeN(gamma=0.5).fit(docs, train)
        >>> res.moved.tolist(), np.round(res.embeddings[2].astype(float), 3).tolist()
        ([2], [0.0, 0.661, 0.75])

    Args:
        gamma: Fix γ (in [0, 4]) and skip selection.
        gammas: Candidate γ values for selection.
        objective: ``"top1"`` (the paper: top-1 accuracy on validation) or ``"ndcg@k"``.
        refit: After choosing γ, fit the move on training + validation queries together.
        val_fraction: Share of training queries held out when ``val`` is not given.
        seed: Seed of that split.
        skip_opposed: Leave records whose training queries point away from them (G·d < 0)
            unmoved, as the authors' package does.
        chunk_size: Records scored per block in the pass over unmoved records.
    """

    skip_opposed: bool = True
    method: ClassVar[str] = "nudge-n"
    _gamma_limit: ClassVar[float] = 4.0
    DEFAULT_GAMMAS: ClassVar[np.ndarray] = np.round(np.arange(0, 201) * 0.0025, 6)

    def _moves(self, d: np.ndarray, g: np.ndarray) -> _Moves:
        base = super()._moves(d, g)
        gnorm = base.gnorm
        assert gnorm is not None
        gd = np.einsum("ij,ij->i", g, d)
        perp = g - gd[:, None] * d
        pnorm = np.sqrt(np.einsum("ij,ij->i", perp, perp))
        # G (nearly) parallel to d cannot turn it; the float32 path rounds at ~1e-7.
        tol = 1e-9 if d.dtype == np.float64 else 1e-6
        moves = base.moves & (pnorm > tol * gnorm)
        if self.skip_opposed:
            moves &= gd >= 0
        u = np.divide(perp, pnorm[:, None], out=perp, where=moves[:, None])
        u[~moves] = 0.0
        cap = np.divide(gd, gnorm, out=np.zeros_like(gd), where=gnorm > 0)  # d·Ĝ
        perp_hat = np.divide(pnorm, gnorm, out=np.zeros_like(pnorm), where=gnorm > 0)
        return _Moves(d=d, moves=moves, ghat=base.ghat, u=u, cap=cap, perp=perp_hat)

    def _select(
        self, mv: _Moves, s_rows: np.ndarray, val: QuerySet, unmoved: BestUnmovedScores | None
    ) -> tuple[float, ValidationCurve]:
        v = self._validation(mv, s_rows, val, unmoved)
        if self.gammas is None:
            # The default fine grid, searched coarse to fine: every 8th point (the paper's
            # 0.02 step), then the fine points around each coarse maximum.
            gamma, tried, scores = _coarse_to_fine(
                self.method, str(self.objective), v, self.DEFAULT_GAMMAS.astype(np.float64)
            )
            return gamma, ValidationCurve(tried, scores, str(self.objective), len(val))
        gammas = np.unique(np.asarray(self.gammas, dtype=np.float64))
        gamma, scores = _grid_search(self.method, str(self.objective), v, gammas)
        return gamma, ValidationCurve(gammas, scores, str(self.objective), len(val))


@dataclass(frozen=True, kw_only=True)
class NudgeM(_Nudge):
    """NUDGE-M: move each record by at most γ, ``d' = d + γ Ĝ``.

    Output vectors are not unit-norm: search them by inner product only (a cosine or L2 store
    would silently change what NUDGE-M computed). With the paper's objective (``"top1"``), γ is
    exact: per validation query and answer, the γ interval where that answer ranks first is
    computed in closed form, and γ is the left end of the region most intervals cover. With
    ``"ndcg@k"``, or when ``gammas`` is given, the candidates are searched instead.

    Args: as :class:`NudgeN` (γ may be any value >= 0).
    """

    method: ClassVar[str] = "nudge-m"

    def _select(
        self, mv: _Moves, s_rows: np.ndarray, val: QuerySet, unmoved: BestUnmovedScores | None
    ) -> tuple[float, ValidationCurve]:
        v = self._validation(mv, s_rows, val, unmoved)
        obj = str(self.objective)
        if self.gammas is not None:
            gammas = np.unique(np.asarray(self.gammas, dtype=np.float64))
            gamma, scores = _grid_search(self.method, obj, v, gammas)
            return gamma, ValidationCurve(gammas, scores, obj, len(val))
        lo, hi, who = _m_intervals(v)
        if obj == "top1":
            # The curve needs no scoring: a query is right at γ when one of its answers' "ranks
            # first" intervals covers γ; the curve's points lie strictly between interval ends.
            # Count queries, not intervals: duplicate answers cover the same γ. Like γ selection,
            # this counts an answer that ties a duplicate non-answer at every γ as first.
            gammas = _m_curve_gammas(lo, hi, n=32)
            inside = (lo[:, None] <= gammas[None, :]) & (gammas[None, :] <= hi[:, None])
            hit = np.zeros((len(val), gammas.size), dtype=bool)
            np.logical_or.at(hit, who, inside)
            scores = hit.sum(axis=0) / max(len(val), 1)
            return _most_covered_point(lo, hi), ValidationCurve(gammas, scores, obj, len(val))
        # NDCG changes wherever any two scores cross; search between the interval ends.
        gammas = _m_curve_gammas(lo, hi, n=160)
        gamma, scores = _grid_search(self.method, obj, v, gammas)
        return gamma, ValidationCurve(gammas, scores, obj, len(val))
