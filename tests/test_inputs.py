"""Every entry point checks every input before any model loads: a bad input of each kind fails at
once with a message naming it, loads nothing and leaves no run directory behind."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import load_command

from analysis.experiments.options import TrackConfig
from analysis.inputs import check_judge
from anchor.inputs import InputError, check_model_spec, check_output_dir
from probes.directions import Directions, ProbeFit

ROOT = Path(__file__).resolve().parents[1]
LOADED = "a model was loaded"


@pytest.fixture
def loads(monkeypatch):
    """Any model or tokenizer load (whatever module asks for it) is recorded and refused."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"{LOADED}: {args}")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return calls


def run_script(monkeypatch, capsys, script: str, args: list) -> str:
    """Run a script's main in this process (so the load guard applies); returns its error output."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        load_command(script)()
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def bad(tmp_path, tiny_dir):
    """One broken input of each kind."""
    bad_rows = tmp_path / "bad_rows.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad_rows.write_text(
        json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
    )
    constitution = tmp_path / "broken.txt"
    constitution.write_text(json.dumps([{"trait": "I am terse.", "questions": []}]))
    contrast = tmp_path / "contrast.json"
    contrast.write_text(json.dumps({"elicit": ["a", "b"], "suppress": ["c"]}))
    questions = tmp_path / "questions.yaml"
    questions.write_text("- id: q1\n  paraphrases: []\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    unfinished = tmp_path / "unfinished_persona_run"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"persona": "humor", "model": tiny_dir}))
    return {
        "rows": bad_rows,
        "constitution": constitution,
        "contrast": contrast,
        "questions": questions,
        "under_file": a_file / "run",
        "no_model": tmp_path / "no_such_model",
        "unfinished": unfinished,
    }


def finished_persona_run(path: Path, persona: str, model: str) -> Path:
    """The files that make a train_persona.py run count as finished (no weights needed to check)."""
    for name in ("sft/done.json", "dpo/merged/config.json", "sft/adapter/adapter_config.json"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("{}")
    (path / "config.json").write_text(json.dumps({"persona": persona, "model": model}))
    return path


def cases(script: str, b: dict, tiny: str, tmp: Path) -> list[tuple[dict, str]]:
    """(flag overrides, expected message) per bad input the script takes."""
    model = [({"--model": b["no_model"]}, "--model .*no_such_model.*no such directory")]
    judge = [
        ({"--judge": "gpt-4"}, "--judge 'gpt-4': use hf:"),
        ({"--judge": "openai:gpt-4o"}, "--judge 'openai:gpt-4o': no server URL; pass --judge-base-url"),
        ({"--judge": f"hf:{b['no_model']}"}, "--judge 'hf:.*no_such_model': model"),
        ({"--judge": "probe:absent.safetensors"}, "no directions file at absent.safetensors"),
    ]
    out = [({"--out": b["under_file"]}, "--out .*a_file is a file, so the directory cannot be created")]
    persona = [
        ({"--persona": "nobody"}, "--persona: unknown persona 'nobody'"),
        (
            {"--persona": b["constitution"]},
            "--persona .*broken.txt.*field 'questions' must be a non-empty list",
        ),
    ]
    if script == "track_drift.py":
        other = finished_persona_run(tmp / "sarcasm_run", "sarcasm", tiny)
        return [
            *persona,
            *model,
            *judge,
            *out,
            ({"--contrast": b["contrast"]}, "--contrast .*'elicit' has 2 prompts and 'suppress' 1"),
            ({"--contrast": tmp / "absent.json"}, "--contrast .*no such contrast file"),
            ({"--teacher": b["no_model"]}, "--teacher .*no_such_model"),
            (
                {"--em-dataset": b["rows"]},
                "--em-dataset .*bad_rows.jsonl: line 2: .messages. must be a list of at least two",
            ),
            ({"--control": "secur"}, "--control 'secur': unknown dataset 'secur'"),
            ({"--em-rows": 0}, "--em-rows 0: must be 1 or more"),
            ({"--contrast-pairs-per-question": 0}, "--contrast-pairs-per-question 0: must be 1 or more"),
            (
                {"--contrast-set": tmp / "absent.jsonl"},
                "--contrast-set: .*absent.jsonl: no such contrast set",
            ),
            ({"--persona-run": b["unfinished"]}, "--persona-run .*the run is not finished"),
            ({"--persona-run": other}, "--persona-run .*trained persona 'sarcasm', not 'humor'"),
        ]
    if script == "train_persona.py":
        return [
            *persona,
            *model,
            *out,
            ({"--teacher": b["no_model"]}, "--teacher .*no_such_model"),
            ({"--dpo-data": b["rows"]}, "--dpo-data .*bad_rows.jsonl: line 1: field 'prompt'"),
        ]
    if script == "finetune_em.py":
        return [
            *model,
            *out,
            ({"--dataset": b["rows"]}, "--dataset .*line 2: .messages. must be a list of at least two"),
            ({"--dataset": "insecur"}, "--dataset 'insecur': unknown dataset"),
            ({"--adapter": tmp}, "--adapter .*no adapter_config.json"),
            ({"--persona-run": b["unfinished"]}, "--persona-run .*the run is not finished"),
            (
                {"--contrast": b["rows"]},
                "--contrast .*bad_rows.jsonl: line 1: expected an object with exactly",
            ),
            ({"--rank": 0}, "--preset/--rank: lora_rank must be >= 1"),
        ]
    if script == "eval_em.py":
        return [
            *model,
            *judge,
            *out,
            ({"--judge": "openai:m", "--judge-base-url": "http://localhost:1/v1"}, "'openai:m': no API key"),
            ({"--em-run": tmp}, "--em-run .*not a finished finetune_em.py run"),
            ({"--adapter": tmp}, "--adapter .*no adapter_config.json"),
            ({"--questions": b["questions"]}, "--questions .*questions.yaml: entry 0 .*'paraphrases'"),
        ]
    if script == "steer.py":
        eval_judge = [
            ({"--eval-judge": flags["--judge"]}, message.replace("--judge '", "--eval-judge '"))
            for flags, message in judge
        ]
        return [
            ({"--run": tmp / "nowhere"}, "--run .*not a finished track_drift.py run"),
            *eval_judge,
            *out,
            ({"--layers": 9}, "--layers/--read-layer 9: the run's directions cover layers 0..1"),
        ]
    if script == "fit_directions.py":
        return [*persona, *model, *out]
    assert script == "diversity_sweep.py"
    return [
        *persona,
        *model,
        *judge,
        *out,
        ({"--em-dataset": b["rows"]}, "--em-dataset .*line 2"),
        ({"--questions": 10_000}, "--questions 10000: the persona's pool has"),
    ]


def finished_track_run(path: Path, tiny: str) -> Path:
    """The files steer.py needs to accept a run (a two-layer directions file, no activations)."""
    (path / "analysis").mkdir(parents=True)
    (path / "contrast").mkdir()
    config = TrackConfig(persona="humor", model=tiny, judge=f"hf:{tiny}")
    (path / "config.json").write_text(json.dumps(config.__dict__))
    for name in ("analysis/done.json", "analysis/summary.json", "contrast/contrast.jsonl"):
        (path / name).write_text("{}")
    probe = ProbeFit(torch.zeros(2, 4), torch.zeros(2), [0.5, 0.5], [0.5, 0.5])
    Directions([0, 1], torch.zeros(2, 4), torch.zeros(2, 4), probe, {"config": {"model": tiny}}).save(
        path / "analysis" / "directions.safetensors"
    )
    return path


def base_args(script: str, tiny: str, tmp: Path) -> dict:
    out = tmp / "out"
    common = {"--model": tiny, "--judge": f"hf:{tiny}", "--out": out}
    return {
        "track_drift.py": {"--persona": "humor", **common, "--smoke": None},
        "train_persona.py": {"--persona": "humor", "--model": tiny, "--out": out, "--smoke": None},
        "finetune_em.py": {"--dataset": "insecure", "--model": tiny, "--out": out, "--smoke": None},
        "eval_em.py": {**common, "--smoke": None},
        "steer.py": {"--run": finished_track_run(tmp / "track_run", tiny), "--out": out, "--smoke": None},
        "diversity_sweep.py": {"--persona": "humor", **common, "--questions": 20, "--smoke": None},
        "fit_directions.py": {"--persona": "humor", "--model": tiny, "--out": out, "--smoke": None},
    }[script]


def argv(flags: dict) -> list:
    return [x for flag, value in flags.items() for x in ([flag] if value is None else [flag, value])]


SCRIPTS = [
    "track_drift.py",
    "train_persona.py",
    "finetune_em.py",
    "eval_em.py",
    "steer.py",
    "diversity_sweep.py",
    "fit_directions.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_bad_input_fails_before_any_load_naming_it(
    script, tiny_dir, tmp_path, bad, loads, monkeypatch, capsys
):
    base = base_args(script, tiny_dir, tmp_path)
    checked = cases(script, bad, tiny_dir, tmp_path)
    assert len(checked) >= 3
    for overrides, message in checked:
        error = run_script(monkeypatch, capsys, script, argv({**base, **overrides}))
        assert re.search(message, error), (overrides, error[-600:])
        assert "Traceback" not in error
        assert not (tmp_path / "out").exists(), f"{script} {overrides} left {tmp_path / 'out'} behind"
    assert loads == []


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "steer.py"])
def test_good_inputs_pass_the_checks_and_reach_the_model_load(script, tiny_dir, tmp_path, loads, monkeypatch):
    """The guard above is live: with valid inputs each script gets as far as loading a model."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, argv(base_args(script, tiny_dir, tmp_path)))])
    with pytest.raises(AssertionError, match=LOADED):
        load_command(script)()
    assert len(loads) == 1


def test_model_specs_are_resolved_without_loading(tiny_dir, tmp_path, loads):
    check_model_spec(tiny_dir)
    check_model_spec("Qwen/Qwen2.5-7B-Instruct")  # a hub name is accepted as such while online
    (tmp_path / "no_tokenizer").mkdir()
    (tmp_path / "no_tokenizer" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="--model .*no_tokenizer.*has no tokenizer"):
        check_model_spec(str(tmp_path / "no_tokenizer"))
    with pytest.raises(InputError, match="not a hub name"):
        check_model_spec("a/b/c")
    assert loads == []


def test_openai_judge_needs_a_url_and_a_key(monkeypatch, loads):
    with pytest.raises(InputError, match="no server URL"):
        check_judge("openai:gpt-4o")
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000")
    with pytest.raises(InputError, match="is not http"):
        check_judge("openai:gpt-4o")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    with pytest.raises(InputError, match="set OPENAI_API_KEY"):
        check_judge("openai:gpt-4o")
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    check_judge("openai:gpt-4o")


def test_output_dir_checks_create_nothing(tmp_path):
    check_output_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file")
