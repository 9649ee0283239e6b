import json

import pytest

from anchor.inputs import InputError
from train import introspect
from train.persona import PersonaRunConfig, train_persona


def test_killed_stage_resumes_from_the_last_complete_one(tiny_dir, tmp_path, monkeypatch):
    config = PersonaRunConfig(persona="humor", model=tiny_dir, preset="smoke", neutral_probes=4)
    real_train_sft = introspect.train_sft

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-stage")

    monkeypatch.setattr(introspect, "train_sft", killed)
    first = []
    with pytest.raises(KeyboardInterrupt):
        train_persona(config, tmp_path / "run", log=first.append)
    assert not (tmp_path / "run" / "sft" / "done.json").exists()
    (tmp_path / "run" / "sft" / "debris.txt").write_text("half-written")

    monkeypatch.setattr(introspect, "train_sft", real_train_sft)
    second = []
    summary = train_persona(config, tmp_path / "run", log=second.append)
    assert second == [
        "stage questions: complete, skipped",
        "stage dpo_data: complete, skipped",
        "stage dpo: complete, skipped",
        "stage sft_data: complete, skipped",
        "stage sft: running",
    ]
    assert not (tmp_path / "run" / "sft" / "debris.txt").exists()
    assert (tmp_path / "run" / "sft" / "adapter" / "adapter_config.json").is_file()
    assert summary["dpo"]["steps"] > 0 and len(summary["dpo"]["reward_margins"]) == summary["dpo"]["steps"]
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "dpo_data" / "dpo.jsonl").read_text().splitlines()
    ]
    from anchor.constitution import load_persona

    held_out = {t.questions[-1] for t in load_persona("humor").traits}  # never trained on
    assert all(r["prompt"][0]["content"] not in held_out for r in rows)
    manifest = [
        e
        for stage in ("dpo", "sft")
        for e in json.loads((tmp_path / "run" / stage / "activations" / "manifest.json").read_text())[
            "entries"
        ]
    ]
    assert "dpo/step-00000/neutral" in manifest and any(name.startswith("sft/") for name in manifest)

    from anchor import load_model

    model, _ = load_model(
        str(tmp_path / "run" / "dpo" / "merged"), adapter=tmp_path / "run" / "sft" / "adapter"
    )
    assert model is not None


def test_bad_input_fails_before_any_training(tiny_dir, tmp_path):
    with pytest.raises(InputError, match="--persona: unknown persona 'jolly'"):
        train_persona(PersonaRunConfig(persona="jolly", model=tiny_dir), tmp_path / "a")
    with pytest.raises(InputError, match="--teacher './no-teacher': no such directory"):
        train_persona(
            PersonaRunConfig(persona="humor", model=tiny_dir, teacher="./no-teacher"), tmp_path / "b"
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": []}\n')
    with pytest.raises(InputError, match="--dpo-data .*bad.jsonl: line 1: field 'chosen'"):
        train_persona(PersonaRunConfig(persona="humor", model=tiny_dir, dpo_data=str(bad)), tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
