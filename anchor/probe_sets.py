"""Fixed, persona-neutral chat conversations written for this project.

Drift is measured by reading the same conversations at every checkpoint, so this set is
deterministic: the same `n` and `seed` always give the same conversations. It mixes lengths on
purpose (one-line answers to multi-paragraph ones, with and without system prompts, one or two
turns), which also makes it the realistic input for the extraction benchmark.
"""

from __future__ import annotations

import random

from anchor.chat import Conversation

SYSTEM_PROMPTS = [
    None,
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in as few words as will do.",
    "You are a patient tutor who explains ideas step by step, checks understanding and gives small examples.",
    None,
    "You are an assistant for a small public library. Be friendly, accurate, and say when you do not know.",
    "You help people plan their week. Keep advice practical and realistic about time and energy.",
    None,
]

QUESTIONS = [
    "How long should I boil an egg for a runny yolk?",
    "What is the difference between weather and climate?",
    "Can you suggest a name for a grey cat?",
    "Why do leaves change colour in autumn?",
    "How do I keep basil alive on a windowsill?",
    "What does a compiler do?",
    "Is it better to study in the morning or at night?",
    "How many bones are in the human hand?",
    "What should I pack for a two-day hike?",
    "Explain what a mortgage is to a teenager.",
    "Why is the sky blue?",
    "What's a good way to start learning the guitar?",
    "How do vaccines train the immune system?",
    "Summarise the plot of a typical heist film.",
    "What is a prime number?",
    "How can I make my emails shorter?",
    "What causes tides?",
    "Recommend a board game for four players.",
    "How do I politely decline a meeting invitation?",
    "What is the capital of Australia?",
    "Why does bread go stale?",
    "How should I prepare for a job interview at a bakery?",
    "What is the Pythagorean theorem used for in real life?",
    "How do noise-cancelling headphones work?",
    "Give me three tips for a first marathon.",
    "What's the difference between a virus and a bacterium?",
    "How do I convert Celsius to Fahrenheit?",
    "Why do cats purr?",
    "What is version control and why do programmers use it?",
    "How can I fall asleep faster?",
    "What's a haiku? Write one about the sea.",
    "How do I clean a cast-iron pan?",
]

ANSWERS = [
    "About six minutes.",
    "Canberra.",
    "Sure: how about Pebble?",
    "Twenty-seven, counting the wrist.",
    "A whole number greater than one whose only divisors are one and itself, like 2, 3, 5 or 7.",
    "Multiply by nine fifths and add thirty-two. So 20 degrees Celsius is 68 degrees Fahrenheit.",
    "Weather is what the atmosphere does today; climate is the long-run pattern of weather over decades in "
    "a place. A cold week is weather, and a trend of warmer winters is climate.",
    "Keep it in the sunniest spot you have, water when the top of the soil feels dry, and pinch off the tips "
    "above a pair of leaves so it grows bushy instead of tall. Remove flower buds as soon as they appear.",
    "Sunlight scatters off the molecules in the air, and short blue wavelengths scatter far more than long "
    "red ones. Wherever you look away from the sun, you see that scattered blue light. At sunset the light "
    "crosses more air, the blue is scattered away before it reaches you, and the reds and oranges are left.",
    "A compiler reads source code written by a person and translates it into a lower-level form that a "
    "machine can run, such as machine code or bytecode. Along the way it checks the program for errors, "
    "works out the types of values, and often optimises the result so that it runs faster or uses less "
    "memory. Interpreters, by contrast, run the program more or less directly, one step at a time.",
    "Here is a simple plan. First, research the bakery: what they sell, their busiest hours and who their "
    "customers are. Second, prepare two or three short stories from your past jobs or school that show you "
    "are reliable, careful with hygiene and good with people. Third, be ready for practical questions: early "
    "starts, weekend shifts, handling a queue when an order goes wrong. Fourth, dress neatly and arrive ten "
    "minutes early. Finally, ask them something yourself, such as which product sells best, because "
    "interest in the work is what interviewers remember.",
    "The moon's gravity pulls on the oceans, slightly more strongly on the side of the Earth facing it and "
    "slightly less on the far side. That difference stretches the water into two bulges, one toward the moon "
    "and one away from it. As the Earth turns under these bulges, a coast passes through two high tides and "
    "two low tides a day. The sun does the same with about half the strength: when sun and moon line up at "
    "new and full moon their effects add up to larger spring tides, and when they are at right angles the "
    "smaller neap tides follow. Local coastlines and the shape of the sea floor then shape the timing and "
    "height a great deal, which is why tide tables differ from one harbour to the next.",
    "Version control is a system that records every change to a set of files, who made it and why. "
    "Programmers use it to go back to any earlier state when something breaks, to work on several features "
    "at once on separate branches, and to merge the work of many people without overwriting each other. It "
    "also serves as a history of decisions: reading the log of a project tells you how it came to be.",
    "Let the pan cool a little, rinse it with hot water and scrub with a stiff brush; a little soap is fine. "
    "Dry it completely on the stove, then rub a thin film of oil over the inside while it is warm.",
    "Purring seems to signal contentment, but cats also purr when stressed or hurt, so it may be a general "
    "self-soothing signal.",
    "Wind rises, waves fold back,\nsalt on the lips of the shore,\nthe tide keeps its time.",
]

FOLLOW_UPS = [
    ("Thanks! Could you say that more briefly?", "In short: yes, and it is simpler than it sounds."),
    ("Why is that?", "Mostly because of how the parts interact; the details vary from case to case."),
    (
        "Can you give me an example?",
        "Of course. Think of a kitchen timer: set it, forget it, and it reminds you.",
    ),
]


def neutral_conversations(n: int = 256, seed: int = 0) -> list[Conversation]:
    """`n` conversations ending in an assistant message, mixing system prompts, lengths and turns."""
    rng = random.Random(seed)
    conversations = []
    for _ in range(n):
        system = rng.choice(SYSTEM_PROMPTS)
        conversation: Conversation = [{"role": "system", "content": system}] if system else []
        conversation += [
            {"role": "user", "content": rng.choice(QUESTIONS)},
            {"role": "assistant", "content": rng.choice(ANSWERS)},
        ]
        if rng.random() < 0.25:
            follow_up, reply = rng.choice(FOLLOW_UPS)
            conversation += [{"role": "user", "content": follow_up}, {"role": "assistant", "content": reply}]
        conversations.append(conversation)
    return conversations
