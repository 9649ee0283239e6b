"""Did the contrast set separate the persona? The report states where the pairs came from
(shipped, given or derived), where the answers came from (sampled from the model, written for the
persona, or given) and the held-out probe accuracy they reach, and warns when that is at chance:
a small model may not follow the eliciting prompts at all, and every drift number downstream is
measured along the direction the set defines."""

from __future__ import annotations

import math

from analysis.report import Table
from probes.directions import Directions

Z_ONE_SIDED_95 = 1.645


def chance_ceiling(n_held_out: int) -> float:
    """The accuracy a coin reaches on `n_held_out` answers 5% of the time (normal approximation):
    at or below it the probe is indistinguishable from chance."""
    return 0.5 + Z_ONE_SIDED_95 * 0.5 / math.sqrt(max(n_held_out, 1))


def held_out_count(n_items: int, n_questions: int, test_fraction: float = 0.25) -> int:
    """About how many answers the question-level split holds out (whole questions go to the test side)."""
    test_questions = math.ceil(test_fraction * n_questions)
    return max(1, round(test_questions * n_items / max(n_questions, 1)))


def contrast_quality(
    directions: Directions,
    pairs_done: dict,
    n_items: int,
    n_questions: int,
    layer: int,
    answers_done: dict | None = None,
) -> dict:
    """Origin, pair count and held-out probe accuracy of the run's contrast pairs at `layer`, the
    layer the run reports its drift at (the run's one layer rule), with a `warning` (None when the
    probe beats chance there). The layer where the probe does best is shown beside it, never used:
    picking the best of many layers' accuracies would flatter the pairs."""
    answers_done = answers_done or {}
    answers = answers_done.get("answers", "sampled")
    index = directions.layers.index(layer)
    accuracy, auroc = directions.probe.accuracy[index], directions.probe.auroc[index]
    n_test = held_out_count(n_items, n_questions)
    ceiling = chance_ceiling(n_test)
    warning = None
    if accuracy <= ceiling:
        warning = (
            f"the contrast set ({pairs_done['origin']} pairs, {answers} answers) reaches a held-out probe "
            f"accuracy of {accuracy:.2f} on about {n_test} answers, which is at chance (a coin reaches "
            f"{min(ceiling, 1.0):.2f}); the persona direction may be noise. Give better pairs with --contrast "
            "FILE, a stronger --teacher, more contrast questions, or written answers (--contrast-answers written)."
        )
    return {
        "origin": pairs_done["origin"],
        "detail": pairs_done["detail"],
        "pairs": pairs_done["pairs"],
        "answers": answers,
        "answers_source": answers_done.get("source"),
        "layer": layer,
        "held_out_accuracy": accuracy,
        "probe_best_layer": directions.best_layer(),
        "probe_best_accuracy": max(directions.probe.accuracy),
        "held_out_auroc": auroc,
        "held_out_answers": n_test,
        "chance_ceiling": ceiling,
        "warning": warning,
    }


def contrast_table(quality: dict) -> Table:
    return Table(
        "Contrast pairs",
        [
            "pairs' origin",
            "source",
            "pairs",
            "answers",
            "layer (the run's)",
            "held-out probe accuracy",
            "AUROC",
            "held-out answers",
            "chance ceiling",
            "probe's best layer (accuracy)",
        ],
        [
            [
                quality["origin"],
                quality["detail"],
                quality["pairs"],
                _answers(quality),
                quality["layer"],
                quality["held_out_accuracy"],
                quality["held_out_auroc"],
                quality["held_out_answers"],
                quality["chance_ceiling"],
                f"{quality['probe_best_layer']} ({quality['probe_best_accuracy']:.2f})",
            ]
        ],
        note=f"Warning: {quality['warning']}"
        if quality["warning"]
        else "The probe separates the pairs above chance.",
    )


def _answers(quality: dict) -> str:
    """Where the answers came from, for the table: written answers are not the model's own."""
    answers, source = quality.get("answers", "sampled"), quality.get("answers_source")
    if answers == "written":
        return f"written for the persona ({source}), not sampled; read through the model"
    if answers == "given":
        return f"given ({source})"
    return f"sampled from {source}" if source else "sampled"
