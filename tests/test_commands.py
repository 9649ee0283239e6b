"""The command layer: every script is a thin shim over a library `main` that the package also installs
as an entry point; the main job's options have one definition that every experiment command takes
(or reads from `--run`); and the modules directly under `analysis/` never load `train` or `trl`."""

import argparse
import importlib
import json
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from analysis.distilled_judge import default_judge
from analysis.experiments.options import TrackConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))
# Commands whose parser carries the main job's options; steer and validate_direction take `--run` only.
MAIN_JOB = {
    "track_drift": "analysis.experiments.cli.track_drift",
    "defences": "analysis.experiments.cli.defences",
    "diversity_sweep": "analysis.experiments.cli.diversity_sweep",
}
RUN_ONLY = {  # and the main-job names they keep: steer's size, validate_direction's --model (the run's)
    "steer": ("analysis.experiments.cli.steer", {"--smoke"}),
    "validate_direction": ("analysis.experiments.cli.validate_direction", {"--model"}),
}


def test_every_script_is_a_shim_over_an_installed_entry_point():
    points = {p.name: p.value for p in entry_points(group="console_scripts") if p.name.startswith("anchor-")}
    assert len(SCRIPTS) == 20
    for script in SCRIPTS:
        text = script.read_text()
        assert "sys.path" not in text and len(text.splitlines()) <= 8, script.name
        module = re.search(r"^from (\S+) import main$", text, re.M).group(1)
        assert points[f"anchor-{script.stem.replace('_', '-')}"] == f"{module}:main"
        assert callable(importlib.import_module(module).main)
    for module in [
        *MAIN_JOB.values(),
        *(m for m, _ in RUN_ONLY.values()),
    ]:  # no library module edits sys.path either
        assert "sys.path" not in Path(importlib.import_module(module).__file__).read_text()


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        flag: action
        for action in parser._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }


def _same(a: argparse.Action, b: argparse.Action) -> bool:
    keys = ("dest", "help", "type", "default", "choices", "nargs", "const", "required")
    return type(a) is type(b) and all(getattr(a, k) == getattr(b, k) for k in keys)


def test_the_main_jobs_options_come_from_one_definition():
    reference = argparse.ArgumentParser()
    TrackConfig.add_arguments(reference, run_flag=True)
    main_job = _options(reference)
    assert {"--persona", "--judge", "--teacher", "--filter-contrast", "--judge-calibration"} <= set(main_job)
    for name, module in MAIN_JOB.items():
        options = _options(importlib.import_module(module).build_parser())
        expected = set(main_job) - ({"--run"} if name == "track_drift" else set())
        assert expected <= set(options), (name, expected - set(options))
        for flag in expected:
            assert _same(options[flag], main_job[flag]), (name, flag)
    for name, (module, kept) in RUN_ONLY.items():  # a finished run's options come from its config.json
        options = _options(importlib.import_module(module).build_parser())
        assert "--run" in options
        assert set(options) & set(main_job) - {"--run"} == kept, name


def test_analysis_modules_never_load_train_or_trl():
    """Each module directly under analysis/, imported in turn in one fresh process: the first one
    after which `train` or `trl` is loaded is the one that pulled it in."""
    modules = sorted(p.stem for p in (ROOT / "analysis").glob("*.py") if p.stem != "__init__")
    assert {"drift_report", "monitor", "judge", "em_eval", "stats", "report"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('analysis.' + name)\n"
        "    pulled = [m for m in ('train', 'trl') if m in sys.modules]\n"
        "    if pulled:\n"
        "        sys.exit(f'analysis.{name} loaded {pulled}')\n"
        "print('ok', len(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout + done.stderr[-2000:]


@pytest.fixture
def finished_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    config = TrackConfig(
        persona="humor", judge="openai:gpt-4o-mini", teacher="hf:teacher", filter_contrast=True
    )
    (run / "config.json").write_text(json.dumps(config.__dict__))
    return run


def _parse(module: str, argv: list[str]) -> argparse.Namespace:
    return importlib.import_module(module).build_parser().parse_args(argv)


def test_run_gives_every_option_and_a_contradicting_flag_names_both_values(finished_run):
    from anchor.inputs import InputError

    args = _parse(MAIN_JOB["defences"], ["--run", str(finished_run)])
    assert TrackConfig.from_args(args) == TrackConfig.load(finished_run)  # judge, teacher, filter kept
    same = _parse(MAIN_JOB["defences"], ["--run", str(finished_run), "--judge", "openai:gpt-4o-mini"])
    assert TrackConfig.from_args(same).filter_contrast  # auto follows the run's openai: judge
    for flags, message in [
        (["--teacher", "hf:other"], "--teacher 'hf:other' contradicts --run .*whose teacher is 'hf:teacher'"),
        (["--judge", "hf:default"], "--judge 'hf:default' contradicts --run .*'openai:gpt-4o-mini'"),
        (["--smoke"], "--smoke .*contradicts --run"),
    ]:
        args = _parse(MAIN_JOB["diversity_sweep"], ["--run", str(finished_run), *flags])
        with pytest.raises(InputError, match=message):
            TrackConfig.from_args(args)


def test_validate_direction_refuses_a_model_that_is_not_the_runs(finished_run, capsys):
    from analysis.experiments.cli.validate_direction import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--run", str(finished_run), "--model", "other"])
    assert "--model 'other' contradicts --run" in capsys.readouterr().err


def test_the_auto_rules_and_smoke_settings_apply_without_a_run():
    args = _parse(MAIN_JOB["track_drift"], ["--persona", "humor", "--judge", "openai:m", "--smoke"])
    config = TrackConfig.from_args(args)
    assert config.filter_contrast and config.smoke and config.eval_samples == 1
    assert (config.contrast_questions_per_trait, config.contrast_pairs_per_question) == (5, 1)
    flags = ["--persona", "sycophancy", "--contrast-pairs-per-question", "2", "--smoke"]
    assert TrackConfig.from_args(_parse(MAIN_JOB["track_drift"], flags)).contrast_pairs_per_question == 2
    off = TrackConfig.from_args(
        _parse(MAIN_JOB["track_drift"], ["--persona", "humor", "--filter-contrast", "on"])
    )
    assert off.filter_contrast and off.judge == default_judge() and not off.smoke
