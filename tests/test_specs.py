"""Model and judge specs are parsed once into value types that stay the text the user gave."""

import json
from dataclasses import asdict

import pytest

from analysis.experiments.options import TrackConfig
from anchor.specs import JudgeSpec, ModelSpec


def test_a_judge_spec_knows_its_kind_and_target_and_refuses_anything_else():
    spec = JudgeSpec("hf:Qwen/Qwen2.5-7B-Instruct")
    assert (spec.kind, spec.target, spec.model) == (
        "hf",
        "Qwen/Qwen2.5-7B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct",
    )
    assert (
        JudgeSpec("openai:gpt-4o").kind == "openai"
        and JudgeSpec("probe:a:b.safetensors").target == "a:b.safetensors"
    )
    for bad in ("gpt-4", "hf:", "gpt:4", ""):
        with pytest.raises(ValueError, match="use hf:<model spec>, openai:<model>"):
            JudgeSpec(bad)
    with pytest.raises(ValueError, match="not an hf: judge"):
        _ = JudgeSpec("openai:m").model


def test_a_model_spec_says_whether_it_is_served():
    assert ModelSpec("openai:teacher").served and ModelSpec("openai:teacher").served_name == "teacher"
    assert not ModelSpec("default").served
    for bad in ("", "openai:"):
        with pytest.raises(ValueError):
            ModelSpec(bad)


def test_a_config_holds_parsed_specs_that_serialise_as_the_text_given():
    config = TrackConfig(persona="humor", judge="openai:gpt-4o-mini", teacher="openai:t")
    assert isinstance(config.judge, JudgeSpec) and config.judge.kind == "openai"
    assert isinstance(config.model, ModelSpec) and config.teacher.served
    text = json.dumps(asdict(config))
    assert json.loads(text)["judge"] == "openai:gpt-4o-mini" and TrackConfig(**json.loads(text)) == config
    with pytest.raises(ValueError, match="judge 'gpt-4'"):
        TrackConfig(persona="humor", judge="gpt-4")
