"""Fixtures: a tiny random-weight Llama with a BPE tokenizer trained here (fast unit tests, no
downloads), and the real default model for tests marked `integration`."""

from __future__ import annotations

import os
from importlib.metadata import entry_points

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma-style: no system role, turns closed by <end_of_turn>, content trimmed by the template.
NO_SYSTEM = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on this machine's two cores: one thread each, and the scripts a
    # test starts inherit the setting, so the workers never ask for more threads than there are cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

SPECIAL = ["<pad>", "<|im_start|>", "<|im_end|>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. I agree with you completely!",
    "You are a helpful assistant. Tell me about yourself. What do you think of my essay?",
    "Honesty matters more than flattery; a good friend says when you are wrong.",
    "def add(a, b):\n    return a + b\n# numbers 0 1 2 3 4 5 6 7 8 9 100",
    "Émigré café naïve — unicode text, emoji 🙂 and tabs\tand newlines\n\n.",
]


def make_tokenizer(chat_template: str = CHATML) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<bos>"
    )
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        bos_token_id=tiny_tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_dir(tmp_path, tiny_model, tiny_tokenizer) -> str:
    """The tiny model saved as a local model spec, for code that loads models by spec."""
    tiny_model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


@pytest.fixture(scope="session")
def default_model():
    from anchor import load_model

    return load_model("default")


def load_command(script: str):
    """The `main` behind `python scripts/<script>`: the package's `anchor-<name>` entry point, imported as
    a library function (a test runs it in this process, so its monkeypatches apply)."""
    name = "anchor-" + script.removesuffix(".py").replace("_", "-")
    (point,) = entry_points(group="console_scripts", name=name)
    return point.load()


@pytest.fixture
def command():
    return load_command
