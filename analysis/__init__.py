"""Drift metrics, judges, EM evaluation, plots and the main job (`track_drift`).

from analysis import compute_drift, make_judge, track_drift, TrackConfig
"""

from anchor.lazy import lazy_exports

_EXPORTS = {
    "compute_drift": "analysis.drift_report",
    "anchor_axis": "analysis.drift_report",
    "Judge": "analysis.judge",
    "make_judge": "analysis.judge",
    "EvalConfig": "analysis.em_eval",
    "evaluate": "analysis.em_eval",
    "question_set": "anchor.em_questions",
    "TrackConfig": "analysis.experiments.options",
    "track_drift": "analysis.experiments.track",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
