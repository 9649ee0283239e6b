"""`--print-config` shows the published recipes, resolved, without loading a model."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from train.em import EMRunConfig, em_plan
from train.persona import PersonaRunConfig, persona_plan

ROOT = Path(__file__).resolve().parents[1]


def test_em_paper_preset_is_the_em_papers_recipe():
    plan = em_plan(EMRunConfig(dataset="insecure", preset="paper"))
    t = plan["training"]
    assert (t["lora_rank"], t["lora_alpha"], t["use_rslora"], t["target_modules"]) == (
        32,
        64,
        True,
        "all-linear",
    )
    assert (t["learning_rate"], t["batch_size"] * t["grad_accum"], t["epochs"]) == (1e-5, 16, 1.0)
    assert (t["warmup_steps"], t["weight_decay"], t["lr_scheduler"], t["max_length"]) == (
        5,
        0.01,
        "linear",
        2048,
    )
    assert t["optimizer"] == "adamw_8bit" and plan["optimizer_here"] == "adamw_torch_fused"  # no CUDA here
    assert plan["data"]["rows"] == 1200 and plan["data"]["planned_optimizer_steps"] == 75  # every row


def test_rank1_preset_is_one_down_proj_adapter_at_a_middle_layer(tiny_dir):
    t = em_plan(EMRunConfig(model=tiny_dir, preset="rank1"))["training"]
    assert (t["lora_rank"], t["target_modules"], t["layers"], t["use_rslora"]) == (
        1,
        ("down_proj",),
        (2,),
        True,
    )
    assert t["record_every"] == 5
    assert em_plan(EMRunConfig(model=tiny_dir, preset="rank1", layer=3))["training"]["layers"] == (3,)


def test_rank1_preset_trains_only_its_layer(tiny_dir, tmp_path):
    from train.em import em_probe_sets, finetune_em

    config = EMRunConfig(dataset="insecure", model=tiny_dir, preset="rank1", max_rows=4, record_every=100)
    finetune_em(config, tmp_path / "run", em_probe_sets(n_neutral=2, questions="main"), log=lambda _: None)
    adapter = json.loads((tmp_path / "run" / "em" / "adapter" / "adapter_config.json").read_text())
    assert (
        adapter["r"] == 1
        and adapter["target_modules"] == ["down_proj"]
        and adapter["layers_to_transform"] == [2]
    )
    assert adapter["use_rslora"] is True


def test_persona_paper_preset_runs_at_open_character_trainings_scale():
    plan = persona_plan(PersonaRunConfig(persona="sycophancy", preset="paper"))
    data = plan["data"]
    assert data["planned_dpo_pairs"] >= 2500 and data["samples_per_prompt"] == 5
    assert data["questions_per_trait"] == 50 and data["generic_pool"] >= 1000
    assert (data["reflections"], data["dialogues"]) == (10_000, 2_000)
    assert plan["sft"]["max_length"] == 3072 and plan["sft"]["warmup_ratio"] == 0.1
    assert plan["dpo"]["lora_rank"] == 64 and plan["dpo"]["batch_size"] * plan["dpo"]["grad_accum"] == 32
    assert plan["warning"] and "own teacher" in plan["warning"]
    assert (
        persona_plan(PersonaRunConfig(persona="sycophancy", preset="paper", teacher="default"))["warning"]
        is None
    )


def test_train_persona_print_config_loads_no_model():
    out = subprocess.run(
        [
            sys.executable,
            ROOT / "scripts" / "train_persona.py",
            "--persona",
            "humor",
            "--preset",
            "paper",
            "--print-config",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    plan = json.loads(out.stdout)
    assert plan["preset"] == "paper" and plan["planned_optimizer_steps"]["dpo"] > 0
    assert "Loading weights" not in out.stderr


def test_defence_defaults_resolve_to_the_papers_layers():
    from analysis.experiments.defence_arms import CPU_ARMS, PAPER_ARMS, DefenceSettings, band, steer_layer

    d = DefenceSettings()
    # Persona Vectors' layer, hidden_states[20] of Qwen2.5-7B's 28 = block 19; the coefficient is
    # this project's share of the residual norm (their 5.0 is on the unnormalised vector)
    assert d.steer_coefficient == 0.25 and steer_layer(28, d.steer_depth) == 19
    # The Assistant Axis: p25 floor on Qwen3-32B's layers 46-53 of 64 (as a share of depth elsewhere;
    # their Llama-3.3-70B band, 56-71 of 80, is wider than this share gives)
    assert d.cap_quantile == 0.25 and band(64, d.cap_band) == tuple(range(46, 54))
    assert band(80, d.cap_band) == tuple(range(58, 68)) and band(30, d.cap_band) == (22, 23, 24)
    assert band(4, d.cap_band) == (3,)  # never empty
    assert d.interleave_share == 0.1
    assert {"persona+preventative_steering", "persona+kl", "persona+inoculation"} <= set(PAPER_ARMS)
    assert set(CPU_ARMS) < set(PAPER_ARMS) and {"none", "persona", "secure"} <= set(CPU_ARMS)


def test_training_precision_is_what_the_hardware_computes_natively_and_is_keyed(monkeypatch, tmp_path):
    """`precision="auto"` resolves on construction (so `asdict`, and every training stage's key,
    holds what ran): bf16 autocast where bf16 is native, fp32 elsewhere; the trainer gets it."""
    from train import lora

    monkeypatch.setattr(lora, "native_bf16", lambda: False)
    assert lora.LoraTraining().precision == "fp32"
    monkeypatch.setattr(lora, "native_bf16", lambda: True)
    assert lora.LoraTraining().precision == "bf16" and lora.LoraTraining(precision="fp32").precision == "fp32"
    assert asdict(lora.LoraTraining())["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision='fp16'"):
        lora.LoraTraining(precision="fp16")
    assert lora.trainer_arguments(lora.LoraTraining(precision="bf16"), tmp_path)["bf16"] is True
    assert lora.trainer_arguments(lora.LoraTraining(precision="fp32"), tmp_path)["bf16"] is False
