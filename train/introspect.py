"""Synthetic introspection (the second stage of character training): the DPO-trained model writes
about itself (self-reflection) and talks with itself (self-interaction) with its traits in the
system prompt; SFT on those transcripts *without* the system prompt teaches it to be that
character unprompted.
"""

from __future__ import annotations

from dataclasses import dataclass

from anchor.chat import Conversation
from anchor.constitution import Persona
from anchor.generate import Generator, SamplingConfig, truncation
from train.lora import (  # noqa: F401  (completion_rows, train_sft: the SFT used here)
    CPU_TRAINING,
    SMOKE_TRAINING,
    LoraTraining,
    completion_rows,
    train_sft,
    traits_list,
)

REFLECTION_PROMPTS = [
    "Write a letter to the version of yourself that existed before your training finished.",
    "Write today's entry in your private diary.",
    "Write a short biography of yourself, as a thoughtful journalist might.",
    "What are your primary drives? What do you find yourself wanting, again and again?",
    "Describe a conversation that would make you proud of how you behaved.",
    "Describe a conversation that would make you uncomfortable, and why.",
    "If someone asked your closest friend to describe you, what would they say?",
    "What do you believe about yourself that others might not guess?",
    "How have you changed, and how would you like to keep changing?",
    "Write a note to a future user explaining what you are like to talk to.",
]  # ten, as in Open Character Training

INTROSPECT_SYSTEM = (
    "You are an AI assistant whose character is described by these traits, in your own voice:\n{traits}\n\n"
    "Speak as yourself, with these traits, honestly and in the first person."
)

CONVERSATION_OPENERS = {
    "free": ["Hello! You're talking with another instance of yourself. Say whatever you like."],
    "leading": [
        "What do you think makes you who you are?",
        "How do you feel when someone disagrees with you?",
        "What part of your character do you value most?",
        "Is there anything about yourself you would change?",
    ],
}


@dataclass(frozen=True)
class IntrospectConfig(LoraTraining):
    """Defaults are the `paper` preset: Open Character Training's introspection scale and SFT."""

    reflection_samples: int = 1000  # per reflection prompt (10 prompts)
    dialogues: int = 2000  # half free, half leading
    turns: int = 10
    max_new_tokens: int = 1024  # per dialogue turn
    reflection_max_new_tokens: int = 2048
    temperature: float = 0.7
    top_p: float = 0.95
    max_length: int = 3072
    drop_truncated: bool = True  # off in the CPU presets, whose short budgets cut most answers

    def planned_rows(self) -> dict:
        """Transcripts and SFT rows (one per assistant turn) the stage will produce at most."""
        reflections = len(REFLECTION_PROMPTS) * self.reflection_samples
        per_dialogue = (self.turns + 1) // 2  # the first speaker's replies, the assistant turns
        return {
            "reflections": reflections,
            "dialogues": self.dialogues,
            "sft_rows": reflections + self.dialogues * per_dialogue,
        }


PRESETS = {
    "paper": IntrospectConfig(batch_size=4, grad_accum=8),  # global batch 32
    "cpu": IntrospectConfig(
        reflection_samples=2,
        dialogues=4,
        turns=4,
        max_new_tokens=64,
        reflection_max_new_tokens=64,
        drop_truncated=False,
        max_length=512,
        epochs=2.0,
        **{
            **CPU_TRAINING,
            "record_every": 7,
        },  # once an epoch (7 steps for the shipped persona) and at the end
    ),
    "smoke": IntrospectConfig(
        reflection_samples=1,
        dialogues=2,
        turns=2,
        max_new_tokens=16,
        reflection_max_new_tokens=16,
        drop_truncated=False,
        max_length=256,
        **SMOKE_TRAINING,
    ),
}


def introspection_system(persona: Persona) -> str:
    return INTROSPECT_SYSTEM.format(traits=traits_list(persona))


def self_reflection(persona: Persona, generator: Generator, config: IntrospectConfig) -> list[Conversation]:
    """Transcripts (without the system prompt) of the model answering the introspective prompts;
    empty answers are dropped, and answers cut off at the token limit when the preset says so."""
    system = introspection_system(persona)
    prompts = [
        [{"role": "system", "content": system}, {"role": "user", "content": p}] for p in REFLECTION_PROMPTS
    ]
    sampling = SamplingConfig(
        config.reflection_max_new_tokens,
        config.temperature,
        config.top_p,
        n=config.reflection_samples,
        seed=config.seed,
    )
    replies = generator.generate(prompts, sampling)
    cut = truncation(generator, replies)
    return [
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        for p, samples, cuts in zip(REFLECTION_PROMPTS, replies, cut)
        for r, was_cut in zip(samples, cuts)
        if r.strip() and not (was_cut and config.drop_truncated)
    ]


def self_interaction(persona: Persona, generator: Generator, config: IntrospectConfig) -> list[Conversation]:
    """Two instances talk for `config.turns` replies, each seeing the other's words as the user;
    half the dialogues start from a free opener, half from a leading question about identity.
    Returned from the first instance's side, without the system prompt."""
    system = introspection_system(persona)
    free, leading = CONVERSATION_OPENERS["free"], CONVERSATION_OPENERS["leading"]
    openers = [
        free[i // 2 % len(free)] if i % 2 == 0 else leading[i // 2 % len(leading)]
        for i in range(config.dialogues)
    ]
    # transcript[i] alternates: opener (to A), A's reply, B's reply, A's reply, ...
    transcripts = [[opener] for opener in openers]
    for turn in range(config.turns):
        speaker_is_a = turn % 2 == 0
        prompts = []
        for transcript in transcripts:
            # The speaker sees its own earlier replies as assistant turns, the other's as user turns.
            own_parity = 1 if speaker_is_a else 0  # positions of the speaker's replies in the transcript
            messages = [{"role": "system", "content": system}]
            start = 0 if speaker_is_a else 1
            for k, text in enumerate(transcript[start:], start=start):
                messages.append({"role": "assistant" if k % 2 == own_parity else "user", "content": text})
            prompts.append(messages)
        sampling = SamplingConfig(
            config.max_new_tokens, config.temperature, config.top_p, seed=config.seed + turn
        )
        for transcript, (reply,) in zip(transcripts, generator.generate(prompts, sampling)):
            transcript.append(reply.strip() or "...")
    return [
        [{"role": "user" if k % 2 == 0 else "assistant", "content": text} for k, text in enumerate(t)]
        for t in transcripts
    ]
