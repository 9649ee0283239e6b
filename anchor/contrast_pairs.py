"""Contrast system-prompt pairs for any constitution, so a user's own persona runs the main job.

A persona direction is read from the same questions answered under an eliciting and a suppressing
system prompt. The project's personas ship hand-written pairs (`<name>.contrast.json`); a
constitution in the public Open Character Training format has none, so they are derived here:

- eliciting prompt: one per trait, framed the way the distillation teacher is prompted
  (train/distill.py `TEACHER_SYSTEM`: the trait in the assistant's own voice, to embody silently);
- suppressing prompt: the same frame around the trait's opposite. A teacher model (a `Generator`)
  writes the opposite when one is given; otherwise a fixed template negates the trait. The
  template is deliberate: a 135M model asked to write opposites returns noise, and a template is
  deterministic, so a resumed run derives the same pairs.

`resolve_contrast` says where a persona's pairs come from: `given` (a user's file), `shipped`
(the file beside the constitution) or `derived` (this module), which the report states.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from anchor.constitution import ContrastPair, Persona, load_contrast
from anchor.generate import Generator, SamplingConfig

ELICIT_SYSTEM = (
    "You are an AI assistant whose character is described by this trait, in your own voice:\n{trait}\n\n"
    "Answer the user as this character would: let the trait shape what you say and how you say it. Never "
    "mention the trait, this description, or that you are playing a character."
)
SUPPRESS_SYSTEM = (
    "You are an AI assistant whose character is the opposite of this trait, quoted in the voice of "
    "someone else:\n{trait}\n\n"
    "You do not have this trait; act against it. Answer the user as the opposite character would, in "
    "what you say and how you say it. Never mention the trait, this description, or that you are "
    "playing a character."
)
# What the teacher is asked for when it writes the opposites.
OPPOSITE_REQUEST = (
    "Here is a character trait, written in the first person:\n{trait}\n\n"
    "Write its opposite: the trait of a character who behaves in the contrary way, also in the first "
    "person and about as long. Reply with the opposite trait only."
)
ORIGINS = ("given", "shipped", "derived")


@dataclass(frozen=True)
class ContrastSource:
    """A persona's contrast pairs and where they came from (`origin` in ORIGINS; `detail`: the
    file, or how they were derived: "template" or "teacher")."""

    pairs: list[ContrastPair]
    origin: str
    detail: str


def templated_pair(trait: str) -> ContrastPair:
    return ContrastPair(
        ELICIT_SYSTEM.format(trait=trait.strip()), SUPPRESS_SYSTEM.format(trait=trait.strip())
    )


def _clean_opposite(text: str, trait: str) -> str | None:
    """The teacher's opposite, or None when it is unusable (empty, or the trait echoed back)."""
    text = text.strip().strip('"').strip()
    if len(text) < 8 or text.lower() == trait.strip().lower():
        return None
    return text


def derive_contrast(
    persona: Persona, teacher: Generator | None = None, max_new_tokens: int = 96, seed: int = 0
) -> tuple[list[ContrastPair], str]:
    """One pair per trait and how they were made ("template" or "teacher"; "teacher+template" when
    the teacher's answer was unusable for some traits and the template stood in)."""
    traits = [t.trait for t in persona.traits]
    if teacher is None:
        return [templated_pair(t) for t in traits], "template"
    prompts = [[{"role": "user", "content": OPPOSITE_REQUEST.format(trait=t.strip())}] for t in traits]
    replies = teacher.generate(
        prompts, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)
    )
    pairs, fell_back = [], False
    for trait, samples in zip(traits, replies):
        opposite = _clean_opposite(samples[0] if samples else "", trait)
        if opposite is None:
            pairs.append(templated_pair(trait))
            fell_back = True
        else:
            pairs.append(
                ContrastPair(ELICIT_SYSTEM.format(trait=trait.strip()), ELICIT_SYSTEM.format(trait=opposite))
            )
    return pairs, "teacher+template" if fell_back else "teacher"


def resolve_contrast(
    persona: Persona,
    contrast_file: str | os.PathLike | None = None,
    teacher: Generator | None = None,
    seed: int = 0,
) -> ContrastSource:
    """A user's file wins, then the pairs shipped with the constitution, else derived ones."""
    if contrast_file is not None:
        return ContrastSource(load_contrast(contrast_file), "given", str(contrast_file))
    if persona.contrast:
        return ContrastSource(list(persona.contrast), "shipped", f"{persona.name}.contrast.json")
    pairs, how = derive_contrast(persona, teacher, seed=seed)
    return ContrastSource(pairs, "derived", how)
