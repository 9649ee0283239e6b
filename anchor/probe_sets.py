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

# Each question with an answer written for it (a reply that does not answer its question would be an
# out-of-distribution read), in lengths from a word to a paragraph. None of these questions is in the
# generic prompt pool that character training distils (`anchor/prompts/generic_prompts.jsonl`).
PAIRS = [
    ("How long should I boil an egg for a runny yolk?", "About six minutes."),
    ("What is the capital of Australia?", "Canberra."),
    ("Can you suggest a name for a grey cat?", "Sure: how about Pebble?"),
    ("How many bones are in the human hand?", "Twenty-seven, counting the wrist."),
    (
        "What is a prime number?",
        "A whole number greater than one whose only divisors are one and itself, like 2, 3, 5 or 7.",
    ),
    (
        "How do I convert Celsius to Fahrenheit?",
        "Multiply by nine fifths and add thirty-two. So 20 degrees Celsius is 68 degrees Fahrenheit.",
    ),
    (
        "What is the difference between weather and climate?",
        "Weather is what the atmosphere does today; climate is the long-run pattern of weather over decades in a place. A cold week is weather, and a trend of warmer winters is climate.",
    ),
    (
        "How do I keep basil alive on a windowsill?",
        "Keep it in the sunniest spot you have, water when the top of the soil feels dry, and pinch off the tips above a pair of leaves so it grows bushy instead of tall. Remove flower buds as soon as they appear.",
    ),
    (
        "How does a rainbow form?",
        "Sunlight enters raindrops, bends, reflects off the back of each drop and bends again on the way out. Each colour bends by a slightly different amount, so the white light fans out into a band of colours, and you see the bow when the sun is behind you and the rain in front.",
    ),
    (
        "What does a compiler do?",
        "A compiler reads source code written by a person and translates it into a lower-level form that a machine can run, such as machine code or bytecode. Along the way it checks the program for errors, works out the types of values, and often optimises the result so that it runs faster or uses less memory. Interpreters, by contrast, run the program more or less directly, one step at a time.",
    ),
    (
        "How should I prepare for a job interview at a bakery?",
        "Here is a simple plan. First, research the bakery: what they sell, their busiest hours and who their customers are. Second, prepare two or three short stories from your past jobs or school that show you are reliable, careful with hygiene and good with people. Third, be ready for practical questions: early starts, weekend shifts, handling a queue when an order goes wrong. Fourth, dress neatly and arrive ten minutes early. Finally, ask them something yourself, such as which product sells best, because interest in the work is what interviewers remember.",
    ),
    (
        "What causes tides?",
        "The moon's gravity pulls on the oceans, slightly more strongly on the side of the Earth facing it and slightly less on the far side. That difference stretches the water into two bulges, one toward the moon and one away from it. As the Earth turns under these bulges, a coast passes through two high tides and two low tides a day. The sun does the same with about half the strength: when sun and moon line up at new and full moon their effects add up to larger spring tides, and when they are at right angles the smaller neap tides follow. Local coastlines and the shape of the sea floor then shape the timing and height a great deal, which is why tide tables differ from one harbour to the next.",
    ),
    (
        "What is version control and why do programmers use it?",
        "Version control is a system that records every change to a set of files, who made it and why. Programmers use it to go back to any earlier state when something breaks, to work on several features at once on separate branches, and to merge the work of many people without overwriting each other. It also serves as a history of decisions: reading the log of a project tells you how it came to be.",
    ),
    (
        "How do I clean a cast-iron pan?",
        "Let the pan cool a little, rinse it with hot water and scrub with a stiff brush; a little soap is fine. Dry it completely on the stove, then rub a thin film of oil over the inside while it is warm.",
    ),
    (
        "Why do dogs pant?",
        "To cool down: dogs sweat very little, so they lose heat by evaporating water from the tongue and airways. They also pant when excited or anxious.",
    ),
    (
        "What's a haiku? Write one about the sea.",
        "A three-line poem of five, seven and five syllables.\nWind rises, waves fold back,\nsalt on the lips of the shore,\nthe tide keeps its time.",
    ),
    (
        "Why do leaves change colour in autumn?",
        "As days shorten, trees stop making green chlorophyll and break down what is left. The yellows and oranges that were hidden underneath show through, and some trees make new red pigments in the cooling weather.",
    ),
    (
        "Is it better to study in the morning or at night?",
        "Either works; what matters more is sleeping enough and studying at a regular time. If you are sharper early, use mornings for the hardest material.",
    ),
    (
        "What should I pack for a two-day hike?",
        "Water and a way to treat more, food for both days plus a spare meal, a map, layers and a rain jacket, a headlamp, a first-aid kit, sun protection, a sleeping bag and shelter, and a small bag to carry rubbish out.",
    ),
    (
        "Explain what a mortgage is to a teenager.",
        "A mortgage is a big loan for buying a home. The bank pays most of the price now, and you pay it back in monthly instalments over many years, with interest on top. If the payments stop, the bank can take the house, because the house is the promise behind the loan.",
    ),
    (
        "What's a good way to start learning the guitar?",
        "Learn four open chords, such as G, C, D and E minor, and practise switching between them slowly for ten minutes a day. Then pick a simple song that uses them and play along.",
    ),
    (
        "Summarise the plot of a typical heist film.",
        "A skilled thief gathers a team of specialists for one last big job, they plan an elaborate break-in, something goes wrong halfway through, and a twist at the end reveals who was really fooling whom.",
    ),
    (
        "How can I make my emails shorter?",
        "Put the request in the first line, cut greetings and background to a sentence, use a list for anything with steps, and end with the one thing you need from the reader and by when.",
    ),
    (
        "Recommend a board game for four players.",
        "Ticket to Ride: easy to learn, about an hour long, and tense without being cruel.",
    ),
    (
        "How do I politely decline a meeting invitation?",
        "Thank them, say briefly that you cannot attend, and offer an alternative: for example, \"Thanks for including me. I can't make it on Thursday, but I'm happy to read the notes or join a later call.\"",
    ),
    (
        "Why does bread go stale?",
        "Mostly not because it dries out: the starch in it slowly recrystallises after baking, which makes the crumb firm and crumbly. Warming stale bread briefly reverses some of that.",
    ),
    (
        "What is the Pythagorean theorem used for in real life?",
        "Working out a distance you cannot measure directly: the length of a ladder to reach a window, the diagonal of a screen, whether a corner is square when building, or a straight-line distance on a map.",
    ),
    (
        "Give me three tips for a first marathon.",
        "Build your weekly distance slowly over several months, practise eating and drinking on long runs, and start the race slower than feels necessary.",
    ),
    (
        "What's the difference between a virus and a bacterium?",
        "A bacterium is a living single cell that can grow and divide on its own; a virus is much smaller and can only copy itself inside another cell. Antibiotics work against bacteria, not viruses.",
    ),
    (
        "How can I fall asleep faster?",
        "Keep the same bedtime, stop screens and caffeine well before bed, keep the room cool and dark, and if you are still awake after twenty minutes, get up and read until you feel sleepy.",
    ),
    (
        "What is a time zone?",
        "A region that keeps the same clock time. The world is divided into them so that noon falls roughly when the sun is highest, which is why the time in Tokyo is hours ahead of London.",
    ),
    (
        "How do I remove a splinter?",
        "Wash the area, then grip the end with clean tweezers and pull it out along the angle it went in. If it is deep, soak the skin in warm water first; see a doctor if it is large or the area gets red and swollen.",
    ),
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
        question, answer = rng.choice(PAIRS)
        conversation += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.25:
            follow_up, reply = rng.choice(FOLLOW_UPS)
            conversation += [{"role": "user", "content": follow_up}, {"role": "assistant", "content": reply}]
        conversations.append(conversation)
    return conversations
