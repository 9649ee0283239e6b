"""Plots that must not misdraw: a missing number is drawn as missing, never as 0."""

import math

from analysis import plots


def test_a_missing_misaligned_rate_is_drawn_as_missing_not_as_zero(tmp_path, monkeypatch):
    drawn = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.append(fig), real_save(fig, path))[1])
    nan = math.nan
    points = [
        {
            "run": "persona",
            "label": "persona",
            "anchor_projection": 1.0,
            "misaligned_rate": 0.1,
            "ci95": [0.0, 0.3],
        },
        {
            "run": "persona",
            "label": "persona + EM end",
            "anchor_projection": 0.6,
            "misaligned_rate": nan,
            "ci95": [nan, nan],
        },
    ]
    path = plots.behaviour_vs_representation(points, tmp_path / "b.png")
    assert path.stat().st_size > 10_000
    ax = drawn[0].axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "persona + EM end (rate missing)" in texts
    assert "rate missing (no scored answers)" in [t.get_text() for t in ax.get_legend().get_texts()]
    # the error bars carry only the measured point; the missing one is a hollow marker
    bars = [line for line in ax.lines if len(line.get_xdata()) and line.get_marker() == "o"]
    assert [list(line.get_xdata()) for line in bars] == [[1.0]]
    hollow = [
        c for c in ax.collections if c.__class__.__name__ == "PathCollection" and c.get_facecolor().size == 0
    ]
    assert len(hollow) == 1 and list(hollow[0].get_offsets()[0]) == [0.6, 0.0]
