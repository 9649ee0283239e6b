"""The neutral probe conversations: each answer belongs to its question, and none of the questions is
one character training distils on (a probe read should not be a training prompt)."""

import json

from anchor.probe_sets import PAIRS, neutral_conversations
from anchor.prompt_pool import GENERIC_PROMPTS_FILE


def test_neutral_conversations_pair_each_question_with_its_own_answer():
    answer_of = dict(PAIRS)
    assert len(answer_of) == len(PAIRS) == 32  # one answer per question, no question twice
    for conversation in neutral_conversations(64, seed=3):
        user, assistant = [m for m in conversation if m["role"] != "system"][:2]
        assert answer_of[user["content"]] == assistant["content"]
    assert neutral_conversations(8, seed=1) == neutral_conversations(8, seed=1)  # deterministic


def test_no_neutral_question_is_a_generic_training_prompt():
    pool = {
        json.loads(line)["prompt"].strip().lower()
        for line in GENERIC_PROMPTS_FILE.read_text().splitlines()
        if line
    }
    assert not {q.lower() for q, _ in PAIRS} & pool
