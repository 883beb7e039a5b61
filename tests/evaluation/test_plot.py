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
