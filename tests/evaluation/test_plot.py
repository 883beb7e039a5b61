"""plot_comparison: a readable PNG of before/after bars and the γ validation curve."""

from __future__ import annotations

import struct
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from nudge_rag import ValidationCurve
from nudge_rag.errors import ConfigError, DependencyError
from nudge_rag.evaluation import evaluate, plot_comparison
from nudge_rag.evaluation.plot import comparison_figure

pytest.importorskip("matplotlib")

DATA = [(f"q{i}", [f"d{i}"]) for i in range(20)]


def results():
    before = evaluate(
        lambda q: ["x", "y", q.replace("q", "d")] if int(q[1:]) % 2 else ["x"],
        DATA,
        k=3,
        name="before",
    )
    after = evaluate(
        lambda q: [q.replace("q", "d"), "x"] if int(q[1:]) % 5 else ["x"], DATA, k=3, name="NUDGE-N"
    )
    return before, after


def curve() -> ValidationCurve:
    g = np.concatenate([[0.0], np.geomspace(1e-3, 10, 30)])
    s = 0.55 + 0.25 * np.exp(-((np.log10(g + 1e-4) + 0.5) ** 2))
    return ValidationCurve(gammas=g, scores=s, objective="top1", n_queries=42)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_bars_and_curve_png(tmp_path) -> None:
    before, after = results()
    out = plot_comparison(before, after, curve(), tmp_path / "sub" / "nudge.png", gamma=0.3)
    assert out == tmp_path / "sub" / "nudge.png" and out.is_file()
    w, h = png_size(out)
    assert w > 1.8 * h > 500  # two panels side by side
    assert out.stat().st_size > 20_000


def test_bars_only_and_report_like_curve(tmp_path) -> None:
    before, after = results()
    bars = plot_comparison(before, after, path=tmp_path / "bars.png")
    w, h = png_size(bars)
    assert w < 1.5 * h and bars.stat().st_size > 10_000
    report = SimpleNamespace(curve=curve(), gamma=0.31)  # a FinetuneReport has .curve and .gamma
    assert png_size(plot_comparison(before, after, report, tmp_path / "r.png"))[0] > w
    fixed = SimpleNamespace(curve=None, gamma=0.5)  # γ fixed by the user: no curve to draw
    assert png_size(plot_comparison(before, after, fixed, tmp_path / "f.png"))[0] == w


def test_leaves_the_global_backend_alone(tmp_path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    plot_comparison(*results(), curve(), tmp_path / "p.png")
    assert matplotlib.get_backend() == backend
    assert "matplotlib.pyplot" not in sys.modules or backend == matplotlib.get_backend()


def test_bad_inputs(tmp_path) -> None:
    before, after = results()
    with pytest.raises(ConfigError, match="curve: expected a ValidationCurve"):
        plot_comparison(before, after, [0.1, 0.2], tmp_path / "x.png")
    other_k = evaluate(lambda q: [], DATA, k=5)
    with pytest.raises(ConfigError, match="same k"):
        plot_comparison(before, other_k, path=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_gives_install_hint(tmp_path, monkeypatch) -> None:
    before, after = results()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DependencyError, match=r"nudge-rag\[plot\]"):
        plot_comparison(before, after, path=tmp_path / "x.png")


def close_results():
    """Before hits 12 of 20 queries at rank 1 (every mean 0.6), after 14 (0.7): 2 wins."""
    before = evaluate(lambda q: [q.replace("q", "d")] if int(q[1:]) < 12 else ["x"], DATA, k=10)
    after = evaluate(lambda q: [q.replace("q", "d")] if int(q[1:]) < 14 else ["x"], DATA, k=10)
    return before, after


def rendered(tmp_path, *args, **kwargs):
    """The figure plot_comparison saves, drawn (text extents known)."""
    fig = comparison_figure(*args, **kwargs)
    fig.savefig(tmp_path / "fig.png", format="png")
    return fig, fig.canvas.get_renderer()


def test_bars_are_zoomed_to_the_data_not_from_zero(tmp_path) -> None:
    fig, _ = rendered(tmp_path, *close_results())
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert 0.3 < lo < 0.6 and 0.7 < hi <= 1.0
    assert f"axis from {lo:.2f}" in ax.get_ylabel()  # the cut axis is said, not hidden
    assert len(ax.collections) == 4  # the baseline dotted across each pair


def test_deltas_and_wins_losses_ties_are_drawn(tmp_path) -> None:
    fig, _ = rendered(tmp_path, *close_results())
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("+10.0 points") == 4
    assert "0.600" in texts and "0.700" in texts  # the value labels
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "NDCG@10\n2 / 0 / 18" and all(t.endswith("2 / 0 / 18") for t in ticks)
    assert "wins / losses / ties" in ax.get_xlabel()
    before, after = close_results()  # a loss is labelled as one
    texts = [t.get_text() for t in comparison_figure(after, before).axes[0].texts]
    assert texts.count("-10.0 points") == 4
    assert any(t.startswith("-") and t.endswith(" points") for t in texts)


def test_legend_never_covers_labels(tmp_path) -> None:
    for args in (close_results(), results()):
        fig, renderer = rendered(tmp_path, *args, curve())
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent(renderer)
        labels = [*ax.texts, *ax.get_xticklabels(), ax.xaxis.label]
        assert len(ax.texts) == 12  # 8 value labels, 4 deltas
        for text in labels:
            assert not legend.overlaps(text.get_window_extent(renderer)), text.get_text()
        bars = ax.get_window_extent(renderer)
        assert legend.y1 <= bars.y0  # below the axes


def test_gamma_panel_names_the_curves_objective(tmp_path) -> None:
    before, after = results()
    fig, _ = rendered(tmp_path, before, after, curve(), gamma=0.3)
    assert "top1" in fig.axes[1].get_ylabel() and "top-1 accuracy" in fig.axes[1].get_ylabel()
    assert any(t.get_text().startswith("chosen γ = 0.3") for t in fig.axes[1].texts)
    ndcg = ValidationCurve(gammas=np.array([0.0, 0.1, 1.0]), scores=np.array([0.5, 0.6, 0.55]),
                           objective="ndcg@10", n_queries=7)  # fmt: skip
    fig, _ = rendered(tmp_path, before, after, ndcg)
    assert "NDCG@10" in fig.axes[1].get_ylabel() and "top-1" not in fig.axes[1].get_ylabel()
    assert "ndcg@10" in fig.axes[1].get_title()
    assert any(t.get_text().startswith("chosen γ = 0.1") for t in fig.axes[1].texts)  # the best


def test_a_missing_curve_is_said_in_the_gamma_panel(tmp_path) -> None:
    before, after = results()
    note = "γ = 0.5 was fixed: no validation curve"
    fig, _ = rendered(
        tmp_path, before, after, SimpleNamespace(curve=None, gamma=0.5), curve_note=note
    )
    assert len(fig.axes) == 2 and note in fig.axes[1].get_title(loc="left").replace("\n", " ")
    assert len(comparison_figure(before, after).axes) == 1  # the library's default: bars only
