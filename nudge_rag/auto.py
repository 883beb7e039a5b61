"""``method="auto"``: the finetuner measures, on held-out questions, whether NUDGE-N on the
records, a query-side adaptor, both, or nothing serves new questions best, and applies that.

Before the store is locked, a seeded sample of the records no training question points to is
drawn (ids first, then the sample's texts: memory is bounded by ``PROBE_CHUNKS``), and the
offline generator writes one pseudo-question per sampled record from its own words; the
pipeline's query embedding turns them into *probes*, which tell the choice what such records
lose (:mod:`nudge_rag.core.choose`).

:class:`ChoosesMethod` is the part of :class:`~nudge_rag.NudgeEmbeddingFinetuner` that runs it
(the maths is in :mod:`nudge_rag.core.choose`); the store side (reading, the journal, writing,
revert) is the same as for a plain NUDGE fine-tune. The adaptor, when chosen, is kept in the
state generation that applies it: the retriever handed back embeds queries through it, and
``revert()`` drops it with the moved vectors.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag._faults import checkpoint
from nudge_rag.core import Adaptor, QuerySet, ValidationCurve, normalize_rows
from nudge_rag.core.choose import POOL, PROBE_CHUNKS, Choice, choose, make_folds, refit
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

__all__ = ["ChoosesMethod", "Probes"]


@dataclass(frozen=True)
class Probes:
    """Pseudo-questions about a sample of the records no training question points to.

    Attributes:
        ids: The sampled records (one pseudo-question each), in the order of ``embeddings``.
        texts: The pseudo-questions.
        embeddings: ``(m, d)`` their query vectors (the pipeline's query-side embedding).
        n_untrained: Records of the store no training question points to.
        n_records: Records in the store.
    """

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray
    n_untrained: int
    n_records: int


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
    page_size: int

    if TYPE_CHECKING:

        @property
        def state_path(self) -> Path: ...

        @property
        def state_backend(self) -> StateBackend: ...

        def _session(self) -> StoreSession: ...

        def _unmoved_mode(self) -> str: ...

        def _resolve(self) -> Pipeline: ...

    async def _probes(self, pipe: Pipeline, pairs: TrainingPairs) -> Probes | None:
        """Pseudo-questions about a seeded sample of the untrained records (None: no texts).

        The sample is the ``PROBE_CHUNKS`` untrained ids with the smallest seeded hash (the same
        whatever order the store lists them in); only their texts are fetched.
        """
        from nudge_rag.querygen.offline import OfflineGenerator

        trained = {i for _, ans in pairs for i in ans}
        seed = str(self.seed).encode()

        def sample() -> tuple[dict[str, str], int, int]:
            heap: list[tuple[int, str]] = []  # (-priority, id): the smallest priorities kept
            n_un = n = 0
            for page in self._adapter.iter_pages(self.page_size, with_documents=False):
                for rid in page.ids:
                    n += 1
                    if rid in trained:
                        continue
                    n_un += 1
                    h = hashlib.blake2b(rid.encode(), digest_size=8, key=seed).digest()
                    item = (-int.from_bytes(h, "big"), rid)
                    if len(heap) < PROBE_CHUNKS:
                        heapq.heappush(heap, item)
                    elif item > heap[0]:
                        heapq.heapreplace(heap, item)
            ids = sorted(rid for _, rid in heap)
            texts: dict[str, str] = {}
            for start in range(0, len(ids), self.page_size):
                page = self._adapter.get(ids[start : start + self.page_size])
                for rid, text in zip(page.ids, page.texts, strict=True):
                    if text:
                        texts[rid] = text
            return texts, n_un, n

        texts, n_un, n = await asyncio.to_thread(sample)
        if not texts:
            return None
        written = OfflineGenerator().generate(texts, 1)
        ids = [rid for rid in texts if written.get(rid)]
        if not ids:
            return None
        q_texts = [written[rid][0] for rid in ids]
        emb = np.asarray(await pipe.embed_queries(q_texts), dtype=np.float32)
        return Probes(ids, q_texts, emb, n_un, n)

    def _finetune_auto(
        self,
        pairs: TrainingPairs,
        q: np.ndarray,
        times: dict[str, float],
        probes: Probes | None = None,
    ) -> FinetuneReport:
        """Fold, read, fit every candidate on each fold, pick, refit on all, write: under the
        lock."""
        s_ids = sorted({i for _, ans in pairs for i in ans})
        trained = set(s_ids)
        p_ids = [i for i in probes.ids if i not in trained] if probes is not None else []
        p_rows = [r for r, i in enumerate(probes.ids) if i not in trained] if probes else []
        n_fit = len(s_ids)
        s_ids = s_ids + p_ids  # the probes' records are fitted: nothing moves them
        pos = {i: r for r, i in enumerate(s_ids)}
        queries = QuerySet(
            q, [{pos[i]: g for i, g in ans.items()} for _, ans in pairs], n_records=len(s_ids)
        )
        probe_qs = None
        if probes is not None and p_ids:
            probe_qs = QuerySet(
                probes.embeddings[p_rows],
                [{n_fit + j: 1.0} for j in range(len(p_ids))],
                n_records=len(s_ids),
            )
        session = self._session()
        ident, state_dir = session.identity, session.state_dir
        adapts = bool(self._pipeline is not None and self._pipeline.adapts_queries)
        with session.lock(self.lock_timeout):
            state = session.load_state()
            n_total = self._adapter.count()
            uncovered = 1.0 - n_fit / max(n_total, 1)
            h = make_folds(
                queries,
                probes=probe_qs,
                untrained_share=uncovered,
                val_fraction=self.val_fraction,
                seed=self.seed,
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
                    "n_train": len(h.train(0)),
                    "n_val": len(h.val(0)),
                    "n_folds": choice.n_folds,
                    "n_probes": choice.n_probes,
                    "margin": choice.margin,
                    "noise": choice.noise,
                    "untrained_change": choice.untrained[0],
                    "refit": True,
                    "model": self._pipeline.model_name if self._pipeline is not None else "",
                    "curve": _curve_dict(choice, len(h.val(0))),
                    "adaptor_epochs": adaptor.epochs if adaptor is not None else 0,
                    "adaptor_alpha": c.alpha if adaptor is not None else 1.0,
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
            if choice.n_probes
            else {}
        )
        v0 = h.val(0)
        change, change_se = choice.untrained
        return FinetuneReport(
            method="auto",
            gamma=gamma,
            n_records=read.n_records,
            n_moved=len(moved_ids),
            moved_ids=moved_ids,
            n_train=len(h.train(0)),
            n_val=len(v0),
            curve=_curve(choice, len(v0)),
            before=_metrics(base.ranked, v0),
            after=_metrics(c.ranked, v0),
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
            margin=choice.margin,
            noise=choice.noise,
            decisions=[st.describe() for st in choice.steps],
            n_folds=choice.n_folds,
            n_probes=choice.n_probes,
            untrained_share=choice.untrained_share,
            untrained_change=change if choice.n_probes else None,
            untrained_se=change_se if choice.n_probes else None,
            untrained_bound=choice.probe_rule,
        )

    def _check_sample(self, n_chunks: int) -> None:
        """Refuse a ``max_chunks`` sample whose cost to the other chunks cannot be bounded.

        Records outside the sample get no question; NUDGE moves the sampled ones toward their
        questions, and questions about the others can then find the moved records first (on the
        10-K chunks: more than 10 points of NDCG@10 lost). ``method="auto"`` measures and bounds
        that loss with pseudo-questions about the other chunks; comparing candidates on several
        folds needs enough questions from the sample.
        """
        m = self.max_chunks
        if m is None or m >= n_chunks:
            return
        from nudge_rag.core.choose import MIN_PROBES

        if self.method != "auto" or self.gamma is not None:
            msg = (
                f"max_chunks={m} writes questions for {m} of the {n_chunks} chunks; with "
                f"method={self.method!r}" + (f" and gamma={self.gamma}" if self.gamma else "")
                + " nothing bounds what the other chunks lose (their questions find the moved "
                "records first). Use method='auto' with no fixed gamma (it measures and bounds "
                "that loss), or max_chunks=None"
            )  # fmt: skip
            raise ConfigError(msg)
        need = 10 * -(-MIN_PROBES // max(1, self.queries_per_chunk))
        if m < need:
            msg = (
                f"max_chunks={m} samples too few of the {n_chunks} chunks to compare fine-tunes "
                f"on held-out questions: at least {need} are needed at {self.queries_per_chunk} "
                f"question(s) per chunk. Pass max_chunks >= {need}, or max_chunks=None"
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
