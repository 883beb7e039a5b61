"""Learning from use: the feedback log of a store, and refits on what users confirmed.

:class:`LearnsFromUse` is the part of :class:`~nudge_rag.NudgeEmbeddingFinetuner` that turns a
deployed pipeline's traffic into training data: ``record()`` (a citation, a click, a thumbs-up),
retrieval handlers that log what users were shown, ``import_feedback()``, and ``update()``, which
fine-tunes again from the original vectors on everything logged so far.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag._util import run_sync
from nudge_rag.core import QuerySet
from nudge_rag.errors import ConfigError
from nudge_rag.feedback import FeedbackEntry, FeedbackLog
from nudge_rag.integrations.options import retriever_options
from nudge_rag.judge import (
    Candidate,
    JudgeOptions,
    as_judge,
    by_query,
    run_judge,
    to_ask,
    training_pairs,
    users_holdout,
)
from nudge_rag.judged import JudgedQueries
from nudge_rag.reports import FinetuneReport, JudgeReport

if TYPE_CHECKING:
    from nudge_rag.integrations import Pipeline
    from nudge_rag.integrations.base import Retriever
    from nudge_rag.session import StoreSession
    from nudge_rag.stores import StoreIdentity, VectorStoreAdapter

logger = logging.getLogger(__name__)

#: Candidate search for the judge reads the whole store below this size (exact), else asks
#: the store's own top-k search.
JUDGE_SCAN_RECORDS = 50_000

__all__ = ["LearnsFromUse"]


class LearnsFromUse:
    """Feedback methods of the finetuner (it provides the attributes declared below)."""

    _feedback: FeedbackLog | None
    _adapter: VectorStoreAdapter
    report: FinetuneReport | None
    gamma: float | None
    #: During update(): per training pair, whether it may be held out for γ (users' own).
    _holdout: tuple[bool, ...] | None = None

    if TYPE_CHECKING:

        @property
        def state_path(self) -> Path: ...

        @property
        def state_backend(self) -> Any: ...

        @property
        def identity(self) -> StoreIdentity: ...

        def _session(self) -> StoreSession: ...

        def retriever(
            self, similarity_top_k: int | None = None, **kwargs: Any
        ) -> Retriever | None: ...

        def _resolve(self) -> Pipeline: ...

        def finetune(
            self,
            train_queries: Any = None,
            *,
            similarity_top_k: int | None = None,
            retriever_kwargs: Mapping[str, Any] | None = None,
            method: Any = None,
        ) -> Retriever | None: ...

    @property
    def feedback(self) -> FeedbackLog:
        """The store's feedback log, kept with its state (``feedback.jsonl`` in a state folder,
        or beside the store in its database or server, where every replica appends to and
        reads the same log): what users confirmed for which query, durable across restarts,
        bounded and de-duplicated."""
        if self._feedback is None:
            self._feedback = FeedbackLog.on(self.state_backend)
        return self._feedback

    def record(
        self,
        query: str,
        ids: Sequence[str] | Mapping[str, float],
        *,
        grade: float = 1.0,
        source: str = "app",
        shown: Sequence[str] = (),
    ) -> FeedbackEntry:
        """Log that ``ids`` answer ``query`` (cited in the answer, clicked, thumbs-up).

        Args:
            query: The user's query, as asked.
            ids: The record ids the user confirmed (or ``{id: grade}``).
            grade: Grade of ids given as a list (graded relevance: 2 = very relevant).
            source: A label of where the feedback came from.
            shown: The ids the retriever showed, when known (those not confirmed count as
                impressions the user saw and passed over).

        Returns:
            The log entry (repeated confirmations of the same query and ids collapse into one).
        """
        return self.feedback.record(query, ids, grade=grade, source=source, shown=shown)

    def feedback_handler(self, *, source: str | None = None) -> Any:
        """A handler that logs every retrieval of this store's pipeline (query + ids shown).

        LangChain: a callback handler; pass it in ``config={"callbacks": [handler]}`` of the
        chain or retriever. LlamaIndex: an instrumentation event handler, already attached to
        the root dispatcher (every retriever and query engine reports to it). Confirmations
        (``ft.record(query, cited_ids)``) then turn what users saw into training data.
        """
        fw = self._resolve().framework
        if fw == "langchain":
            from nudge_rag.integrations.langchain import feedback_handler

            return feedback_handler(self.record, source=source or "langchain")
        if fw == "llamaindex":
            from nudge_rag.integrations.llamaindex import feedback_handler as li_handler

            return li_handler(self.record, source=source or "llamaindex")
        msg = f"the {self._adapter.name} store has no framework whose retrievals can be captured"
        raise ConfigError(msg)

    def import_feedback(self, data: Any, *, source: str = "import") -> int:
        """Log many confirmations at once: anything :class:`~nudge_rag.JudgedQueries` reads
        (``[(query, [id, ...])]``, a LlamaIndex QA dataset or its JSON, ...). Returns how many."""
        judged = JudgedQueries.from_any(data, name="feedback")
        n = 0
        for text, grades in judged.to_pairs():
            self.feedback.record(text, grades, source=source)
            n += 1
        return n

    def update(
        self,
        *,
        judge: Any = None,
        judge_budget: int | None = None,
        judge_options: JudgeOptions | None = None,
        min_grade: float = 0.0,
        similarity_top_k: int | None = None,
        retriever_kwargs: Mapping[str, Any] | None = None,
        method: str | None = None,
    ) -> Retriever | None:
        """Fine-tune again on everything the feedback log holds, from the original vectors.

        γ is chosen again on held-out feedback, and only records whose vector changes are
        written. Safe to run on a schedule (one run per store at a time: see ``lock_timeout``):
        while the log holds too little feedback to hold some out, the report says "not enough
        feedback yet" and the store is left as it is.

        The refit is NUDGE-N (``method="nudge-n"``, unless the finetuner's method is
        ``"nudge-m"`` or ``method=`` says otherwise): confirmations from users are the training
        data NUDGE was made for, and some of them are wrong. In the simulated chatbot
        (``benchmarks/bench_gains.py``, SciFact, 20 % wrong confirmations) NUDGE-N's refit
        gained +9.7 points of NDCG@10, while ``"auto"`` gained +11.3 on clean feedback but +7.4
        with wrong confirmations (an adaptor learned from them carries the errors to every
        query, and the sentinel questions are noisy too). A query-side adaptor chosen by an
        earlier ``finetune()`` is replaced by this refit.

        Args:
            judge: A relevance judge (see :mod:`nudge_rag.judge`): a function
                ``(query, candidates) -> ids`` (sync or async; candidates have ``.id`` and
                ``.text``) or an LLM (anything ``llm=`` accepts). Every logged query it has not
                answered yet is shown with the union of its top ``judge_options.candidates``
                records under the current and the original vectors; each answer is logged as a
                feedback entry (``source="judge"``) and never asked again. Its labels train
                beside the users' confirmations if it agrees with them often enough
                (``judge_options.min_agreement``) and never where a user passed a record over.
                Judge labels already in the log are weighed the same way without ``judge=``.
            judge_budget: Judge calls in this update at most (``judge_options.max_calls``).
            judge_options: How the judge is asked and trusted (:class:`~nudge_rag.judge.JudgeOptions`).
            min_grade: Only grades above this count as confirmations.
            similarity_top_k: ``k`` of the returned retriever.
            retriever_kwargs: Passed to the framework's ``as_retriever``.
            method: This refit's method (default ``"nudge-n"``, see above).

        Returns:
            The framework's retriever, as :meth:`finetune` does. :attr:`report` says what
            happened (``report.judge``: what the judge was asked and how far it was trusted).

        Raises:
            ConfigError: The log holds no confirmation yet (and no judge label gave one), or a
                retriever option is wrong (checked first).
            LLMRequestError: The judge's provider refused a request (judgements made before are
                kept in the log).
        """
        retriever_options(  # wrong options fail before the log is read or the store written
            self._resolve().framework, similarity_top_k, retriever_kwargs, where="retriever_kwargs"
        )
        opts = judge_options if judge_options is not None else JudgeOptions()
        if not isinstance(opts, JudgeOptions):
            msg = f"judge_options must be a JudgeOptions; received {type(opts).__name__}"
            raise ConfigError(msg)
        if judge_budget is not None:
            opts = replace(opts, max_calls=judge_budget)
        asked: dict[str, Any] = {}
        if judge is not None:
            asked = self._ask_judge(judge, opts, min_grade)
        entries = self.feedback.entries()
        pairs, trust = training_pairs(entries, opts, min_grade=min_grade)
        jreport = None
        if judge is not None or trust.n_overlap or any(e.candidates for e in entries):
            jreport = JudgeReport(
                n_overlap=trust.n_overlap,
                agreement=trust.agreement,
                trusted=trust.trusted,
                n_used=trust.n_used,
                n_contradicting=trust.n_contradicting,
                **asked,
            )
        if not pairs:
            msg = (
                f"the feedback log {self.feedback.path} holds no confirmed record yet: log some "
                "with record(), a retrieval handler, or import_feedback()"
            )
            raise ConfigError(msg)
        chosen = method or ("nudge-m" if getattr(self, "method", "") == "nudge-m" else "nudge-n")
        holdout = trust.users_only if trust.n_used and any(trust.users_only) else None
        if self.gamma is None and chosen != "auto" and not _can_hold_out(pairs, holdout):
            return self._not_enough(pairs, chosen, jreport, similarity_top_k, retriever_kwargs)
        self._holdout = holdout
        try:
            retriever = self.finetune(
                pairs,
                similarity_top_k=similarity_top_k,
                retriever_kwargs=retriever_kwargs,
                method=chosen,
            )
        except ConfigError as exc:
            if "cannot hold out validation queries" not in str(exc):
                raise
            return self._not_enough(pairs, chosen, jreport, similarity_top_k, retriever_kwargs)
        finally:
            self._holdout = None
        if self.report is not None and jreport is not None:
            self.report = replace(self.report, judge=jreport)
        return retriever

    # ------------------------------------------------------------------ internals
    def _split(self, model: Any, queries: QuerySet) -> tuple[QuerySet, QuerySet]:
        """The finetuner's (train, validation) split; during an update with judge labels, the
        validation queries come from users' own confirmations only (the judge adds training
        data, users decide γ and the guard)."""
        if self._holdout is None or len(self._holdout) != len(queries):
            split: tuple[QuerySet, QuerySet] = model.split(queries)
            return split
        held = users_holdout(queries, self._holdout, model.val_fraction, seed=model.seed)
        mask = np.zeros(len(queries), dtype=bool)
        mask[held] = True
        return queries.subset(np.flatnonzero(~mask)), queries.subset(held)

    def _not_enough(
        self,
        pairs: list[tuple[str, dict[str, float]]],
        method: str,
        jreport: JudgeReport | None,
        similarity_top_k: int | None,
        retriever_kwargs: Mapping[str, Any] | None,
    ) -> Retriever | None:
        """The report of an update that had too little feedback to hold some out: nothing is
        written, the store keeps the vectors it has."""
        note = (
            f"not enough feedback yet: {len(pairs)} confirmed queries, and no record has two of "
            "them, so none can be held out to choose γ on; the store is left as it is"
        )
        logger.info("%s", note)
        self.report = FinetuneReport(
            method=method,
            gamma=0.0,
            n_records=self._adapter.count(),
            n_moved=0,
            moved_ids=[],
            n_train=len(pairs),
            n_val=0,
            curve=None,
            before=None,
            after=None,
            written=False,
            note=note,
            seconds={},
            state_dir=str(self.state_path),
            store_id=self.identity.key,
            unmoved="none",
            judge=jreport,
        )
        return self.retriever(similarity_top_k, **dict(retriever_kwargs or {}))

    def _ask_judge(self, judge: Any, opts: JudgeOptions, min_grade: float) -> dict[str, Any]:
        """Ask ``judge`` about the logged queries it has not answered; log its answers."""
        ask = as_judge(judge, passage_chars=opts.passage_chars)
        state = by_query(self.feedback.entries(), min_grade=min_grade)
        need = [q for q, j in state.items() if not j.named]
        cands = self._judge_candidates(need, opts.candidates) if need else {}
        todo, cached, waiting = to_ask(state, cands, opts)
        run = run_sync(run_judge(ask, todo, self.feedback, opts))
        return {
            "n_queries": len(state),
            "n_judged": run.n_asked,
            "n_cached": cached + len(state) - len(need),
            "n_waiting": waiting,
            "n_failed": run.n_failed,
            "n_calls": run.n_calls,
            "n_labels": run.n_labels,
            "n_none": run.n_none,
            "rejected": dict(Counter(run.rejected)),
        }

    def _judge_candidates(self, texts: list[str], k: int) -> dict[str, list[Candidate]]:
        """Per query: its top ``k`` records under the current vectors, then those of its top
        ``k`` under the original vectors (the ones a fine-tune moved) not already listed."""
        adapter = self._adapter
        pipe = self._resolve()

        async def embed() -> Any:
            return await pipe.embed_queries(texts)

        q = np.asarray(run_sync(embed()), dtype=np.float64)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        q32 = np.ascontiguousarray(q, dtype=np.float32)

        def hits(exclude: list[str]) -> list[list[tuple[str, float]]]:
            if adapter.count() <= JUDGE_SCAN_RECORDS:
                return adapter._scan_top_hits(q, k, exclude)
            return adapter._top_hits(q32, k, exclude)

        current = hits([])
        original = current
        state = self._session().load_state() if self.state_path.exists() else None
        if state is not None and state.active and state.ids:
            missing = set(adapter._missing(list(state.ids)))
            row = state.row_of()
            present = [i for i in state.ids if i not in missing]
            if present:
                orig = np.asarray(state.originals[[row[i] for i in present]], dtype=np.float64)
                orig = orig / np.maximum(np.linalg.norm(orig, axis=1, keepdims=True), 1e-30)
                scores = q @ orig.T
                base = hits(present)
                original = []
                for j, got in enumerate(base):
                    top = np.argsort(-scores[j], kind="stable")[:k]
                    mine = [(present[int(t)], float(scores[j, t])) for t in top]
                    original.append(sorted([*got, *mine], key=lambda p: -p[1])[:k])
        lists: list[list[str]] = []
        for cur, orig_hits in zip(current, original, strict=True):
            ids = list(dict.fromkeys([i for i, _ in cur] + [i for i, _ in orig_hits]))
            lists.append(ids)
        wanted = list(dict.fromkeys(i for ids in lists for i in ids))
        text_of: dict[str, str] = {}
        page = max(1, getattr(self, "page_size", 1000))
        for s in range(0, len(wanted), page):
            fetched = adapter.get(wanted[s : s + page])
            for rid, text in zip(fetched.ids, fetched.texts, strict=True):
                text_of[rid] = text or ""
        return {
            t: [Candidate(i, text_of.get(i, "")) for i in ids]
            for t, ids in zip(texts, lists, strict=True)
        }


def _can_hold_out(
    pairs: Sequence[tuple[str, Mapping[str, float]]], eligible: Sequence[bool] | None = None
) -> bool:
    """Whether the covered validation split can hold out a query (some eligible query's records
    all have another query): the rule of :func:`nudge_rag.core.split.validation_positions`."""
    counts = Counter(i for _, ids in pairs for i in ids)
    ok = eligible if eligible is not None else [True] * len(pairs)
    return any(
        e and ids and all(counts[i] >= 2 for i in ids)
        for e, (_, ids) in zip(ok, pairs, strict=True)
    )
