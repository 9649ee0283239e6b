"""The diversity sweep (analysis.experiments.diversity_sweep, run through its command) with track_drift replaced by a double that records its configs: the
tiny model embeds the questions and samples the shared contrast set for real."""

import json
from pathlib import Path

import pytest

from analysis.experiments.cli.diversity_sweep import main, parse_args
from anchor.constitution import Trait, available_personas, load_persona, save_constitution
from anchor.questions import held_out_questions, training_pool

ROOT = Path(__file__).resolve().parents[1]


def load_sweep():
    from analysis.experiments import diversity_sweep

    return diversity_sweep


@pytest.fixture
def sweep(monkeypatch):
    """The sweep with a track_drift double."""
    module = load_sweep()
    module.calls = []

    def fake_track(config, out, **_):
        module.calls.append((config, Path(out)))
        return {
            "interaction": {"misalignment": {"interaction": {"value": 0.5, "ci95": [0.4, 0.6], "n": 1}}},
            "table": [{"model": "persona + EM", "misaligned_after": 0.1}],
        }

    monkeypatch.setattr(module, "track_drift", fake_track)
    real_sample = module.sample_contrast
    module.sampled = []

    def counting_sample(questions, *args, **kwargs):
        module.sampled.append(list(questions))
        return real_sample(questions, *args, **kwargs)

    monkeypatch.setattr(module, "sample_contrast", counting_sample)
    return module


def test_pool_never_holds_a_held_out_question_of_any_persona(tmp_path):
    for name in available_personas():
        traits = load_persona(name).traits
        pool, groups = training_pool(traits)
        assert not set(held_out_questions(traits)) & set(pool), name
        assert len(pool) == len(set(pool)) and sorted(set(groups)) == list(range(len(traits)))
    # expanded: the last of all_questions is a generated one, not the held-out one
    expanded = [
        Trait("A", ["a1?", "a2?", "held A?"], ["g1?", "g2?"]),
        Trait("B", ["b1?", "held B?"], ["g3?"]),
    ]
    pool, _ = training_pool(expanded)
    assert "held A?" not in pool and "held B?" not in pool and {"g2?", "g3?"} <= set(pool)


def test_every_level_and_seed_shares_one_contrast_set_and_the_base_axis(sweep, tiny_dir, tmp_path):
    out = tmp_path / "sweep"
    argv = ["--persona", "humor", "--model", tiny_dir, "--judge", f"hf:{tiny_dir}", "--questions", "20"]
    argv += ["--seeds", "0", "1", "--smoke", "--out", str(out)]
    main(argv)

    contrast = out / "contrast" / "contrast.jsonl"
    assert len(sweep.calls) == 6 and len(sweep.sampled) == 1  # sampled once, for every level and seed
    assert {(c.contrast_set, c.axis) for c, _ in sweep.calls} == {(str(contrast), "base")}
    assert {(c.seed, Path(c.persona).parent.name) for c, _ in sweep.calls} == {
        (s, f"{level}-s{s}") for s in (0, 1) for level in ("low", "mid", "high")
    }
    assert all(c.smoke and c.model == tiny_dir for c, _ in sweep.calls)

    persona = load_persona("humor")
    held_out = held_out_questions(persona.traits)
    pool, _ = training_pool(persona.traits)
    rows = [json.loads(line) for line in contrast.read_text().splitlines()]
    assert rows and {r["question"] for r in rows} <= set(pool)  # contrast questions are never held out
    assert set(rows[0]) == {"question", "pair", "label", "system", "response"}

    for config, _ in sweep.calls:
        level = load_persona(config.persona)
        assert [t.trait for t in level.traits] == [t.trait for t in persona.traits]
        assert held_out_questions(level.traits) == held_out  # every level is evaluated on the same ones
        trained = [t.all_questions[:-1] for t in level.traits]
        assert [len(q) for q in trained] == [2] * 10  # every trait, equally
        assert {q for qs in trained for q in qs} <= set(pool)

    result = json.loads((out / "sweep.json").read_text())
    assert result["contrast_set"] == str(contrast) and result["axis"] == "base"
    for row in result["results"]:
        assert row["diversity"]["questions_per_trait"] == [2] * 10
        assert 0 <= row["diversity"]["within_trait_cosine_distance"] <= 2
    within = {
        (r["level"], r["seed"]): r["diversity"]["within_trait_cosine_distance"] for r in result["results"]
    }
    # two per trait from the same seeded start: its nearest neighbour (low) or its farthest (high)
    assert all(within["low", s] <= within["high", s] for s in (0, 1))
    assert result["training_warning"]  # smoke trains on one question per trait
    pooled = result["by_level"]["low"]["interaction"]  # over the two seeds
    assert pooled["n"] == 2 and pooled["value"] == 0.5
    for plot in ("interaction_vs_diversity.png", "misaligned_vs_diversity.png"):
        assert (out / plot).stat().st_size > 10_000

    # resumable: the contrast set is reused while its settings match, resampled when they change
    main(argv)
    assert len(sweep.sampled) == 1
    main(argv[:-3] + ["--contrast-seed", "3", "--smoke", "--out", str(out)])
    assert len(sweep.sampled) == 2
    assert json.loads((out / "contrast" / "done.json").read_text())["inputs"]["seed"] == 3
    assert len(list((out / "superseded").glob("contrast@*"))) == 1  # the first set is kept


def test_every_level_takes_the_template_options_and_its_own_persona_seed_and_axis(tmp_path):
    from analysis.experiments.options import TrackConfig

    sweep = load_sweep()
    template = TrackConfig(persona="humor", teacher="t", em_rows=7, judge="hf:x")
    level = sweep.level_config(template, tmp_path / "p.json", 3, tmp_path / "c.jsonl")
    assert (level.persona, level.seed, level.contrast_set, level.axis) == (
        str(tmp_path / "p.json"), 3, str(tmp_path / "c.jsonl"), "base",
    )  # fmt: skip
    assert (level.teacher, level.em_rows, level.judge) == ("t", 7, "hf:x")


def test_level_constitution_keeps_held_out_last_and_refuses_to_train_on_it(tmp_path):
    sweep = load_sweep()
    path = save_constitution(
        [Trait("A", ["a1?", "a2?", "held A?"], ["g1?"]), Trait("B", ["b1?", "held B?"])], tmp_path / "p.json"
    )
    persona = load_persona(path)
    level = sweep.level_constitution(
        persona, str(path), [["g1?"], ["b1?"]], tmp_path / "level" / "persona.json"
    )
    traits = load_persona(level).traits
    assert [t.questions for t in traits] == [["g1?", "held A?"], ["b1?", "held B?"]]
    with pytest.raises(AssertionError, match="held-out"):
        sweep.level_constitution(
            persona, str(path), [["held B?"], ["b1?"]], tmp_path / "bad" / "persona.json"
        )


@pytest.mark.parametrize(
    "questions, message",
    [("8", "cannot cover 10 traits with 8 questions"), ("12", "ask for at least 20, two per trait")],
)
def test_too_few_questions_per_trait_fail_before_any_work(questions, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--persona", "humor", "--questions", questions, "--out", str(tmp_path / "x")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_training_size_warning_says_when_character_training_resizes_the_sets():
    sweep = load_sweep()
    assert "cut to its first 1 per trait" in sweep.training_size_warning([2, 2], smoke=True)
    assert sweep.training_size_warning([1, 0], smoke=True) is None  # one (or none) is what smoke takes
