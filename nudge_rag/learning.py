"""Learning from use: the feedback log of a store, and refits on what users confirmed.

:class:`LearnsFromUse` is the part of :class:`~nudge_rag.NudgeEmbeddingFinetuner` that turns a
deployed pipeline's traffic into training data: ``record()`` (a citation, a click, a thumbs-up),
retrieval handlers that log what users were shown, ``import_feedback()``, and ``update()``, which
fine-tunes again from the original vectors on everything logged so far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nudge_rag.errors import ConfigError
from nudge_rag.feedback import FeedbackEntry, FeedbackLog
from nudge_rag.integrations.options import retriever_options
from nudge_rag.judged import JudgedQueries

if TYPE_CHECKING:
    from nudge_rag.integrations import Pipeline
    from nudge_rag.integrations.base import Retriever
    from nudge_rag.stores import VectorStoreAdapter

__all__ = ["LearnsFromUse"]


class LearnsFromUse:
    """Feedback methods of the finetuner (it provides the attributes declared below)."""

    _feedback: FeedbackLog | None
    _adapter: VectorStoreAdapter

    if TYPE_CHECKING:

        @property
        def state_path(self) -> Path: ...

        @property
        def state_backend(self) -> Any: ...

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
        min_grade: float = 0.0,
        similarity_top_k: int | None = None,
        retriever_kwargs: Mapping[str, Any] | None = None,
        method: str | None = None,
    ) -> Retriever | None:
        """Fine-tune again on everything the feedback log holds, from the original vectors.

        γ is chosen again on held-out feedback, and only records whose vector changes are
        written. Safe to run on a schedule (one run per store at a time: see ``lock_timeout``).

        The refit is NUDGE-N (``method="nudge-n"``, unless the finetuner's method is
        ``"nudge-m"`` or ``method=`` says otherwise): confirmations from users are the training
        data NUDGE was made for, and some of them are wrong. In the simulated chatbot
        (``benchmarks/bench_gains.py``, SciFact, 20 % wrong confirmations) NUDGE-N's refit
        gained +9.7 points of NDCG@10, while ``"auto"`` gained +11.3 on clean feedback but +7.4
        with wrong confirmations (an adaptor learned from them carries the errors to every
        query, and the sentinel questions are noisy too). A query-side adaptor chosen by an
        earlier ``finetune()`` is replaced by this refit.

        Returns:
            The framework's retriever, as :meth:`finetune` does.

        Raises:
            ConfigError: The log holds no confirmation yet, or a retriever option is wrong
                (checked first).
        """
        retriever_options(  # wrong options fail before the log is read or the store written
            self._resolve().framework, similarity_top_k, retriever_kwargs, where="retriever_kwargs"
        )
        pairs = self.feedback.training_pairs(min_grade=min_grade)
        if not pairs:
            msg = (
                f"the feedback log {self.feedback.path} holds no confirmed record yet: log some "
                "with record(), a retrieval handler, or import_feedback()"
            )
            raise ConfigError(msg)
        chosen = method or ("nudge-m" if getattr(self, "method", "") == "nudge-m" else "nudge-n")
        return self.finetune(
            pairs,
            similarity_top_k=similarity_top_k,
            retriever_kwargs=retriever_kwargs,
            method=chosen,
        )
