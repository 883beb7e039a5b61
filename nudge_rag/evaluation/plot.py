"""Before/after bars, and the γ validation curve, as one PNG.

matplotlib is imported when :func:`plot_comparison` is called and draws on an Agg canvas without
pyplot (the global backend is left alone), so it works on servers, in CI and in notebooks
(``pip install 'nudge-rag[plot]'``).
"""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag.errors import ConfigError, require
from nudge_rag.evaluation.results import METRICS, Comparison, EvaluationResult, compare

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["comparison_figure", "plot_comparison"]

logger = logging.getLogger(__name__)

_BEFORE, _AFTER, _CURVE = "#9aa5b1", "#1f77b4", "#d62728"
_GAIN, _LOSS = "#2ca02c", "#d62728"


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


def _objective_label(objective: str) -> str:
    """``top1`` -> ``top-1 accuracy (top1)``; ``ndcg@10`` -> ``NDCG@10 (ndcg@10)``."""
    nice = {"top1": "top-1 accuracy"}.get(objective)
    if nice is None and objective.lower().startswith("ndcg"):
        nice = "NDCG" + objective[4:]
    return f"{nice} ({objective})" if nice else objective


def _bar_limits(values: list[float]) -> tuple[float, float]:
    """The y range of the bars: zoomed to the data (not from 0), with room above for labels."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, 0.02)
    return max(0.0, lo - 0.6 * span), hi + 0.55 * span


def comparison_figure(
    before: EvaluationResult,
    after: EvaluationResult,
    curve: Any = None,
    *,
    gamma: float | None = None,
    title: str | None = None,
    curve_note: str | None = None,
    dpi: int = 144,
) -> Figure:
    """The figure :func:`plot_comparison` saves (a matplotlib ``Figure`` on an Agg canvas).

    ``fig.axes[0]`` holds the bars; ``fig.axes[1]``, when there is one, the γ panel.
    """
    cmp = compare(before, after)  # validates: same k, same queries
    curve, gamma = _curve_and_gamma(curve, gamma)
    require("matplotlib", "plot")
    # The object API with an Agg canvas: no pyplot, so the user's global backend (a notebook's
    # inline one) is left alone and nothing needs a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = after.k
    ncols = 2 if curve is not None or curve_note else 1
    fig = Figure(figsize=(5.8 * ncols, 4.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    _draw_bars(axes[0], cmp, k, before.name or "before", after.name or "after")
    if curve is not None:
        _draw_curve(axes[1], curve, gamma)
    elif curve_note:
        axes[1].set_axis_off()
        axes[1].set_title(textwrap.fill("γ selection: " + curve_note, 60), fontsize=9, loc="left")
    fig.suptitle(title or f"NUDGE: {before.name or 'before'} vs {after.name or 'after'}")
    return fig


def _draw_bars(ax: Any, cmp: Comparison, k: int, name_b: str, name_a: str) -> None:
    """Grouped bars zoomed to the data, the baseline marked, deltas and wins / losses / ties."""
    x = np.arange(len(cmp.rows))
    w = 0.38
    vb = [row.before for row in cmp.rows]
    va = [row.after for row in cmp.rows]
    lo, hi = _bar_limits(vb + va)
    bars_b = ax.bar(x - w / 2, vb, w, label=name_b, color=_BEFORE)
    bars_a = ax.bar(x + w / 2, va, w, label=name_a, color=_AFTER)
    for bars in (bars_b, bars_a):
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=7)
    span = hi - lo
    for i, row in enumerate(cmp.rows):
        # the baseline across the pair: how far "after" moved from it
        ax.hlines(row.before, x[i] - w, x[i] + w, colors="black", linestyles=":", lw=1)
        color = _GAIN if row.delta > 1e-12 else _LOSS if row.delta < -1e-12 else "black"
        ax.text(x[i], max(row.before, row.after) + 0.08 * span, f"{100 * row.delta:+.1f} points",
                ha="center", va="bottom", fontsize=8, fontweight="bold", color=color)  # fmt: skip
    ticks = [f"{label}@{k}\n{r.wins} / {r.losses} / {r.ties}" for (_, label), r in zip(METRICS, cmp.rows, strict=True)]  # fmt: skip
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_xlabel(
        f"per-query wins / losses / ties of {name_a} ({cmp.after.n_queries} queries)", fontsize=8
    )
    ax.set_ylim(lo, hi)
    ax.set_ylabel(f"mean over queries (axis from {lo:.2f})" if lo > 0 else "mean over queries")
    ax.set_title(f"Retrieval quality; dotted: {name_b}", fontsize=10)
    # below the axes (and the wins / losses / ties line), never over the bars and their labels
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False, ncols=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _draw_curve(ax: Any, curve: Any, gamma: float | None) -> None:
    """The validation objective against γ, the chosen γ starred, the γ = 0 baseline dotted."""
    g = np.asarray(curve.gammas, dtype=np.float64)
    s = np.asarray(curve.scores, dtype=np.float64)
    ax.plot(g, s, color=_CURVE, lw=1.6, marker="o" if g.size <= 40 else None, ms=3)
    if gamma is None and s.size:
        gamma = float(g[int(np.argmax(s))])
    if g.size and g[0] == 0:
        ax.axhline(float(s[0]), color="gray", ls=":", lw=1)
        ax.annotate(f"γ = 0 (no fine-tuning): {s[0]:.3f}", (0.02, float(s[0])), xytext=(0, 3),
                    xycoords=("axes fraction", "data"), textcoords="offset points", fontsize=8,
                    color="gray")  # fmt: skip
    if gamma is not None and g.size:
        score_at = float(np.interp(gamma, g, s)) if g.size > 1 else float(s[0])
        ax.axvline(gamma, color="black", ls="--", lw=1)
        ax.plot([gamma], [score_at], marker="*", ms=14, color="black", zorder=5)
        ax.annotate(f"chosen γ = {gamma:.3g}\n{score_at:.3f}", (gamma, score_at), xytext=(8, -24),
                    textcoords="offset points", fontsize=9)  # fmt: skip
    positive = g[g > 0]
    if positive.size and g.max() / positive.min() > 100:
        ax.set_xscale("symlog", linthresh=float(positive.min()))
    ax.set_xlabel("γ")
    objective = str(getattr(curve, "objective", "objective"))
    ax.set_ylabel("validation " + _objective_label(objective))
    n = getattr(curve, "n_queries", None)
    ax.set_title(
        f"γ chosen by {objective}" + (f" ({n} validation queries)" if n else ""), fontsize=10
    )
    ax.grid(alpha=0.3)


def plot_comparison(
    before: EvaluationResult,
    after: EvaluationResult,
    curve: Any = None,
    path: str | os.PathLike[str] = "nudge.png",
    *,
    gamma: float | None = None,
    title: str | None = None,
    curve_note: str | None = None,
    dpi: int = 144,
) -> Path:
    """Save a PNG: grouped bars of NDCG@k, Recall@k, MRR@k and hit rate before and after, and,
    with ``curve``, the validation objective against γ with the chosen γ marked.

    The bars' y axis is zoomed to the values (its lower end is in the axis label, the baseline
    dotted across each pair); above each pair, the change in points; under each metric, the
    per-query wins / losses / ties of :func:`compare`; the legend below the axes.

    Args:
        before: Evaluation of the untouched retriever.
        after: Evaluation of the fine-tuned retriever, on the same queries at the same k.
        curve: A :class:`~nudge_rag.ValidationCurve`, or a ``FinetuneReport`` (its ``.curve``
            and ``.gamma`` are used). ``None``: bars only.
        path: Where to write the PNG (parent folders are created).
        gamma: The γ to mark; default the report's γ, else the best point of the curve.
        title: Figure title; default ``"NUDGE: before vs after"``.
        curve_note: Without a curve: a γ panel whose title says why there is none (e.g. the
            state keeps no validation curve) instead of no panel.
        dpi: Resolution.

    Returns:
        The path written.

    Raises:
        DependencyError: matplotlib is not installed.
        ConfigError: The results are not comparable (see :func:`compare`), or ``curve`` is
            not a validation curve.
    """
    fig = comparison_figure(
        before, after, curve, gamma=gamma, title=title, curve_note=curve_note, dpi=dpi
    )
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    logger.info("wrote %s", out)
    return out
