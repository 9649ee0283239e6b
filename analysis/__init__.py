"""Drift metrics, judges, EM evaluation, plots and the main job (`track_drift`).

from analysis import compute_drift, make_judge, track_drift, TrackConfig
"""

import importlib

_EXPORTS = {
    "compute_drift": "analysis.drift_report",
    "anchor_axis": "analysis.drift_report",
    "Judge": "analysis.judge",
    "make_judge": "analysis.judge",
    "EvalConfig": "analysis.em_eval",
    "evaluate": "analysis.em_eval",
    "question_set": "anchor.em_questions",
    "TrackConfig": "analysis.track",
    "track_drift": "analysis.track",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import an entry point on first use: the submodules import `train`, which imports back
    into this package, so eager imports here would make the import order matter."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
