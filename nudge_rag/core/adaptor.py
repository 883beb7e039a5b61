"""A query-side linear adaptor trained in numpy: ``q' = W q / ||W q||``, stored vectors untouched.

NUDGE moves record vectors towards the training queries that point to them; it cannot help a
query about a record no training query points to, nor a second, differently worded question
about a record it did move ("sister" questions). A linear map on the query side is global: what
it learns about how questions relate to chunks (the LLM's question style, the vocabulary of the
domain) carries over to every record. It is what LlamaIndex's ``EmbeddingAdapterFinetuneEngine``
trains with torch; here it is plain numpy, which makes the loss over the *whole* corpus (every
record a negative, not just those of the batch) cheap at the corpus sizes a finetuner sees.

Training: ``W`` starts at the identity. Each training query ``j`` has a target distribution over
records, proportional to the grades of its answers; the loss is the cross-entropy between it and
``softmax(scale · D u_j)`` over every record (``u_j`` the unit adapted query), plus
``weight_decay · ||W - I||²`` (keeps ``W`` near the identity, i.e. near the pre-trained model).
Adam, mini-batches in a seeded order. After every epoch the validation NDCG@k is measured, and the
best ``W`` seen (the identity included) is returned: with no signal, the identity comes back.

Example:
    >>> rng = np.random.default_rng(0)
    >>> docs = rng.normal(size=(50, 8)); docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    >>> q = docs[:40] + 0.1 * rng.normal(size=(40, 8))
    >>> ad = fit_adaptor(q, docs, [(j, [j]) for j in range(30)], [(j, [j]) for j in range(30, 40)])
    >>> ad.transform(q[:2]).shape
    (2, 8)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.core.queries import QuerySet, as_float32_matrix
from nudge_rag.errors import ConfigError, DimensionMismatchError, ShapeError

__all__ = ["Adaptor", "AdaptorConfig", "fit_adaptor", "ndcg_at_k"]

logger = logging.getLogger(__name__)

Pairs = Sequence[tuple[int, Iterable[int] | Mapping[int, float]]]
_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class AdaptorConfig:
    """How :func:`fit_adaptor` trains.

    Args:
        lr: Adam step size.
        max_epochs: Epochs at most (one pass over the training queries each).
        batch_size: Queries per step (0: the whole training set, one step per epoch).
        scale: Inverse temperature of the softmax over cosine scores (20, as
            sentence-transformers' ``MultipleNegativesRankingLoss``).
        weight_decay: ``λ`` of ``λ ||W - I||²``; pulls ``W`` towards the identity.
        negatives: ``"covered"`` (default): every record some training query points to (records
            no query points to take no part in training, so the map is not taught to push every
            query away from them: on the 10-K cross protocol corpus-wide negatives lose 3 points
            on the untrained company, covered ones gain 1.6); ``"corpus"``: every record;
            ``"batch"``: only the answers of the other queries of the batch (LlamaIndex's
            in-batch negatives).
        patience: Stop after this many epochs without a better validation score.
        k: Cut-off of the validation NDCG.
        min_gain: The validation NDCG must beat the identity's by more than this for ``W`` to
            differ from the identity.
        seed: Seed of the mini-batch order (and of the validation split when none is given).
        val_fraction: Share of training queries held out when no validation pairs are given.
        anchor_weight: Weight of the anchor term (see ``anchors`` of :func:`fit_adaptor`).
    """

    lr: float = 1e-3
    max_epochs: int = 100
    batch_size: int = 64
    scale: float = 20.0
    weight_decay: float = 0.0
    negatives: str = "covered"
    patience: int = 20
    k: int = 10
    min_gain: float = 0.0
    seed: int = 0
    val_fraction: float = 0.2
    anchor_weight: float = 1.0

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "scale": self.scale}
        for name, v in positive.items():
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                msg = f"{name} must be a positive number; received {v!r}"
                raise ConfigError(msg)
        for name in ("max_epochs", "batch_size", "patience", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name != "k" else 1):
                msg = f"{name} must be a non-negative int (k: positive); received {v!r}"
                raise ConfigError(msg)
        if not (isinstance(self.anchor_weight, (int, float)) and self.anchor_weight >= 0):
            msg = f"anchor_weight must be >= 0; received {self.anchor_weight!r}"
            raise ConfigError(msg)
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            msg = f"weight_decay must be >= 0; received {self.weight_decay!r}"
            raise ConfigError(msg)
        if self.negatives not in ("corpus", "covered", "batch"):
            msg = f"negatives must be 'corpus', 'covered' or 'batch'; received {self.negatives!r}"
            raise ConfigError(msg)
        if not 0.0 < self.val_fraction < 1.0:
            msg = f"val_fraction must be in (0, 1); received {self.val_fraction!r}"
            raise ConfigError(msg)


@dataclass(frozen=True)
class Adaptor:
    """A linear map applied to query vectors: ``transform(q) = W q / ||W q||``.

    Attributes:
        weight: ``W``, ``(d, d)`` float32 (the identity: no change).
        epochs: Training epochs behind ``weight`` (0: the identity was kept).
        val_before: Validation NDCG@k with the identity.
        val_after: Validation NDCG@k with ``weight``.
        curve: Validation NDCG@k after each epoch (index 0: the identity).
        config: The training configuration, as a plain dict.
    """

    weight: np.ndarray
    epochs: int = 0
    val_before: float = float("nan")
    val_after: float = float("nan")
    curve: tuple[float, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, dim: int) -> Adaptor:
        """The adaptor that changes nothing."""
        return cls(np.eye(dim, dtype=np.float32))

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.weight, np.eye(self.dim, dtype=self.weight.dtype)))

    def transform(self, queries: Any) -> np.ndarray:
        """Adapted unit query vectors, ``(n, d)`` float32 (one vector ``(d,)`` gives ``(d,)``)."""
        q = np.asarray(queries, dtype=np.float32)
        single = q.ndim == 1
        q2 = q[None] if single else q
        if q2.ndim != 2 or q2.shape[1] != self.dim:
            msg = f"queries must be (n, {self.dim}); received shape {q.shape}"
            raise DimensionMismatchError(msg)
        out = q2 @ self.weight.T
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1.0)
        res: np.ndarray = out[0] if single else out
        return res

    def mix(self, alpha: float) -> Adaptor:
        """The partial map ``I + alpha (W - I)`` (0: identity, 1: this adaptor)."""
        eye = np.eye(self.dim, dtype=np.float32)
        w = eye + np.float32(alpha) * (self.weight - eye)
        return Adaptor(w.astype(np.float32), self.epochs, config={**self.config, "alpha": alpha})

    def to_dict(self) -> dict[str, Any]:
        """Everything but the weight, JSON-serialisable (the weight is :attr:`weight`)."""
        return {
            "format": _FORMAT,
            "dim": self.dim,
            "epochs": self.epochs,
            "val_before": self.val_before,
            "val_after": self.val_after,
            "curve": list(self.curve),
            "config": dict(self.config),
        }

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``adaptor.npy`` (the weight) and ``adaptor.json`` (the rest); no pickle."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / ".adaptor.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, self.weight, allow_pickle=False)
        os.replace(tmp, path / "adaptor.npy")
        tmpj = path / ".adaptor.json.tmp"
        tmpj.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        os.replace(tmpj, path / "adaptor.json")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Adaptor:
        """Read what :meth:`save` wrote."""
        path = Path(directory)
        meta = json.loads((path / "adaptor.json").read_text(encoding="utf-8"))
        w = np.load(path / "adaptor.npy", allow_pickle=False).astype(np.float32)
        if w.shape != (meta["dim"], meta["dim"]):
            msg = f"{path}: adaptor weight has shape {w.shape}, manifest says dim {meta['dim']}"
            raise ShapeError(msg)
        return cls(
            w,
            int(meta["epochs"]),
            float(meta["val_before"]),
            float(meta["val_after"]),
            tuple(meta["curve"]),
            dict(meta["config"]),
        )


# ---------------------------------------------------------------------------------------------
# Metrics (kept here: the core imports nothing outside itself)
# ---------------------------------------------------------------------------------------------
def ndcg_at_k(queries: np.ndarray, docs: np.ndarray, qs: QuerySet, k: int = 10) -> np.ndarray:
    """Per-query NDCG@k (graded gains, exact search by inner product over ``docs``)."""
    n = len(qs)
    out = np.zeros(n)
    if n == 0:
        return out
    kk = min(k, docs.shape[0])
    disc = 1.0 / np.log2(np.arange(2, kk + 2))
    q_of = qs.query_of_answer
    for s in range(0, n, 512):
        e = min(n, s + 512)
        sc = queries[s:e] @ docs.T
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(sc, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        rel = np.zeros(sc.shape)
        sel = (q_of >= s) & (q_of < e)
        rel[q_of[sel] - s, qs.rows[sel]] = qs.gains[sel]
        dcg = np.take_along_axis(rel, top, axis=1) @ disc
        ideal = -np.sort(-rel, axis=1)[:, :kk] @ disc
        out[s:e] = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _as_queryset(q: np.ndarray, pairs: Pairs, n_docs: int, name: str) -> QuerySet:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        msg = f"{name} must be a sequence of (query row, answers) pairs; received {type(pairs).__name__}"
        raise ConfigError(msg)
    rows: list[int] = []
    answers: list[Any] = []
    for i, item in enumerate(pairs):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            msg = f"{name}[{i}] must be a (query row, answers) pair; received {item!r:.60}"
            raise ConfigError(msg)
        r, ans = item
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < len(q):
            msg = f"{name}[{i}] names query row {r!r}; there are {len(q)} queries"
            raise ShapeError(msg)
        rows.append(int(r))
        answers.append(dict(ans) if isinstance(ans, Mapping) else list(ans))
    return QuerySet(q[rows] if rows else np.zeros((0, q.shape[1]), np.float32), answers,
                    n_records=n_docs, dim=q.shape[1])  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _targets(qs: QuerySet, idx: np.ndarray, cols: np.ndarray | None, n_cols: int) -> np.ndarray:
    """Target distributions ``(len(idx), n_cols)``: grades of each query's answers, summing to 1.

    ``cols`` maps record rows to columns (batch negatives); ``None``: columns are record rows.
    """
    t = np.zeros((idx.size, n_cols), dtype=np.float32)
    for b, j in enumerate(idx.tolist()):
        rows = qs.answer_rows(j)
        g = qs.answer_gains(j)
        c = rows if cols is None else cols[rows]
        keep = c >= 0
        np.add.at(t[b], c[keep], g[keep])
    s = t.sum(axis=1, keepdims=True)
    return t / np.where(s > 0, s, 1.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p: np.ndarray = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p


def _ce_grad(
    x: np.ndarray, u: np.ndarray, norm: np.ndarray, cand: np.ndarray, tgt: np.ndarray, scale: float
) -> np.ndarray:
    """Gradient in ``W`` of the mean cross-entropy between ``tgt`` and ``softmax(scale · cand u)``,
    where ``u = W x / ||W x||`` (``norm`` = ``||W x||``)."""
    dl = (_softmax(scale * (u @ cand.T)) - tgt) / x.shape[0]  # d loss / d logits
    du = scale * (dl @ cand)
    dz = (du - np.sum(du * u, axis=1, keepdims=True) * u) / norm
    grad: np.ndarray = dz.T @ x
    return grad


def fit_adaptor(
    queries: Any,
    doc_vectors: Any,
    train_pairs: Pairs,
    val_pairs: Pairs | None = None,
    config: AdaptorConfig | None = None,
    *,
    anchors: Any = None,
    on_epoch: Callable[[int, np.ndarray], None] | None = None,
    **overrides: Any,
) -> Adaptor:
    """Train a query-side linear adaptor; epochs chosen on validation NDCG@k.

    Args:
        queries: ``(n, d)`` query vectors (rows referenced by the pairs).
        doc_vectors: ``(N, d)`` record vectors (normalised here), the corpus searched.
        train_pairs: ``[(query row, [record row, ...] or {record row: grade}), ...]``.
        val_pairs: The same for validation queries; ``None``: a seeded random
            ``config.val_fraction`` of ``train_pairs`` is held out; empty (``[]``): no
            validation, exactly ``config.max_epochs`` epochs are trained and the last ``W`` is
            returned (to refit on every query once the epoch count was chosen).
        config: Training options (:class:`AdaptorConfig`); keyword ``overrides`` replace fields.
        anchors: ``(m, d)`` unlabelled query vectors whose rankings should not change (e.g. the
            vectors of records no training query points to, or past queries): each step adds
            ``config.anchor_weight`` times the mean KL divergence between their softmax over the
            records at the identity and under ``W`` (a batch of them per step).
        on_epoch: Called after every epoch with the epoch number and a copy of ``W`` (for
            diagnostics: e.g. scoring other query sets along the way).

    Returns:
        The :class:`Adaptor` of the best validation epoch (the identity when no epoch beats it by
        more than ``config.min_gain``).
    """
    if config is None:
        config = AdaptorConfig(**overrides)
    elif overrides:
        config = AdaptorConfig(**{**config.__dict__, **overrides})
    q = as_float32_matrix(queries, "queries")
    docs = _unit(as_float32_matrix(doc_vectors, "doc_vectors"))
    if docs.shape[1] != q.shape[1]:
        msg = f"query vectors have width {q.shape[1]} but record vectors have width {docs.shape[1]}"
        raise DimensionMismatchError(msg)
    d = q.shape[1]
    train = _as_queryset(q, train_pairs, docs.shape[0], "train_pairs")
    if val_pairs is None:
        n = len(train)
        perm = np.random.default_rng(config.seed).permutation(n)
        nv = round(config.val_fraction * n)
        if nv < 1 or nv >= n:
            return Adaptor.identity(d)
        val = train.subset(np.sort(perm[:nv]))
        train = train.subset(np.sort(perm[nv:]))
    else:
        val = _as_queryset(q, val_pairs, docs.shape[0], "val_pairs")
    cfg = dict(config.__dict__)
    eye = np.eye(d, dtype=np.float32)
    if len(train) == 0:
        return Adaptor(eye, config=cfg)
    anc = None
    if anchors is not None:
        anc = _unit(as_float32_matrix(anchors, "anchors"))
        if anc.shape[1] != d:
            msg = f"anchors have width {anc.shape[1]}; queries have width {d}"
            raise DimensionMismatchError(msg)
        if anc.shape[0] == 0 or config.anchor_weight == 0:
            anc = None
        cfg["n_anchors"] = 0 if anc is None else int(anc.shape[0])
    return _train(train, val if len(val) else None, docs, config, cfg, on_epoch, anc)


def _train(
    train: QuerySet,
    val: QuerySet | None,
    docs: np.ndarray,
    config: AdaptorConfig,
    cfg: dict[str, Any],
    on_epoch: Callable[[int, np.ndarray], None] | None,
    anchors: np.ndarray | None = None,
) -> Adaptor:
    d = train.dim
    eye = np.eye(d, dtype=np.float32)
    w = eye.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    b1, b2, eps = 0.9, 0.999, 1e-8
    rng = np.random.default_rng(config.seed)
    a_rng = np.random.default_rng([config.seed, 1])
    qtr = train.embeddings
    n = len(train)
    bs = n if config.batch_size == 0 else min(config.batch_size, n)
    cov_rows = np.unique(train.rows)
    cov_docs = docs[cov_rows]
    cov_cols = np.full(docs.shape[0], -1, dtype=np.int64)
    cov_cols[cov_rows] = np.arange(cov_rows.size)

    def val_score(weight: np.ndarray) -> float:
        if val is None:
            return float("nan")
        return float(ndcg_at_k(_unit(val.embeddings @ weight.T), docs, val, config.k).mean())

    start = val_score(w)
    curve = [start]
    best = (start, 0, w.copy())
    step = 0
    stale = 0
    for epoch in range(1, config.max_epochs + 1):
        order = rng.permutation(n)
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            x = qtr[idx]  # (b, d)
            z = x @ w.T
            norm = np.linalg.norm(z, axis=1, keepdims=True)
            norm = np.where(norm > 0, norm, 1.0)
            u = z / norm
            if config.negatives == "corpus":
                cand = docs
                tgt = _targets(train, idx, None, docs.shape[0])
            elif config.negatives == "covered":
                cand = cov_docs
                tgt = _targets(train, idx, cov_cols, cov_rows.size)
            else:
                rows = np.unique(np.concatenate([train.answer_rows(j) for j in idx.tolist()]))
                cand = docs[rows]
                cols = np.full(docs.shape[0], -1, dtype=np.int64)
                cols[rows] = np.arange(rows.size)
                tgt = _targets(train, idx, cols, rows.size)
            grad = _ce_grad(x, u, norm, cand, tgt, config.scale)
            if anchors is not None:
                a_idx = a_rng.choice(anchors.shape[0], min(bs, anchors.shape[0]), replace=False)
                xa = anchors[a_idx]
                za = xa @ w.T
                na = np.linalg.norm(za, axis=1, keepdims=True)
                na = np.where(na > 0, na, 1.0)
                p0 = _softmax(config.scale * (xa @ docs.T))  # the identity's distribution
                grad += config.anchor_weight * _ce_grad(xa, za / na, na, docs, p0, config.scale)
            if config.weight_decay:
                grad += (2.0 * config.weight_decay) * (w - eye)
            step += 1
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            mhat = m / (1 - b1**step)
            vhat = v / (1 - b2**step)
            w = (w - config.lr * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)
        score = val_score(w)
        curve.append(score)
        if on_epoch is not None:
            on_epoch(epoch, w.copy())
        if val is None:
            continue
        if score > best[0] + 1e-12:
            best = (score, epoch, w.copy())
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if val is None:
        logger.info("adaptor: %d epochs, no validation", config.max_epochs)
        return Adaptor(w, config.max_epochs, float("nan"), float("nan"), tuple(curve), cfg)
    if best[0] <= start + config.min_gain:
        logger.info("adaptor: no epoch beat the identity on validation (%.4f)", start)
        return Adaptor(eye, 0, start, start, tuple(curve), cfg)
    logger.info(
        "adaptor: epoch %d, validation NDCG@%d %.4f -> %.4f", best[1], config.k, start, best[0]
    )
    return Adaptor(best[2], best[1], start, best[0], tuple(curve), cfg)
