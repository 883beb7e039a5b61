"""``method="auto"``: the finetuner measures, on held-out questions, whether NUDGE-N on the
records, a query-side adaptor, both, or nothing serves new questions best, and applies that.

:class:`ChoosesMethod` is the part of :class:`~nudge_rag.NudgeEmbeddingFinetuner` that runs it
(the maths is in :mod:`nudge_rag.core.choose`); the store side (reading, the journal, writing,
revert) is the same as for a plain NUDGE fine-tune. The adaptor, when chosen, is kept in the
state generation that applies it: the retriever handed back embeds queries through it, and
``revert()`` drops it with the moved vectors.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag._faults import checkpoint
from nudge_rag.core import Adaptor, QuerySet, ValidationCurve, normalize_rows
from nudge_rag.core.choose import POOL, Choice, choose, hold_out, refit
from nudge_rag.errors import ConfigError, StateError
from nudge_rag.evaluation.metrics import MetricMeans, ranking_metrics
from nudge_rag.judged import TrainingPairs
from nudge_rag.reports import FinetuneReport
from nudge_rag.session import ADAPTOR_FILE, REPORT_K, StoreSession
from nudge_rag.state import FinetuneState, StateBackend

if TYPE_CHECKING:
    from pathlib import Path

    from nudge_rag.integrations import Pipeline
    from nudge_rag.stores import VectorStoreAdapter

__all__ = ["ChoosesMethod"]


class ChoosesMethod:
    """``method="auto"`` of the finetuner (it provides the attributes declared below)."""

    _adapter: VectorStoreAdapter
    _pipeline: Pipeline | None
    val_fraction: float
    seed: int
    lock_timeout: float | None
    method: str
    gamma: float | None
    max_chunks: int | None
    queries_per_chunk: int

    if TYPE_CHECKING:

        @property
        def state_path(self) -> Path: ...

        @property
        def state_backend(self) -> StateBackend: ...

        def _session(self) -> StoreSession: ...

        def _unmoved_mode(self) -> str: ...

        def _resolve(self) -> Pipeline: ...

    def _finetune_auto(
        self, pairs: TrainingPairs, q: np.ndarray, times: dict[str, float]
    ) -> FinetuneReport:
        """Hold out, read, fit every candidate, pick, refit on all, write: under the lock."""
        s_ids = sorted({i for _, ans in pairs for i in ans})
        pos = {i: r for r, i in enumerate(s_ids)}
        queries = QuerySet(q, [{pos[i]: g for i, g in ans.items()} for _, ans in pairs])
        session = self._session()
        ident, state_dir = session.identity, session.state_dir
        adapts = bool(self._pipeline is not None and self._pipeline.adapts_queries)
        with session.lock(self.lock_timeout):
            state = session.load_state()
            n_total = self._adapter.count()
            uncovered = 1.0 - len(s_ids) / max(n_total, 1)
            h = hold_out(
                queries, uncovered_share=uncovered, val_fraction=self.val_fraction, seed=self.seed
            )
            t = time.perf_counter()
            mode = self._unmoved_mode()
            reader = session.read_scan if mode == "scan" else session.read_by_id
            read = reader(s_ids, h.held, state, q.shape[1], REPORT_K, pool=POOL)
            times["read"] = time.perf_counter() - t
            checkpoint("finetune.read")

            t = time.perf_counter()
            unit = normalize_rows(read.s_vecs, name="stored vectors")
            assert read.pool is not None
            choice = choose(unit, h, read.pool, adaptor=adapts)
            new, adaptor = refit(unit, queries, choice)
            times["fit"] = time.perf_counter() - t
            checkpoint("finetune.fit")

            rows = np.flatnonzero(np.any(new != np.asarray(unit, dtype=np.float32), axis=1))
            moved_ids = [s_ids[r] for r in rows]
            c = choice.chosen
            gamma = c.gamma if moved_ids else 0.0
            t = time.perf_counter()
            restored = session.write(
                state,
                read,
                moved_ids,
                new[rows].astype(np.float64),
                pos,
                {
                    "gamma": gamma,
                    "method": "auto",
                    "chosen": c.name,
                    "objective": "ndcg@10",
                    "n_train": len(h.train),
                    "n_val": len(h.val),
                    "n_sentinel": len(h.sentinels),
                    "refit": True,
                    "model": self._pipeline.model_name if self._pipeline is not None else "",
                    "curve": _curve_dict(choice, len(h.val)),
                    "adaptor_epochs": adaptor.epochs if adaptor is not None else 0,
                },
                None if adaptor is None else {ADAPTOR_FILE: adaptor.weight},
            )
            times["write"] = time.perf_counter() - t
        note = choice.note
        if c.kind == "none":
            note = _join(
                note,
                "no candidate (NUDGE-N, a query-side adaptor, both) improved the held-out "
                "questions, so the store keeps its original vectors",
            )
        if moved_ids or restored:
            note = _join(note, session.identity_note())
        base = choice.baseline
        cands = {k.name: k.val_ndcg for k in [base, *choice.best_of_kind.values()] if k.kind}
        losses = (
            {
                k.name: k.sentinel_loss(base)[0]
                for k in choice.best_of_kind.values()
                if k.kind != "none"
            }
            if choice.sentinel_rule
            else {}
        )
        return FinetuneReport(
            method="auto",
            gamma=gamma,
            n_records=read.n_records,
            n_moved=len(moved_ids),
            moved_ids=moved_ids,
            n_train=len(h.train),
            n_val=len(h.val),
            curve=_curve(choice, len(h.val)),
            before=_metrics(base.ranked, h.val),
            after=_metrics(c.ranked, h.val),
            written=bool(moved_ids or restored),
            note=note,
            seconds=times,
            state_dir=str(state_dir),
            store_id=ident.key,
            adopted_ids=read.adopted,
            deleted_ids=read.deleted,
            restored_ids=restored,
            unmoved=mode,
            n_written=session.n_written,
            chosen=c.name,
            candidates=cands,
            sentinel_loss=losses,
            adaptor=adaptor is not None,
        )

    def _check_sample(self, n_chunks: int) -> None:
        """Refuse a ``max_chunks`` sample whose cost to the other chunks cannot be bounded.

        Records outside the sample get no question; NUDGE moves the sampled ones toward their
        questions, and questions about the others can then find the moved records first (on the
        10-K chunks: more than 10 points of NDCG@10 lost). ``method="auto"`` measures and bounds
        that loss with sentinel questions, which needs enough sampled chunks.
        """
        m = self.max_chunks
        if m is None or m >= n_chunks:
            return
        from nudge_rag.core.choose import MIN_SENTINELS, SENTINEL_FRACTION

        if self.method != "auto" or self.gamma is not None:
            msg = (
                f"max_chunks={m} writes questions for {m} of the {n_chunks} chunks; with "
                f"method={self.method!r}" + (f" and gamma={self.gamma}" if self.gamma else "")
                + " nothing bounds what the other chunks lose (their questions find the moved "
                "records first). Use method='auto' with no fixed gamma (it measures and bounds "
                "that loss), or max_chunks=None"
            )  # fmt: skip
            raise ConfigError(msg)
        need = -(-MIN_SENTINELS // max(1, round(SENTINEL_FRACTION * self.queries_per_chunk * 10)))
        need *= 10
        if m < need:
            msg = (
                f"max_chunks={m} samples too few of the {n_chunks} chunks to measure what the "
                f"others lose: at least {need} are needed at {self.queries_per_chunk} question(s) "
                f"per chunk ({MIN_SENTINELS} held-out questions about {SENTINEL_FRACTION:.0%} of "
                f"the sample). Pass max_chunks >= {need}, or max_chunks=None"
            )
            raise ConfigError(msg)

    def adaptor(self) -> Adaptor | None:
        """The query-side adaptor in force for this store (kept with its state), or None.

        Raises:
            StateError: The state says an adaptor is in force but its file is damaged.
        """
        state = FinetuneState.load(self.state_backend)
        if state is None or state.status not in ("applied", "unchanged"):
            return None
        if not state.has(ADAPTOR_FILE):
            return None
        weight = state.array(ADAPTOR_FILE)
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
            msg = f"{state.generation}: {ADAPTOR_FILE} has shape {weight.shape}, not (d, d)"
            raise StateError(msg)
        epochs = int(state.manifest.get("adaptor_epochs", 0))
        return Adaptor(weight.astype(np.float32), epochs)


def _join(a: str, b: str) -> str:
    return f"{a}\n{b}" if a and b else a or b


def _metrics(ranked: np.ndarray, val: QuerySet) -> MetricMeans | None:
    if not len(val) or ranked.shape[0] != len(val):
        return None
    return ranking_metrics(ranked, val.indptr, val.rows, val.gains, REPORT_K).mean()


def _curve(choice: Choice, n_val: int) -> ValidationCurve | None:
    d = _curve_dict(choice, n_val)
    if d is None:
        return None
    return ValidationCurve(
        np.asarray(d["gammas"]), np.asarray(d["scores"]), str(d["objective"]), n_val
    )


def _curve_dict(choice: Choice, n_val: int) -> dict[str, Any] | None:
    """Held-out NDCG@10 of NUDGE-N at each γ (γ = 0: nothing)."""
    pts = sorted(
        (c.gamma, c.val_ndcg)
        for c in choice.curve
        if c.kind == "nudge-n" and np.isfinite(c.val_ndcg)
    )
    if not pts or not n_val:
        return None
    gammas = [0.0] + [g for g, _ in pts]
    scores = [choice.baseline.val_ndcg] + [s for _, s in pts]
    return {"gammas": gammas, "scores": scores, "objective": "ndcg@10", "n_queries": n_val}
