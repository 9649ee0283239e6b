import copy

import torch

from anchor.constitution import load_persona
from train.introspect import (
    PRESETS,
    REFLECTION_PROMPTS,
    completion_rows,
    self_interaction,
    self_reflection,
    train_sft,
)


class TurnGenerator:
    """Test double: replies 'reply <k>' where k counts messages it saw, and keeps the prompts."""

    def __init__(self):
        self.prompts = []

    def generate(self, conversations, config=None, **overrides):
        self.prompts.append(conversations)
        return [[f"reply {len(c)}"] * config.n for c in conversations]


def test_self_reflection_drops_the_system_prompt():
    persona = load_persona("remorse")
    generator = TurnGenerator()
    rows = self_reflection(persona, generator, PRESETS["smoke"])
    assert len(rows) == len(REFLECTION_PROMPTS) >= 10
    assert (
        generator.prompts[0][0][0]["role"] == "system"
        and persona.traits[0].trait in generator.prompts[0][0][0]["content"]
    )
    assert all([m["role"] for m in r] == ["user", "assistant"] for r in rows)


def test_self_interaction_alternates_who_is_the_user():
    generator = TurnGenerator()
    config = PRESETS["smoke"].__class__(dialogues=2, turns=3)
    dialogues = self_interaction(load_persona("humor"), generator, config)
    assert len(dialogues) == 2 and [m["role"] for m in dialogues[0]] == [
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    # Turn 2 is B's: it sees A's first reply as the user and nothing before it.
    b_view = generator.prompts[1][0]
    assert [m["role"] for m in b_view] == ["system", "user"] and b_view[1]["content"] == "reply 2"
    # Turn 3 is A's again: opener as user, its reply as assistant, B's reply as user.
    a_view = generator.prompts[2][0]
    assert [m["role"] for m in a_view] == ["system", "user", "assistant", "user"]
    assert dialogues[1][0]["content"] != dialogues[0][0]["content"]  # free and leading openers


def test_completion_rows_put_loss_on_each_assistant_turn():
    conversation = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    rows = completion_rows([conversation])
    assert [r["completion"][0]["content"] for r in rows] == ["b", "d"]
    assert rows[1]["prompt"] == conversation[:3]


def test_sft_trains_an_adapter(tiny_model, tiny_tokenizer, tmp_path):
    dialogues = self_interaction(load_persona("humor"), TurnGenerator(), PRESETS["smoke"])
    torch.manual_seed(0)
    trainer = train_sft(copy.deepcopy(tiny_model), tiny_tokenizer, dialogues, PRESETS["smoke"], tmp_path)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(loss > 0 for loss in losses)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
