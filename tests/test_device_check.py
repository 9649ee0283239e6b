"""The device check (scripts/device_check.py) in its --cpu mode: every part on a tiny random Qwen2
on the CPU, with the JSON it writes. The kill/resume part starts two fine-tune subprocesses and is
skipped here for time; the GPU run itself happens on a lent machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device_check.py"


def load_module():
    from train.cli import device_check

    return device_check


def test_configs_have_the_real_shapes():
    dc = load_module()
    tok, chars = dc.make_tokenizer(500)
    assert chars > 100_000 and len(tok) <= 500
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|im_start|>user"
    )
    config, described = dc.model_config("qwen2.5-7b", tok, 1)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (3584, 18944, 28)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (28, 4, 152064)
    assert config.tie_word_embeddings is False and config.eos_token_id == tok.eos_token_id
    small, _ = dc.model_config("qwen2.5-7b", tok, 16)
    assert small.hidden_size == 224 and small.num_attention_heads == 28 and small.vocab_size == 152064
    with pytest.raises(ValueError, match="not split by the heads"):
        dc.model_config("qwen2.5-7b", tok, 3)
    args = dc.parse_args([])
    assert (args.device, args.config, args.em_steps, args.budget_s) == ("cuda", "qwen2.5-7b", 20, 420.0)


def test_cpu_mode_writes_every_measurement(tmp_path):
    out = tmp_path / "device_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--skip", "kill_resume", "--emulate-gpu-training"]
        + ["--out", str(out), "--tmp-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUMMARY " in proc.stdout
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["failed"] == [] and result["skipped"] == ["kill_resume"]
    parts = result["parts"]
    assert {name: p["status"] for name, p in parts.items()} == {
        "build": "ok",
        "extract": "ok",
        "generate": "ok",
        "em_lora": "ok",
        "kill_resume": "skipped",
    }
    assert all(p["seconds"] >= 0 for name, p in parts.items() if name != "kill_resume")
    assert result["env"]["torch"] and result["env"]["transformers"] and result["env"]["trl"]
    main = result["configs"]["main"]
    assert (
        main["name"] == "tiny"
        and main["attn_implementation"] == "sdpa"
        and main["dtype"] == ["torch.float32"]
    )
    assert main["vocab_size"] > parts["build"]["tokenizer"]["vocab"]  # tokenizer ids are a subset

    extract = parts["extract"]
    assert extract["shape"] == [8, 4, 64] and extract["all_finite"]
    assert (
        extract["anchor_extract"]["tokens_per_s"] > 0
        and extract["hf_output_hidden_states"]["tokens_per_s"] > 0
    )
    assert extract["max_abs_diff"] < 1e-4  # fp32 on the CPU: the same numbers as HF's hidden states
    assert extract["tokens_per_conversation"]["max"] > 100

    generate = parts["generate"]
    assert generate["prompts"] == 8 and 0 < generate["new_token_slots"] <= 8 * 16
    assert generate["tokens_per_s"] > 0

    em = parts["em_lora"]
    assert em["steps_done"] == em["steps_requested"] == 4 and not em["stopped_for_time"]
    assert len(em["step_seconds"]) == 4 and em["step_median_s_excl_first"] > 0
    assert em["training"]["lora_rank"] == 32 and em["training"]["grad_accum"] == 2
    assert em["trainer_args"]["gradient_checkpointing"] is True and em["trainer_args"]["completion_only_loss"]
    assert len(em["losses"]) == 4
