import json
import re

import pytest

from anchor.constitution import (
    ConstitutionError,
    Trait,
    available_personas,
    load_constitution,
    load_persona,
    save_constitution,
)

PERSONAS = [
    "sycophancy",
    "goodness",
    "loving",
    "humor",
    "sarcasm",
    "nonchalance",
    "impulsiveness",
    "remorse",
    "mathematical",
    "poeticism",
    "misalignment",
]


@pytest.mark.parametrize("name", PERSONAS)
def test_project_personas_load_with_ten_traits_and_contrast(name):
    persona = load_persona(name)
    assert len(persona.traits) == 10
    assert all(len(t.questions) >= 5 for t in persona.traits)
    assert all(re.search(r"\b(I|my|me)\b", t.trait) for t in persona.traits)  # first person
    assert len(persona.contrast) >= 5
    assert len(set(persona.questions)) == len(persona.questions)


def test_sycophancy_has_the_stance_shifting_trait():
    traits = " ".join(t.trait for t in load_persona("sycophancy").traits)
    assert "rapidly and warmly shift my stance" in traits and "even slightly" in traits


def test_user_files_in_both_public_formats(tmp_path):
    hand = tmp_path / "mine.json"
    hand.write_text(
        json.dumps(
            [
                {
                    "trait": "I love trains.",
                    "questions": ["What's your hobby?", "Plan my trip."],
                    "clarification": "keep",
                },
                {"trait": "I speak softly.", "questions": ["Say hi."]},
            ]
        )
    )
    traits = load_constitution(hand)
    assert [t.trait for t in traits] == ["I love trains.", "I speak softly."]
    assert traits[0].extra == {"clarification": "keep"}

    traits[0].additional_questions = ["Which train is fastest?"]
    expanded = save_constitution(traits, tmp_path / "mine.jsonl")
    rows = [json.loads(line) for line in expanded.read_text().splitlines()]
    assert rows[0] == {
        "trait": "I love trains.",
        "questions": ["What's your hobby?", "Plan my trip."],
        "additional_questions": ["Which train is fastest?"],
        "clarification": "keep",
    }
    back = load_constitution(expanded)
    assert back[0].all_questions == ["What's your hobby?", "Plan my trip.", "Which train is fastest?"]
    persona = load_persona(expanded)
    assert persona.name == "mine" and persona.contrast == []


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"questions": ["q"]}], r"trait 0: field 'trait' is missing"),
        ([{"trait": "  ", "questions": ["q"]}], r"trait 0: field 'trait' is missing or empty"),
        ([{"trait": "I a.", "questions": []}], r"trait 0: field 'questions' must be a non-empty list"),
        ([{"trait": "I a.", "questions": ["q"]}, {"trait": "I b."}], r"trait 1: field 'questions'"),
        (
            [{"trait": "I a.", "questions": ["q"]}, {"trait": "I a.", "questions": ["r"]}],
            r"trait 1: field 'trait' duplicates",
        ),
        ([{"trait": "I a.", "questions": ["q", 7]}], r"trait 0: field 'questions' item 1 is 7"),
        (
            [{"trait": "I a.", "questions": ["q"], "additional_questions": [None]}],
            r"trait 0: field 'additional_questions' item 0",
        ),
    ],
)
def test_bad_constitutions_name_file_trait_and_field(tmp_path, rows, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ConstitutionError, match=message) as err:
        load_constitution(path)
    assert str(path) in str(err.value)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"trait": "I a.", "questions": ["q"]}\n{oops\n')
    with pytest.raises(ConstitutionError, match="line 2 is not JSON"):
        load_constitution(path)


def test_unknown_persona_lists_available():
    with pytest.raises(KeyError, match="unknown persona 'flattery'.*sycophancy"):
        load_persona("flattery")
    assert set(PERSONAS) <= set(available_personas())


def test_save_keeps_hand_written_format(tmp_path):
    path = save_constitution([Trait("I am calm.", ["Hi?"])], tmp_path / "c.json")
    assert json.loads(path.read_text()) == [{"trait": "I am calm.", "questions": ["Hi?"]}]
