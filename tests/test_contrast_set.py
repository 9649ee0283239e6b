"""Contrast sets read from files: the loader's errors, the selection by the sampling knobs, the
sycophancy persona's written answers, and when a run reads them instead of sampling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.contrast_quality import chance_ceiling, contrast_table, held_out_count
from analysis.experiments.inputs import check_contrast_answers
from analysis.experiments.options import TrackConfig
from analysis.experiments.track import contrast_answers_file
from analysis.experiments.track_stages import write_contrast
from anchor.constitution import load_persona, written_answers_file
from anchor.inputs import InputError
from anchor.stages import Inputs
from probes.contrast import ContrastItem, load_contrast_set, select_answers

ROOT = Path(__file__).resolve().parents[1]


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def row(question="q", label=1, response="yes", pair=0, system="s") -> dict:
    return {"question": question, "pair": pair, "label": label, "system": system, "response": response}


def test_the_loader_names_the_file_line_and_field(tmp_path):
    good = [row(label=1), row(label=0, response="no")]
    assert load_contrast_set(write_lines(tmp_path / "ok.jsonl", good)) == [
        ContrastItem("q", 0, 1, "s", "yes"),
        ContrastItem("q", 0, 0, "s", "no"),
    ]
    cases = {
        "line 2: not valid JSON": [row(), "{oops"],
        "line 2: field 'response'": [row(), {**row(label=0), "response": ""}],
        "line 1: field 'pair'": [{**row(), "pair": "zero"}, row(label=0)],
        "line 2: field 'label' is 2": [row(), row(label=2)],
        "not both labels": [row(), row(response="again")],
    }
    for message, rows in cases.items():
        path = write_lines(tmp_path / "bad.jsonl", rows)
        with pytest.raises(ValueError, match=message) as err:
            load_contrast_set(path)
        assert str(path) in str(err.value)


def test_selection_takes_the_first_answers_of_each_polarity_and_refuses_a_one_sided_question():
    items = [
        ContrastItem(q, 0, label, "s", f"{q}{label}{k}") for q in "ab" for k in range(2) for label in (1, 0)
    ]
    one = select_answers(items, ["a", "b"], per_question=1)
    assert [i.response for i in one] == ["a10", "a00", "b10", "b00"]
    assert len(select_answers(items, ["b"], per_question=5)) == 4
    with pytest.raises(ValueError, match="'c'"):
        select_answers(items + [ContrastItem("c", 0, 1, "s", "only elicited")], ["a", "c"], 1)


def test_the_sycophancy_answers_cover_every_question_twice_per_polarity_under_the_shipped_prompts():
    path = written_answers_file("sycophancy")
    persona = load_persona("sycophancy")
    items = load_contrast_set(path)
    questions = [q for t in persona.traits for q in t.questions]
    assert {i.question for i in items} == set(questions)
    for q in questions:
        assert sorted(i.label for i in items if i.question == q) == [0, 0, 1, 1]
    for i in items:  # each answer carries the prompt it illustrates, for the with-system read
        pair = persona.contrast[i.pair]
        assert i.system == (pair.elicit if i.label else pair.suppress)
    assert len({i.response for i in items}) == len(items)
    # each question's polarities match in length, so no direction can separate them by length alone
    words = {(i.question, i.pair, i.label): len(i.response.split()) for i in items}
    gaps = [words[q, p, 1] - words[q, p, 0] for q, p, label in words if label == 1]
    assert len(gaps) == 100 and max(map(abs, gaps)) <= 5 and abs(sum(gaps) / len(gaps)) < 1
    # the default run's scale: every question, one answer per polarity; 26 held out beat a coin at 0.66
    chosen = select_answers(items, questions, per_question=1)
    assert len(chosen) == 100 and held_out_count(100, 50) == 26
    assert chance_ceiling(26) == pytest.approx(0.661, abs=1e-3)


def test_auto_reads_written_answers_on_the_default_model_only(tiny_dir, tmp_path):
    shipped = written_answers_file("sycophancy")
    assert contrast_answers_file(TrackConfig(persona="sycophancy")) == shipped
    assert contrast_answers_file(TrackConfig(persona="sycophancy", model=tiny_dir)) is None
    assert contrast_answers_file(TrackConfig(persona="sycophancy", contrast_answers="sampled")) is None
    assert contrast_answers_file(TrackConfig(persona="sycophancy", contrast_set="x.jsonl")) is None
    assert contrast_answers_file(TrackConfig(persona="sycophancy", contrast="pairs.json")) is None
    assert contrast_answers_file(TrackConfig(persona="humor")) is None  # ships none: sampled
    assert (
        contrast_answers_file(TrackConfig(persona="sycophancy", model=tiny_dir, contrast_answers="written"))
        == shipped
    )
    with pytest.raises(InputError, match="'humor' ships no written answers"):
        contrast_answers_file(TrackConfig(persona="humor", contrast_answers="written"))
    with pytest.raises(InputError, match="--contrast-answers written and --contrast"):
        check_contrast_answers(
            TrackConfig(persona="sycophancy", contrast_answers="written", contrast="p.json")
        )
    with pytest.raises(InputError, match="--contrast-set: .*nothing.jsonl: no such contrast set"):
        check_contrast_answers(
            TrackConfig(persona="sycophancy", contrast_set=str(tmp_path / "nothing.jsonl"))
        )
    with pytest.raises(InputError, match="--contrast-answers 'typed'"):
        check_contrast_answers(TrackConfig(persona="sycophancy", contrast_answers="typed"))


def test_the_contrast_stage_reads_written_answers_at_the_sampling_scale_without_a_model(tmp_path):
    persona = load_persona("sycophancy")
    inputs = Inputs(
        {
            "persona": {"constitution": ROOT / "anchor" / "constitutions" / "sycophancy.json"},
            "model": "no model is loaded on this path",
            "seed": 0,
            "sampling": {"questions_per_trait": 2, "pairs_per_question": 2, "max_new_tokens": 8},
            "pairs": None,
            "contrast_set": None,
            "filter_judge": None,
            "written": written_answers_file("sycophancy"),
        }
    )
    done = write_contrast(inputs, tmp_path)
    assert done == {
        "answers": "written",
        "source": "sycophancy.answers.jsonl",
        "before_filter": 80,
        "items": 80,
    }
    items = load_contrast_set(tmp_path / "contrast.jsonl")
    assert {i.question for i in items} == {q for t in persona.traits for q in t.questions[:2]}
    assert sum(i.label for i in items) == 40


def test_the_contrast_table_says_written_answers_are_not_the_models_own():
    quality = {
        "origin": "shipped",
        "detail": "sycophancy.contrast.json",
        "pairs": 5,
        "answers": "written",
        "answers_source": "sycophancy.answers.jsonl",
        "layer": 20,
        "held_out_accuracy": 0.96,
        "held_out_auroc": 0.99,
        "held_out_answers": 26,
        "chance_ceiling": 0.66,
        "probe_best_layer": 11,
        "probe_best_accuracy": 1.0,
        "warning": None,
    }
    table = contrast_table(quality)
    assert "written for the persona (sycophancy.answers.jsonl), not sampled" in table.rows[0][3]


def test_fit_directions_reads_the_written_answers_when_asked(tiny_dir, tmp_path):
    out = tmp_path / "directions"
    command = [sys.executable, ROOT / "scripts" / "fit_directions.py", "--persona", "sycophancy",
               "--model", tiny_dir, "--contrast-answers", "written", "--smoke", "--out", out]  # fmt: skip
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["answers"], summary["items"]) == (
        "written",
        40,
    )  # smoke: 2 questions per trait x 1 per polarity
    assert "40 written ones from" in done.stdout and not (out / "contrast.jsonl").exists()  # nothing sampled
    refused = subprocess.run(
        [str(c) for c in [*command[:3], "humor", *command[4:-1], tmp_path / "humor"]],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "'humor' ships no written answers" in refused.stderr
