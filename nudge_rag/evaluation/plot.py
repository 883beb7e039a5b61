"""Before/after bars, and the γ validation curve, as one PNG.

matplotlib is imported when :func:`plot_comparison` is called and draws on an Agg canvas without
pyplot (the global backend is left alone), so it works on servers, in CI and in notebooks
(``pip install 'nudge-rag[plot]'``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import ConfigError, require
from nudge_rag.evaluation.results import METRICS, EvaluationResult, compare

__all__ = ["plot_comparison"]

logger = logging.getLogger(__name__)

_BEFORE, _AFTER, _CURVE = "#9aa5b1", "#1f77b4", "#d62728"


def _curve_and_gamma(curve: Any, gamma: float | None) -> tuple[Any, float | None]:
    """Accept a ValidationCurve, or a FinetuneReport / NudgeResult (``.curve`` + ``.gamma``)."""
    if curve is None:
        return None, gamma
    if hasattr(curve, "curve") and hasattr(curve, "gamma"):
        if gamma is None:
            gamma = float(curve.gamma)
        curve = curve.curve
        if curve is None:  # γ was fixed: there is no curve to draw
            return None, gamma
    if not (hasattr(curve, "gammas") and hasattr(curve, "scores")):
        msg = f"curve: expected a ValidationCurve (or a FinetuneReport with one), received {type(curve).__name__}"
        raise ConfigError(msg)
    return curve, gamma


def plot_comparison(
    before: EvaluationResult,
    after: EvaluationResult,
    curve: Any = None,
    path: str | os.PathLike[str] = "nudge.png",
    *,
    gamma: float | None = None,
    title: str | None = None,
    dpi: int = 144,
) -> Path:
    """Save a PNG: grouped bars of NDCG@k, Recall@k, MRR@k and hit rate before and after, and,
    with ``curve``, the validation objective against γ with the chosen γ marked.

    Args:
        before: Evaluation of the untouched retriever.
        after: Evaluation of the fine-tuned retriever, on the same queries at the same k.
        curve: A :class:`~nudge_rag.ValidationCurve`, or a ``FinetuneReport`` (its ``.curve``
            and ``.gamma`` are used). ``None``: bars only.
        path: Where to write the PNG (parent folders are created).
        gamma: The γ to mark; default the report's γ, else the best point of the curve.
        title: Figure title; default ``"NUDGE: before vs after (n queries)"``.
        dpi: Resolution.

    Returns:
        The path written.

    Raises:
        DependencyError: matplotlib is not installed.
        ConfigError: The results are not comparable (see :func:`compare`), or ``curve`` is
            not a validation curve.
    """
    cmp = compare(before, after)  # validates: same k, same queries
    curve, gamma = _curve_and_gamma(curve, gamma)
    require("matplotlib", "plot")
    # The object API with an Agg canvas: no pyplot, so the user's global backend (a notebook's
    # inline one) is left alone and nothing needs a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = after.k
    ncols = 2 if curve is not None else 1
    fig = Figure(figsize=(5.6 * ncols, 4.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]

    ax = axes[0]
    labels = [f"{label}@{k}" for _, label in METRICS]
    x = np.arange(len(labels))
    w = 0.38
    vb = [row.before for row in cmp.rows]
    va = [row.after for row in cmp.rows]
    bars_b = ax.bar(x - w / 2, vb, w, label=before.name or "before", color=_BEFORE)
    bars_a = ax.bar(x + w / 2, va, w, label=after.name or "after", color=_AFTER)
    for bars in (bars_b, bars_a):
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("mean over queries")
    ax.set_title(f"Retrieval quality ({after.n_queries} queries)")
    ax.legend(loc="upper left", frameon=False, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)

    if curve is not None:
        ax2 = axes[1]
        g = np.asarray(curve.gammas, dtype=np.float64)
        s = np.asarray(curve.scores, dtype=np.float64)
        ax2.plot(g, s, color=_CURVE, lw=1.6, marker="o" if g.size <= 40 else None, ms=3)
        if gamma is None and s.size:
            gamma = float(g[int(np.argmax(s))])
        if gamma is not None and g.size:
            score_at = float(np.interp(gamma, g, s)) if g.size > 1 else float(s[0])
            ax2.axvline(gamma, color="black", ls="--", lw=1)
            ax2.plot([gamma], [score_at], marker="*", ms=14, color="black", zorder=5)
            ax2.annotate(
                f"chosen γ = {gamma:.3g}",
                (gamma, score_at),
                xytext=(8, -16),
                textcoords="offset points",
                fontsize=9,
            )
        positive = g[g > 0]
        if positive.size and g.max() / positive.min() > 100:
            ax2.set_xscale("symlog", linthresh=float(positive.min()))
        ax2.set_xlabel("γ")
        n = getattr(curve, "n_queries", None)
        objective = str(getattr(curve, "objective", "objective"))
        ax2.set_ylabel("validation " + ("top-1 accuracy" if objective == "top1" else objective))
        ax2.set_title("γ selection" + (f" ({n} validation queries)" if n else ""))
        ax2.grid(alpha=0.3)

    fig.suptitle(title or f"NUDGE: {before.name or 'before'} vs {after.name or 'after'}")
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    logger.info("wrote %s", out)
    return out
