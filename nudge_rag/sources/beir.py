"""A BEIR folder through the NUDGE paper's protocol: embed, split 70/10/20 (seed 0), fit each
method on the training queries with γ chosen on the validation ones, measure the test queries
before and after. Nothing is written anywhere.

numpy and the embedding model are imported when a protocol runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nudge_rag.experiment import ExperimentRow

__all__ = ["BeirRun", "run_paper_protocol"]


@dataclass(frozen=True)
class BeirRun:
    """What :func:`finetune_beir` measured: test metrics without and with each method.

    Attributes:
        name: The data set (folder name).
        n_records: Records in the corpus.
        n_train, n_val, n_test: Queries of the paper's split.
        n_covered: Test queries with a relevant record some training query also points to.
        rows: One :class:`~nudge_rag.experiment.ExperimentRow` per method, "no fine-tuning"
            first.
    """

    name: str
    n_records: int
    n_train: int
    n_val: int
    n_test: int
    n_covered: int
    rows: list[ExperimentRow]

    def summary(self) -> str:
        """The split, a table of test metrics, and each method's gain."""
        lines = [
            f"{self.name}: {self.n_records} records; paper split {self.n_train} train / "
            f"{self.n_val} validation / {self.n_test} test queries ({self.n_covered} covered, "
            f"{self.n_test - self.n_covered} uncovered).",
            "",
            f"{'':16} {'NDCG@10':>8} {'Recall@10':>9} {'covered':>8} {'uncovered':>9} "
            f"{'γ':>8} {'moved':>6} {'seconds':>8}",
        ]
        for r in self.rows:
            tuned = r.gamma is not None
            gamma = f"{r.gamma:.4g}" if tuned else ""
            moved, secs = (str(r.n_moved), f"{r.seconds:.2f}") if tuned else ("", "")
            lines.append(
                f"{r.name:16} {r.ndcg:8.4f} {r.recall:9.4f} {r.ndcg_covered:8.4f} "
                f"{r.ndcg_uncovered:9.4f} {gamma:>8} {moved:>6} {secs:>8}"
            )
        base = self.rows[0]
        for r in self.rows[1:]:
            lines.append(
                f"{r.name}: test NDCG@10 {base.ndcg:.4f} -> {r.ndcg:.4f} "
                f"({100 * (r.ndcg - base.ndcg):+.1f} points)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (``rows``: one dict per method)."""
        from dataclasses import asdict

        return {
            "name": self.name,
            "n_records": self.n_records,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "n_covered": self.n_covered,
            "rows": [asdict(r) for r in self.rows],
        }


def run_paper_protocol(
    folder: str | os.PathLike[str],
    methods: Iterable[str],
    embed_model: Any,
    *,
    objective: str = "top1",
    show_progress: bool = False,
) -> BeirRun:
    """The paper's protocol on ``folder`` with ``embed_model`` (``embed_documents`` /
    ``embed_queries``); see :func:`nudge_rag.sources.finetune_beir`."""
    from nudge_rag.experiment import prepare_beir, run_methods

    exp = prepare_beir(folder, embed_model, show_progress=show_progress)
    rows = run_methods(exp, list(methods), objective=objective)
    n_cov = int(exp.covered.sum())
    return BeirRun(
        exp.name, len(exp.doc_ids), len(exp.train), len(exp.val), len(exp.test), n_cov, rows
    )
