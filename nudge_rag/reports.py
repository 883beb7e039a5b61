"""What a fine-tune and a revert did, as typed values that print short and serialise whole.

``repr()`` stays one line however many records moved; ``summary()`` gives a few readable lines;
``to_dict()`` gives JSON-ready values with every id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nudge_rag.core import ValidationCurve
from nudge_rag.evaluation.metrics import MetricMeans
from nudge_rag.stores._base import name_ids

__all__ = ["FinetuneReport", "JudgeReport", "RevertReport"]


@dataclass(frozen=True)
class JudgeReport:
    """What ``update(judge=...)`` asked the relevance judge and how far it trusted it.

    Attributes:
        n_queries: Logged queries (distinct texts) the judge could be asked about.
        n_judged: Queries it answered in this update.
        n_cached: Queries already answered over the same candidates (not asked again).
        n_waiting: Queries left for a later update by the budget (``max_calls``).
        n_failed: Queries whose calls all failed (an error, a timeout, an unreadable answer).
        n_calls: Judge calls made (retries included).
        n_labels: Relevant records it named in this update.
        n_none: Answers "none of these" in this update.
        n_overlap: Users' confirmed queries the judge has answered (over the whole log).
        agreement: Share of them on which it named a record users confirmed.
        trusted: Whether its labels were used for training.
        n_used: Judge labels used for training.
        n_contradicting: Judge labels dropped: a user was shown that record and passed it over.
        rejected: Failed calls by reason (``"timeout"``, ``"error"``, ``"no_judgement"``, ...).
    """

    n_queries: int = 0
    n_judged: int = 0
    n_cached: int = 0
    n_waiting: int = 0
    n_failed: int = 0
    n_calls: int = 0
    n_labels: int = 0
    n_none: int = 0
    n_overlap: int = 0
    agreement: float | None = None
    trusted: bool = False
    n_used: int = 0
    n_contradicting: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One or two readable lines."""
        agree = "n/a" if self.agreement is None else f"{self.agreement:.2f}"
        line = (
            f"judge: {self.n_judged} of {self.n_queries} queries judged in {self.n_calls} calls "
            f"({self.n_labels} labels, {self.n_none} none; {self.n_cached} already judged, "
            f"{self.n_waiting} waiting for the budget, {self.n_failed} failed); agreement with "
            f"users {agree} on {self.n_overlap} queries: "
            + (
                f"trusted, {self.n_used} labels used ({self.n_contradicting} contradicting users "
                "dropped)"
                if self.trusted
                else "not trusted, its labels are not used"
            )
        )
        if self.rejected:
            line += "\nfailed calls: " + ", ".join(f"{k} {v}" for k, v in self.rejected.items())
        return line

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values."""
        out = dict(self.__dict__)
        out["rejected"] = dict(self.rejected)
        return out


@dataclass(frozen=True, repr=False)
class FinetuneReport:
    """What :meth:`NudgeEmbeddingFinetuner.finetune` did.

    Attributes:
        method: ``"nudge-n"`` or ``"nudge-m"``.
        gamma: γ applied (0: nothing was written).
        n_records: Records in the store.
        n_moved: Records whose vectors were overwritten with moved ones.
        moved_ids: Their ids.
        n_train, n_val: Training queries and held-out validation queries.
        curve: Validation objective per γ tried (None when γ was fixed).
        before, after: NDCG/recall/MRR/hit rate @10 of the validation queries over the whole
            store at γ = 0 and at the chosen γ. γ was chosen on these queries, so ``after`` is
            optimistic; use held-out test queries (:func:`nudge_rag.evaluation`) for a fair number.
        written: Whether anything was written to the store.
        note: Why nothing was written, when it was not, and anything else worth knowing.
        seconds: Wall time per stage (embed, read, fit, write).
        state_dir: Where originals and journal are kept (for :meth:`revert`).
        store_id: The store's identity key (see :class:`~nudge_rag.stores.StoreIdentity`).
        adopted_ids: Records a previous fine-tune wrote whose vector the user has changed since
            (re-embedded, edited): left as the user set them and taken as their new originals.
        deleted_ids: Records a previous fine-tune wrote that are no longer in the store.
        restored_ids: Records a previous fine-tune moved that this one does not move: their
            originals were written back.
        n_written: Records whose vector was sent to the store (moved ones that did not
            already hold their new vector, and restored ones).
        unmoved: How the best scores of the records that do not move were found: ``"scan"``
            (every vector read once, page by page), ``"search"`` (the store's own top-k search,
            only the fitted records read), ``"none"`` (γ fixed: no validation).
        chosen: With ``method="auto"``: what was applied, ``"nothing"``, ``"NUDGE-N γ=…"``,
            ``"adaptor (N epochs[, α=a])"`` or ``"adaptor (N epochs[, α=a]) + NUDGE-N γ=…"``
            (α: the adaptor's shrinkage toward the identity); else ``""``.
        candidates: With ``method="auto"``: the best held-out NDCG@10 of each kind of
            candidate (``{"nothing": 0.61, "NUDGE-N γ=0.04": 0.62, ...}``), on the validation
            questions (mean over the folds), and ``sentinel_loss`` of each (NDCG@10 lost by the
            pseudo-questions about records no training question points to, as a fraction;
            empty when not measured).
        adaptor: Whether the returned retriever embeds queries through a query-side adaptor
            (kept with the state; :meth:`revert` drops it).
        judge: With ``update(judge=...)``: what the relevance judge was asked and how far it
            was trusted (:class:`JudgeReport`); else ``None``.
        margin, noise: With ``method="auto"``: the held-out NDCG@10 the chosen candidate gained
            over the simpler one it displaced (nothing < NUDGE-N < adaptor < both), and the
            standard error of that gain (paired per question, over ``n_folds`` folds); a more
            complex candidate is taken only when ``margin > noise``. 0 when nothing was chosen.
        decisions: Each comparison made, as a line ("adaptor (40 epochs) over NUDGE-N γ=0.2:
            +0.31 ± 0.42 points (within noise, not taken)").
        n_folds: Covered validation splits the candidates were compared on.
        n_probes: Pseudo-questions written from records no training question points to.
        untrained_share: Share of the store's records no training question points to.
        untrained_change, untrained_se: Estimated NDCG@10 change (and its standard error) of
            questions about those records under what was applied, measured on the probes
            (None: not measured, e.g. the store keeps no texts). Also in ``sentinel_loss``
            (its opposite) per kind of candidate.
        untrained_bound: Whether the bound on that loss (0.5 point, or a tenth of the
            candidate's validation gain when larger) constrained the choice (enough probes, and
            at least 5 % of the store without questions).
    """

    method: str
    gamma: float
    n_records: int
    n_moved: int
    moved_ids: list[str]
    n_train: int
    n_val: int
    curve: ValidationCurve | None
    before: MetricMeans | None
    after: MetricMeans | None
    written: bool
    note: str
    seconds: dict[str, float]
    state_dir: str
    store_id: str = ""
    adopted_ids: list[str] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    restored_ids: list[str] = field(default_factory=list)
    unmoved: str = "scan"
    n_written: int = 0
    chosen: str = ""
    candidates: dict[str, float] = field(default_factory=dict)
    sentinel_loss: dict[str, float] = field(default_factory=dict)
    adaptor: bool = False
    judge: JudgeReport | None = None
    margin: float = 0.0
    noise: float = 0.0
    decisions: list[str] = field(default_factory=list)
    n_folds: int = 0
    n_probes: int = 0
    untrained_share: float = 0.0
    untrained_change: float | None = None
    untrained_se: float | None = None
    untrained_bound: bool = False

    def __repr__(self) -> str:
        return (
            f"FinetuneReport(method={self.method!r}, "
            + (f"chosen={self.chosen!r}, " if self.chosen else "")
            + f"gamma={self.gamma:.4g}, "
            f"n_moved={self.n_moved}, n_records={self.n_records}, written={self.written}, "
            f"adopted={len(self.adopted_ids)}, deleted={len(self.deleted_ids)}, "
            f"state_dir={self.state_dir!r})"
        )

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"{self.method}: γ={self.gamma:.4g}, {self.n_moved} of {self.n_records} records moved "
            f"({self.n_train} training / {self.n_val} validation queries)",
        ]
        if self.chosen:
            base = self.candidates.get("nothing")
            parts = []
            for name, v in self.candidates.items():
                gain = (
                    f" ({100 * (v - base):+.2f})" if base is not None and name != "nothing" else ""
                )
                loss = self.sentinel_loss.get(name)
                sent = f", untrained {-100 * loss:+.2f}" if loss is not None else ""
                parts.append(f"{name} {v:.4f}{gain}{sent}")
            lines.append(
                f"chosen: {self.chosen}"
                + (" (queries embedded through the adaptor)" if self.adaptor else "")
                + "; held-out NDCG@10: "
                + "; ".join(parts)
            )
            lines.append(
                f"margin {100 * self.margin:+.2f} ± {100 * self.noise:.2f} points over the "
                f"simpler candidate ({self.n_folds} folds): " + "; ".join(self.decisions)
            )
            if self.untrained_change is not None:
                se = self.untrained_se or 0.0
                lines.append(
                    f"records no question points to ({100 * self.untrained_share:.0f} % of the "
                    f"store): estimated NDCG@10 change {100 * self.untrained_change:+.2f} ± "
                    f"{100 * se:.2f} points ({self.n_probes} pseudo-questions from their own "
                    "words"
                    + ("; bound: −max(0.5, validation gain / 10)" if self.untrained_bound else "")
                    + ")"
                )
        if self.before is not None and self.after is not None:
            lines.append(
                f"validation NDCG@10 {self.before.ndcg:.4f} -> {self.after.ndcg:.4f}, "
                f"hit@10 {self.before.hit:.4f} -> {self.after.hit:.4f}"
            )
        if self.adopted_ids:
            lines.append(
                f"{len(self.adopted_ids)} record(s) changed since the last fine-tune were left as "
                f"they are and taken as originals: {name_ids(self.adopted_ids)}"
            )
        if self.deleted_ids:
            lines.append(
                f"{len(self.deleted_ids)} record(s) of the last fine-tune are no longer in the "
                f"store: {name_ids(self.deleted_ids)}"
            )
        if self.note:
            lines.append(self.note)
        if self.judge is not None:
            lines.append(self.judge.summary())
        lines.append(
            "time: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
            + (f" (unmoved scores by {self.unmoved})" if self.unmoved != "none" else "")
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (ids in full)."""
        curve = None
        if self.curve is not None:
            curve = {
                "gammas": np.asarray(self.curve.gammas).tolist(),
                "scores": np.asarray(self.curve.scores).tolist(),
                "objective": self.curve.objective,
                "n_queries": self.curve.n_queries,
            }
        return {
            "method": self.method,
            "gamma": float(self.gamma),
            "n_records": self.n_records,
            "n_moved": self.n_moved,
            "moved_ids": list(self.moved_ids),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "written": self.written,
            "note": self.note,
            "seconds": dict(self.seconds),
            "state_dir": self.state_dir,
            "store_id": self.store_id,
            "adopted_ids": list(self.adopted_ids),
            "deleted_ids": list(self.deleted_ids),
            "restored_ids": list(self.restored_ids),
            "unmoved": self.unmoved,
            "n_written": self.n_written,
            "chosen": self.chosen,
            "candidates": dict(self.candidates),
            "sentinel_loss": dict(self.sentinel_loss),
            "adaptor": self.adaptor,
            "margin": self.margin,
            "noise": self.noise,
            "decisions": list(self.decisions),
            "n_folds": self.n_folds,
            "n_probes": self.n_probes,
            "untrained_share": self.untrained_share,
            "untrained_change": self.untrained_change,
            "untrained_se": self.untrained_se,
            "untrained_bound": self.untrained_bound,
            "validation": {
                "before": self.before._asdict() if self.before is not None else None,
                "after": self.after._asdict() if self.after is not None else None,
            },
            "curve": curve,
            "judge": self.judge.to_dict() if self.judge is not None else None,
        }


@dataclass(frozen=True, repr=False)
class RevertReport:
    """What :meth:`NudgeEmbeddingFinetuner.revert` did.

    Attributes:
        n_restored: Records whose original vector was written back (and read back equal).
        n_already_original: Journaled records that already held their original vector (e.g. a
            revert or a write that was cut short).
        changed_ids: Records whose vector the user changed since the fine-tune (re-embedded,
            edited): left as they are.
        deleted_ids: Journaled records no longer in the store: skipped.
        mismatched_ids: Records that did not read back equal to their original after the
            write (the state is kept active so that ``revert()`` can be run again).
        max_abs_diff: Largest |read back − original| over the restored records (0.0 on stores
            that keep vectors as written; ~1e-7 on stores that renormalise).
        state_dir: The state folder used.
        note: Why nothing was restored, when nothing was.
        adaptor_dropped: A query-side adaptor was in force and no longer is.
    """

    n_restored: int
    max_abs_diff: float
    state_dir: str
    n_already_original: int = 0
    changed_ids: list[str] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    mismatched_ids: list[str] = field(default_factory=list)
    note: str = ""
    adaptor_dropped: bool = False

    @property
    def ok(self) -> bool:
        """Every record we wrote is back to its original (none mismatched)."""
        return not self.mismatched_ids

    def __repr__(self) -> str:
        return (
            f"RevertReport(n_restored={self.n_restored}, "
            f"n_already_original={self.n_already_original}, changed={len(self.changed_ids)}, "
            f"deleted={len(self.deleted_ids)}, mismatched={len(self.mismatched_ids)}, "
            f"max_abs_diff={self.max_abs_diff:.3g}, state_dir={self.state_dir!r})"
        )

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"restored {self.n_restored} record(s) to their original vectors "
            f"(read back: max |difference| {self.max_abs_diff:.3g})"
            + (
                f"; {self.n_already_original} already held their original"
                if self.n_already_original
                else ""
            )
        ]
        if self.changed_ids:
            lines.append(
                f"left {len(self.changed_ids)} record(s) the user changed since as they are: "
                f"{name_ids(self.changed_ids)}"
            )
        if self.deleted_ids:
            lines.append(
                f"skipped {len(self.deleted_ids)} record(s) no longer in the store: "
                f"{name_ids(self.deleted_ids)}"
            )
        if self.adaptor_dropped:
            lines.append("the query-side adaptor was dropped")
        if self.mismatched_ids:
            lines.append(
                f"{len(self.mismatched_ids)} record(s) did not read back equal to their original: "
                f"{name_ids(self.mismatched_ids)}; the state is kept, run revert() again"
            )
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values."""
        return {
            "n_restored": self.n_restored,
            "n_already_original": self.n_already_original,
            "changed_ids": list(self.changed_ids),
            "deleted_ids": list(self.deleted_ids),
            "mismatched_ids": list(self.mismatched_ids),
            "max_abs_diff": self.max_abs_diff,
            "state_dir": self.state_dir,
            "note": self.note,
            "adaptor_dropped": self.adaptor_dropped,
        }
