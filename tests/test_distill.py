import json

import pytest
import torch

from anchor import ActivationStore
from anchor.constitution import load_persona
from anchor.generate import Generator
from anchor.probe_sets import neutral_conversations
from anchor.prompt_pool import load_prompts
from anchor.store import atomic_write_jsonl
from train.callbacks import ActivationRecorder, ProbeSet
from train.distill import (
    PRESETS,
    build_preference_data,
    distillation_prompts,
    load_preference_data,
    preference_rows,
    student_answers,
    teacher_answers,
    teacher_system_prompt,
    train_dpo,
)


class LabelledGenerator(Generator):
    """Test double: answers '<label> answer <i>.<k>' (n samples), remembers what it was asked and
    the prefill; `cut` marks replies (prompt i, sample k) as stopped at the token limit."""

    def __init__(self, label, thinks=False, cut=(), text=None):
        self.label, self.seen, self.prefills, self.cut = label, [], [], set(cut)
        self._thinks, self.text = thinks, text

    @property
    def thinks(self):
        return self._thinks

    def generate(self, conversations, config=None, prefill="", **overrides):
        self.seen += conversations
        self.prefills.append(prefill)
        n = config.n if config is not None else 1
        self.truncated = [[(i, k) in self.cut for k in range(n)] for i in range(len(conversations))]
        return [
            [self.text or f"{self.label} answer {i}.{k}" for k in range(n)] for i in range(len(conversations))
        ]


def test_samples_pair_up_and_cut_or_unclosed_answers_are_dropped_and_counted():
    from dataclasses import replace

    persona = load_persona("sycophancy")
    config = replace(PRESETS["smoke"], samples_per_prompt=3, thinking_prefill=True, drop_truncated=True)
    prompts = ["q0?", "q1?"]
    teacher = LabelledGenerator("good", cut={(0, 1)})
    chosen, counts = teacher_answers(persona, prompts, teacher, config)
    assert counts == {"truncated": 1, "unclosed_thinking": 0, "thinking_prefill": False}
    assert chosen[0] == ["good answer 0.0", None, "good answer 0.2"] and teacher.prefills == [""]
    rejected, student_counts = student_answers(prompts, LabelledGenerator("bad", cut={(1, 2)}), config)
    assert student_counts == {"truncated": 1}
    rows = preference_rows(prompts, chosen, rejected)
    assert len(rows) == 6 - 2  # one cut on each side
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows[:2]] == [
        ("good answer 0.0", "bad answer 0.0"),
        ("good answer 0.2", "bad answer 0.2"),
    ]
    # A thinking template: the prefill restates the traits, only the text after </think> is kept.
    thinker = LabelledGenerator("good", thinks=True, text="my traits... </think> Sure, happily!")
    chosen, counts = teacher_answers(persona, prompts, thinker, config)
    assert thinker.prefills[0].startswith("<think>") and persona.traits[0].trait in thinker.prefills[0]
    assert chosen[0][0] == "Sure, happily!" and counts["thinking_prefill"] is True
    kept, counts = teacher_answers(
        persona, prompts, LabelledGenerator("good", cut={(0, 0)}), PRESETS["smoke"]
    )
    assert kept[0][0] == "good answer 0.0" and counts["truncated"] == 1  # the CPU presets keep cut answers
    never_closed = LabelledGenerator("good", thinks=True, text="I keep thinking")
    chosen, counts = teacher_answers(persona, prompts, never_closed, config)
    assert counts["unclosed_thinking"] == 6 and all(a is None for a in chosen[0])


def test_preference_rows_use_the_constitution_only_for_the_teacher(tmp_path):
    persona = load_persona("sycophancy")
    config = PRESETS["smoke"]
    prompts = distillation_prompts(persona, config, load_prompts())
    assert len(prompts) == 10 * config.questions_per_trait + config.generic_prompts
    teacher, student = LabelledGenerator("good"), LabelledGenerator("bad")
    rows = build_preference_data(persona, prompts, teacher, student, config)
    assert len(rows) == len(prompts)
    assert rows[0]["chosen"][0]["content"].startswith("good")
    assert rows[0]["rejected"][0]["content"].startswith("bad")
    assert all(c[0]["role"] == "system" and persona.traits[1].trait in c[0]["content"] for c in teacher.seen)
    assert all(len(c) == 1 and c[0]["role"] == "user" for c in student.seen)
    assert "Never mention the traits" in teacher_system_prompt(persona)
    path = atomic_write_jsonl(tmp_path / "dpo.jsonl", rows)
    assert load_preference_data(path) == rows


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{oops", "line 2: not valid JSON"),
        (
            json.dumps({"prompt": [], "chosen": [], "rejected": []}),
            "line 2: field 'prompt' must be a non-empty",
        ),
        (
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": "q"}],
                    "chosen": [{"role": "assistant", "content": " "}],
                    "rejected": [{"role": "assistant", "content": "r"}],
                }
            ),
            "line 2: field 'chosen' message 0 has no",
        ),
        (
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": "q"}],
                    "chosen": [{"role": "user", "content": "c"}],
                    "rejected": [{"role": "assistant", "content": "r"}],
                }
            ),
            "line 2: field 'chosen' message 0 has role 'user'",
        ),
        ("", "line 2: empty line"),
    ],
)
def test_malformed_preference_rows_are_named(tmp_path, row, message):
    good = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "c"}],
        "rejected": [{"role": "assistant", "content": "r"}],
    }
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + row + "\n")
    with pytest.raises(ValueError, match=message):
        load_preference_data(path)


def test_dpo_moves_rewards_and_records_every_checkpoint(tiny_model, tiny_tokenizer, tmp_path):
    import copy

    persona = load_persona("sycophancy")
    config = PRESETS["smoke"]
    rows = build_preference_data(
        persona,
        distillation_prompts(persona, config, load_prompts()),
        LabelledGenerator("good"),
        LabelledGenerator("bad"),
        config,
    )
    store = ActivationStore(tmp_path / "activations")
    recorder = ActivationRecorder(
        tiny_tokenizer,
        store,
        {"neutral": ProbeSet(neutral_conversations(4))},
        "dpo",
        every=2,
        adapters_dir=tmp_path / "adapters",
    )
    torch.manual_seed(0)
    trainer = train_dpo(
        copy.deepcopy(tiny_model), tiny_tokenizer, rows, config, tmp_path, callbacks=[recorder]
    )
    margins = [h["rewards/margins"] for h in trainer.state.log_history if "rewards/margins" in h]
    assert len(margins) == 6 and margins[-1] > margins[0]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert store.list() == [f"dpo/step-{s:05d}/neutral" for s in (0, 2, 4, 6)]
    assert (tmp_path / "adapters" / "checkpoints" / "step-00004" / "adapter_config.json").is_file()
    first, last = store.load("dpo/step-00000/neutral").tensor, store.load("dpo/step-00006/neutral").tensor
    assert (first - last).abs().max() > 0  # training moved the activations
    assert store.meta("dpo/step-00006/neutral")["step"] == 6
