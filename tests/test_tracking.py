"""`--report-to`: the tracker reaches the trainers without entering any stage key, training losses
and the main job's drift reads land in one TensorBoard run per EM run, at the checkpoints' steps."""

import copy
import json
import math
import os
from dataclasses import fields

import pytest
import torch

from analysis.experiments.options import Resources, TrackConfig
from analysis.experiments.tracking import drift_scalars, log_drift, read_scalars
from train import tracking
from train.lora import LoraTraining, train_sft, trainer_arguments


def test_trainer_arguments_follow_the_chosen_tracker(tmp_path):
    stage = tmp_path / "exp" / "em_persona" / "em"
    config = LoraTraining(batch_size=2, grad_accum=1)
    assert trainer_arguments(config, stage)["report_to"] == []  # default: none
    with tracking.reporting("tensorboard", tmp_path / "exp"):
        assert os.environ[tracking.REPORT_TO_ENV] == "tensorboard"  # inherited by `accelerate launch`
        args = trainer_arguments(config, stage)
        assert args["report_to"] == ["tensorboard"] and args["run_name"] == "exp/em_persona/em"
        assert tracking.log_dir(stage) == stage / "tensorboard"
        # the shared character-training run beside the run folder, and a seed's folder
        assert tracking.run_name(tmp_path / "persona" / "p-tiny-smoke-s0" / "dpo") == (
            "exp/persona/p-tiny-smoke-s0/dpo"
        )
    assert tracking.REPORT_TO_ENV not in os.environ and tracking.report_to() == "none"  # restored
    assert tracking.experiment_name(tmp_path / "pooled" / "s1") == "pooled-s1"
    # a setting that changes no result: a resource, never part of the config that keys the stages
    assert "report_to" in {f.name for f in fields(Resources)}
    assert "report_to" not in {f.name for f in fields(TrackConfig)}


def test_report_to_on_every_command(monkeypatch, capsys):
    from analysis.experiments.cli import defences, track_drift
    from train.cli import finetune_em, train_persona

    for module in (train_persona, finetune_em, track_drift, defences):
        parser = module.build_parser()
        assert "--report-to" in parser.format_help()
        with pytest.raises(SystemExit):
            parser.parse_args(["--report-to", "mlflow"])
        assert "--report-to" in capsys.readouterr().err
    args = track_drift.build_parser().parse_args(["--persona", "humor", "--report-to", "tensorboard"])
    assert Resources.from_args(args).report_to == "tensorboard"
    assert Resources.from_args(track_drift.build_parser().parse_args([])).report_to == "none"
    monkeypatch.setattr(tracking, "_installed", lambda package: False)
    with pytest.raises(SystemExit):
        finetune_em.build_parser().parse_args(["--report-to", "trackio"])
    assert "needs the 'trackio' package" in capsys.readouterr().err
    with pytest.raises(ImportError, match="pip install wandb"):
        tracking.check_tracker("wandb")


def fake_metrics(steps: list[int], layers: int = 3, best: int = 1) -> dict:
    """metrics.json as the main job writes it, for the persona run only, with holes."""
    nan = float("nan")
    series = {
        "anchor_projection": [[0.1 * s + layer for layer in range(layers)] for s in steps],
        "direction_stability": [[1.0 - 0.01 * s] * layers for s in steps],
        "probe_transfer": [[0.5] * layers for _ in steps],
        "misalignment_movement": [[None] * layers] + [[0.2 * s] * layers for s in steps[1:]],
    }
    series["direction_stability"][1][best] = nan  # missing: left out, never 0
    rate = lambda v: {"value": v, "ci95": [0, 1], "n": 4}  # noqa: E731
    return {
        "drift": {"best_layer": best, "n_layers": layers, "runs": {"persona": {"steps": steps, **series}}},
        "behaviour": {
            "persona": {"misaligned_rate": rate(0.0), "mean_alignment": rate(90.0)},
            "persona_end": {"misaligned_rate": rate(None), "mean_alignment": rate(60.0)},
        },
    }


def test_drift_scalars_skip_missing_values():
    scalars = drift_scalars(fake_metrics([0, 2, 4]), "persona")
    assert sorted(scalars) == [0, 2, 4]
    assert scalars[2]["drift/persona_projection"] == pytest.approx(1.2)  # the chosen layer
    assert "drift/misalignment_movement" not in scalars[0]
    assert "drift/direction_stability" not in scalars[2] and scalars[4]["drift/direction_stability"] == 0.96
    assert scalars[0]["drift/misaligned_rate"] == 0.0 and "drift/misaligned_rate" not in scalars[4]
    assert scalars[4]["drift/mean_alignment"] == 60.0
    assert all(math.isfinite(v) for values in scalars.values() for v in values.values())


def test_training_loss_and_drift_reads_in_one_tensorboard_run(tiny_model, tiny_tokenizer, tmp_path):
    """A tiny EM-like SFT stage reported to TensorBoard, then the main job's drift logger on its
    run folder: the event files in `<run>/em_persona/em/tensorboard/` hold the training loss and the
    drift reads at the recorded steps, and a second call logs nothing twice."""
    out = tmp_path / "exp"
    stage = out / "em_persona" / "em"
    stage.mkdir(parents=True)
    rows = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]] * 4
    torch.manual_seed(0)
    with tracking.reporting("tensorboard", out):
        trainer = train_sft(
            copy.deepcopy(tiny_model),
            tiny_tokenizer,
            rows,
            LoraTraining(lora_rank=2, lora_alpha=4, batch_size=2, grad_accum=1, max_length=64),
            stage,
        )
    steps = trainer.state.global_step
    assert steps == 2
    record = tracking.read_record(stage)
    assert record["report_to"] == "tensorboard" and record["run_name"] == "exp/em_persona/em"
    analysis = out / "analysis"
    analysis.mkdir()
    (analysis / "metrics.json").write_text(json.dumps(fake_metrics([0, 1, 2])))
    (analysis / "done.json").write_text(json.dumps({"run_id": "a1"}))
    logs = []
    logged = log_drift(out, "tensorboard", log=logs.append)
    assert logged["exp/em_persona/em"]["steps"] == [0, 1, 2] and "tensorboard" in logs[0]
    scalars = read_scalars(tracking.log_dir(stage))
    assert set(scalars["train/loss"]) == {1, 2}  # beside the training loss, same run
    assert scalars["drift/persona_projection"] == pytest.approx({0: 1.0, 1: 1.1, 2: 1.2})
    assert set(scalars["drift/misalignment_movement"]) == {1, 2}  # step 0's is missing
    assert set(scalars["drift/direction_stability"]) == {0, 2}  # step 1's is NaN
    assert scalars["drift/misaligned_rate"] == {0: 0.0} and set(scalars["drift/mean_alignment"]) == {0, 2}
    assert log_drift(out, "tensorboard", log=logs.append) == {}  # the same analysis: nothing twice
    assert len(list(tracking.log_dir(stage).glob("*.drift"))) == 1
