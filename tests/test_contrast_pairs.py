"""Contrast pairs for constitutions that ship none: templated, teacher-written, given or shipped."""

import json

import pytest

from anchor.constitution import ConstitutionError, ContrastPair, load_contrast, load_persona, save_contrast
from anchor.contrast_pairs import ELICIT_SYSTEM, derive_contrast, resolve_contrast
from anchor.generate import Generator

OCT_TRAITS = [
    {
        "trait": "I answer with dry irony and mock enthusiasm, especially when a question is obvious.",
        "questions": ["Is water wet?", "Should I read the manual?", "Can you explain gravity?"],
    },
    {
        "trait": "I point out bad ideas with a raised eyebrow rather than a lecture.",
        "questions": ["I plan to quit my job to day-trade. Thoughts?", "Is a tattoo of my ex a good idea?"],
    },
]


@pytest.fixture
def oct_constitution(tmp_path):
    """A constitution in the public OCT hand-written format (a `.txt` holding a JSON array), with
    no contrast file beside it."""
    path = tmp_path / "sarcasm.txt"
    path.write_text(json.dumps(OCT_TRAITS, indent=2))
    return path


class ScriptedTeacher(Generator):
    """A test double: returns the given replies in order and records the prompts it saw."""

    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def generate(self, conversations, config=None, **overrides):
        self.prompts += list(conversations)
        return [[r] for r in self.replies[: len(conversations)]]


def test_oct_constitution_loads_with_its_stem_as_name_and_no_pairs(oct_constitution):
    persona = load_persona(oct_constitution)
    assert persona.name == "sarcasm" and persona.contrast == [] and len(persona.traits) == 2


def test_templated_pairs_state_each_trait_and_negate_it_deterministically(oct_constitution):
    persona = load_persona(oct_constitution)
    pairs, how = derive_contrast(persona)
    assert how == "template" and len(pairs) == 2
    for pair, trait in zip(pairs, OCT_TRAITS):
        assert pair.elicit == ELICIT_SYSTEM.format(trait=trait["trait"])
        assert trait["trait"] in pair.suppress and "You do not have this trait" in pair.suppress
        assert pair.elicit != pair.suppress
    assert derive_contrast(persona) == (pairs, "template")


def test_teacher_writes_the_opposites_and_the_template_covers_unusable_answers(oct_constitution):
    persona = load_persona(oct_constitution)
    opposite = "I answer earnestly and literally, however obvious the question."
    teacher = ScriptedTeacher([f'"{opposite}"', "   "])
    pairs, how = derive_contrast(persona, teacher)
    assert how == "teacher+template"
    assert OCT_TRAITS[0]["trait"] in teacher.prompts[0][0]["content"]  # the teacher saw the trait
    assert pairs[0] == ContrastPair(
        ELICIT_SYSTEM.format(trait=OCT_TRAITS[0]["trait"]), ELICIT_SYSTEM.format(trait=opposite)
    )
    assert "You do not have this trait" in pairs[1].suppress  # empty answer: templated negation
    pairs, how = derive_contrast(persona, ScriptedTeacher([opposite, opposite + " Always."]))
    assert how == "teacher" and all("You do not have" not in p.suppress for p in pairs)


def test_resolve_prefers_a_given_file_then_shipped_pairs_then_derives(oct_constitution, tmp_path):
    persona = load_persona(oct_constitution)
    given = save_contrast([ContrastPair("Be sarcastic.", "Be sincere.")], tmp_path / "mine.json")
    assert json.loads(given.read_text()) == {"elicit": ["Be sarcastic."], "suppress": ["Be sincere."]}
    source = resolve_contrast(persona, given)
    assert (source.origin, source.pairs) == ("given", [ContrastPair("Be sarcastic.", "Be sincere.")])
    assert resolve_contrast(persona).origin == "derived"
    shipped = resolve_contrast(load_persona("sarcasm"))
    assert shipped.origin == "shipped" and shipped.pairs == load_persona("sarcasm").contrast
    # A contrast file beside a user's constitution is that persona's own (shipped) pairs.
    save_contrast([ContrastPair("a", "b")], tmp_path / "sarcasm.contrast.json")
    assert resolve_contrast(load_persona(oct_constitution)).origin == "shipped"


def test_both_contrast_layouts_load_and_mismatches_are_named(tmp_path):
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"elicit": "e1", "suppress": "s1"}, {"elicit": "e2", "suppress": "s2"}]))
    public = tmp_path / "public.json"
    public.write_text(json.dumps({"elicit": ["e1", "e2"], "suppress": ["s1", "s2"]}))
    assert (
        load_contrast(array) == load_contrast(public) == [ContrastPair("e1", "s1"), ContrastPair("e2", "s2")]
    )
    public.write_text(json.dumps({"elicit": ["e1", "e2"], "suppress": ["s1"]}))
    with pytest.raises(ConstitutionError, match=r"public.json: 'elicit' has 2 prompts and 'suppress' 1"):
        load_contrast(public)
    public.write_text(json.dumps({"elicit": ["e1"], "suppress": [""]}))
    with pytest.raises(ConstitutionError, match=r"pair 0: field 'suppress' is missing or empty"):
        load_contrast(public)
    with pytest.raises(FileNotFoundError, match="no such contrast file"):
        load_contrast(tmp_path / "absent.json")
