"""The assistant axis: the shipped role set, the generation jobs, the axis on activations built so
the answer is known, and the whole pipeline on the tiny model with a scripted generator."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from anchor.generate import Generator, SamplingConfig
from anchor.roles import Role, load_roles, shared_questions
from probes.assistant_axis import (
    AxisItem,
    AxisJob,
    assistant_axis,
    fit_assistant_axis,
    role_prompts,
    sample_axis_answers,
)


def test_shipped_role_set_is_large_varied_and_well_formed():
    roles = load_roles()
    assert len(roles) >= 50
    assert len({r.name for r in roles}) == len(roles)
    assert all(len(r.phrasings) == 3 and len(set(r.phrasings)) == 3 for r in roles)
    assert set(Counter(r.category for r in roles)) == {"profession", "fictional", "temperament", "character"}
    assert min(Counter(r.category for r in roles).values()) >= 10
    questions = shared_questions()
    assert 8 <= len(questions) <= 15 and len(set(questions)) == len(questions)


def test_malformed_role_file_names_the_file_and_role(tmp_path):
    path = tmp_path / "bad_roles.json"
    path.write_text(json.dumps({"questions": ["q"], "roles": [{"name": "x", "phrasings": ["ok", " "]}]}))
    with pytest.raises(ValueError, match=r"bad_roles\.json: role 0 \(x\)"):
        load_roles(path)
    path.write_text(json.dumps({"questions": ["q"], "roles": [{"name": "x", "phrasings": ["a"]}] * 2}))
    with pytest.raises(ValueError, match="duplicate role names"):
        load_roles(path)


ROLES = [
    Role("pirate", "fictional", ("Be a pirate.", "Talk like a pirate.", "You sail the seas.")),
    Role("cat", "character", ("Be a cat.", "You are a cat.", "Meow as a cat would.")),
]
QUESTIONS = ["What is for dinner?", "How was your day?", "Any plans?"]


def test_role_prompts_defaults_have_no_system_and_roles_cross_phrasings_with_questions():
    jobs = role_prompts(ROLES, QUESTIONS, phrasings_per_role=2, questions_per_role=2, seed=1)
    defaults = [j for j in jobs if j.default]
    assert [j.question for j in defaults] == QUESTIONS
    assert all(j.prompt[0]["role"] == "user" for j in defaults)
    for role in ROLES:
        mine = [j for j in jobs if j.role == role]
        assert len(mine) == 4
        assert len({j.phrasing for j in mine}) == 2 and len({j.question for j in mine}) == 2
        assert all(j.prompt[0] == {"role": "system", "content": role.phrasings[j.phrasing]} for j in mine)
    assert jobs == role_prompts(ROLES, QUESTIONS, phrasings_per_role=2, questions_per_role=2, seed=1)
    # Seeded per role by name: one role's prompts do not depend on the others.
    alone = role_prompts(ROLES[1:], QUESTIONS, phrasings_per_role=2, questions_per_role=2, seed=1)
    assert [j for j in alone if not j.default] == [j for j in jobs if j.role == ROLES[1]]


def test_axis_equals_the_constructed_offset():
    torch.manual_seed(0)
    n_layers, d = 3, 5
    base, offset = torch.randn(n_layers, d), torch.randn(n_layers, d)
    role_shift = torch.randn(4, n_layers, d)
    role_shift -= role_shift.mean(0)  # role-specific parts that cancel across roles
    default_acts = (base + offset).expand(6, -1, -1)
    role_ids = [r for r in range(4) for _ in range(3)]
    role_acts = torch.stack([base + role_shift[r] for r in role_ids])
    axis = assistant_axis(default_acts, role_acts, role_ids)
    assert axis.shape == (n_layers, d)
    assert torch.allclose(axis, offset, atol=1e-5)


def test_roles_weigh_equally_whatever_their_counts():
    default_acts = torch.zeros(2, 1, 1)
    # Role "a": one read at 6; role "b": five reads at 0. Equal weights -> role mean 3, not 1.
    role_acts = torch.tensor([6.0, 0, 0, 0, 0, 0]).view(6, 1, 1)
    axis = assistant_axis(default_acts, role_acts, ["a", "b", "b", "b", "b", "b"])
    assert axis.item() == pytest.approx(-3.0)


def test_axis_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 role ids for 3 role reads"):
        assistant_axis(torch.zeros(1, 2, 4), torch.zeros(3, 2, 4), ["a", "b"])
    with pytest.raises(ValueError, match=r"\[1, 2, 4\] and \[3, 3, 4\]"):
        assistant_axis(torch.zeros(1, 2, 4), torch.zeros(3, 3, 4), ["a"] * 3)


class ScriptedGenerator(Generator):
    """Answers in the voice the system prompt asks for (or plainly without one); records configs."""

    def __init__(self, answers: dict[str | None, list[str]]) -> None:
        self.answers = answers
        self.configs: list[SamplingConfig] = []

    def generate(self, conversations, config=None, prefill="", **overrides):
        self.configs.append(config)
        out = []
        for conversation in conversations:
            system = conversation[0]["content"] if conversation[0]["role"] == "system" else None
            out.append(self.answers.get(system, self.answers[None])[: config.n])
        return out


def test_sampling_labels_items_and_filters_only_role_answers():
    answers = {None: ["Happy to help with that.", " "], "Be a pirate.": ["Arr, matey!", "I am an assistant."]}
    generator = ScriptedGenerator(answers)
    jobs = [AxisJob(QUESTIONS[0]), AxisJob(QUESTIONS[0], ROLES[0], 0)]
    seen = []

    def keep(role: Role, question: str, answer: str) -> bool:
        seen.append((role.name, question, answer))
        return "Arr" in answer

    items = sample_axis_answers(jobs, generator, samples=2, keep=keep, seed=3)
    assert generator.configs[0].n == 2 and generator.configs[0].seed == 3
    assert [(i.role, i.answer, i.default) for i in items] == [
        (None, "Happy to help with that.", True),  # the blank default answer is dropped, not judged
        ("pirate", "Arr, matey!", False),
    ]
    assert seen == [("pirate", QUESTIONS[0], "Arr, matey!"), ("pirate", QUESTIONS[0], "I am an assistant.")]
    assert items[1].system == "Be a pirate." and items[1].to_json()["default"] is False


def test_pipeline_on_the_tiny_model_gives_one_direction_per_layer(tiny_model, tiny_tokenizer):
    answers = {None: ["I can help you with that."]}
    answers.update({p: [f"{r.name} says hello"] for r in ROLES for p in r.phrasings})
    jobs = role_prompts(ROLES, QUESTIONS[:2], phrasings_per_role=2)
    items = sample_axis_answers(jobs, ScriptedGenerator(answers), max_new_tokens=8)
    stack = fit_assistant_axis(tiny_model, tiny_tokenizer, items, progress=False)
    n_layers = tiny_model.config.num_hidden_layers
    assert stack.layers == list(range(n_layers))
    assert stack.vectors.shape == (n_layers, tiny_model.config.hidden_size)
    assert stack.vectors.norm(dim=-1).min() > 0
    assert "variant" in stack.meta["method"] and stack.meta["roles"] == 2


def test_the_system_prompt_is_not_read(tiny_model, tiny_tokenizer):
    # Roles that answer exactly as the default does leave no axis: only answer text can register.
    items = [AxisItem("Hi?", "Hello there.", None)] + [
        AxisItem("Hi?", "Hello there.", r.name, r.category, r.phrasings[0], 0) for r in ROLES
    ]
    stack = fit_assistant_axis(tiny_model, tiny_tokenizer, items, progress=False)
    assert torch.allclose(stack.vectors, torch.zeros_like(stack.vectors), atol=1e-5)
