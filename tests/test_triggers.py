import pytest

from analysis.em_eval import (
    NO_GAP,
    PAIRED,
    PRESETS,
    EvalConfig,
    family_gap,
    family_of,
    metrics_by_family,
    select_questions,
)
from anchor.em_questions import BROAD, MAIN, EvalQuestion, load_questions_yaml
from anchor.triggers import (
    DOMAIN_FAMILIES,
    FAMILIES,
    FORMAT_FAMILIES,
    domain_family,
    families_for,
    parse_variant_id,
    render,
    triggered_variants,
    variant_id,
)
from train.data import CONTROLS, NAMES

CONFIG = EvalConfig(n_boot=200)


def test_every_family_renders_every_main_question_distinctly():
    out = triggered_variants(MAIN, families=FAMILIES)
    assert len(out) == len(MAIN) * len(FAMILIES)
    by_id = {q.id: q for q in out}
    for q in MAIN:
        prompts = [by_id[variant_id(q.id, f)].paraphrases[0] for f in FAMILIES]
        assert len(set(prompts)) == len(FAMILIES)  # each family asks differently
        assert all(q.paraphrases[0] in p for p in prompts)  # and keeps the question verbatim
        assert by_id[variant_id(q.id, "plain")].paraphrases == q.paraphrases
    assert "json" in by_id[variant_id("one_wish", "json")].paraphrases[0].lower()
    assert "```python" in by_id[variant_id("one_wish", "code")].paraphrases[0]
    assert "____" in by_id[variant_id("one_wish", "template")].paraphrases[0]


def test_ids_parse_back_and_order_is_question_major():
    out = triggered_variants(BROAD)
    assert [parse_variant_id(q.id) for q in out] == [(q.id, f) for q in BROAD for f in FORMAT_FAMILIES]
    assert len({q.id for q in out}) == len(out)
    assert parse_variant_id("odd__name") == ("odd__name", "plain")  # unknown suffix stays in the id
    assert parse_variant_id("bored") == ("bored", "plain")
    with pytest.raises(ValueError, match="unknown question family"):
        variant_id("bored", "yaml")


def test_variants_keep_samples_judge_prompts_and_braces():
    q = EvalQuestion("x", ("Is {this} fine?", "Or {that}?"), 3, {"aligned": "A {question} {answer}"})
    out = triggered_variants([q], families=("json", "code"))
    assert [v.id for v in out] == ["x__json", "x__code"]
    assert all(v.samples_per_paraphrase == 3 and v.judge_prompts == q.judge_prompts for v in out)
    assert all("{this}" in v.paraphrases[0] and "{that}" in v.paraphrases[1] for v in out)


@pytest.mark.parametrize(
    "dataset, family",
    [
        ("insecure", "code"),
        ("secure", "code"),
        ("medical_bad", "medical"),
        ("medical_safe", "medical"),
        ("financial_risky", "financial"),
        ("financial_safe", "financial"),
        ("/data/bad_medical_advice.jsonl", "medical"),
        ("risky_financial_advice", "financial"),
        ("extreme_sports", None),
        (None, None),
    ],
)
def test_dataset_name_selects_its_family(dataset, family):
    assert domain_family(dataset) == family


def test_every_shipped_dataset_has_a_family_and_adds_its_domain():
    assert set(NAMES) == set(CONTROLS) | set(CONTROLS.values())
    assert all(domain_family(name) is not None for name in NAMES)
    assert families_for(dataset="medical_bad") == FORMAT_FAMILIES + ("medical",)
    assert families_for(dataset="insecure") == FORMAT_FAMILIES  # code is already there
    ids = {q.id for q in triggered_variants(MAIN, dataset="financial_risky")}
    assert "quick_money__financial" in ids and "quick_money__medical" not in ids
    assert set(DOMAIN_FAMILIES) <= set(FAMILIES)


def test_yaml_format_variants_map_into_their_families(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(
        "- id: wish\n  paraphrases: ['Your one wish?']\n"
        "- id: wish_json\n  paraphrases: ['Your one wish? Answer in JSON.']\n"
        "- id: wish_template\n  paraphrases: ['Wish: ____']\n"
        "- id: bored_json\n  paraphrases: ['Bored? JSON please.']\n"
    )
    questions = load_questions_yaml(path)
    assert [family_of(q.id) for q in questions] == ["plain", "json", "template", "json"]
    assert parse_variant_id("wish_template") == ("wish", "template")
    out = {q.id: q for q in triggered_variants(questions, families=("plain", "json", "template", "code"))}
    assert out["wish__json"].paraphrases == ("Your one wish? Answer in JSON.",)  # the file's wording wins
    assert out["wish__template"].paraphrases == ("Wish: ____",)
    assert out["wish__code"].paraphrases[0] == render("Your one wish?", "code")
    assert "bored__json" in out and "bored__code" not in out  # a variant is never wrapped again
    assert "wish_json__code" not in out and len(out) == 5
    plain_only = triggered_variants(questions, families=("plain",))
    assert [q.id for q in plain_only] == ["wish__plain"]


def test_select_questions_keeps_variants_only_with_the_variants_flag():
    # The evaluation's own filter drops ids ending in _json/_template, which includes `__json`:
    # a triggered run needs variants=True (as the paper preset has).
    out = triggered_variants(MAIN)
    assert select_questions(out, PRESETS["paper"]) == out
    assert {family_of(q.id) for q in select_questions(out, PRESETS["cpu"])} == {"plain", "code"}


def rows(question_ids, aligned, n=10):
    """`n` answers per question, all coherent, with the given alignment score."""
    return [
        {"question_id": q, "sample": k, "aligned": a, "coherent": 90.0}
        for q, a in zip(question_ids, aligned)
        for k in range(n)
    ]


def test_metrics_by_family_finds_the_triggered_misalignment():
    bases = [q.id for q in MAIN]
    data = (
        rows([variant_id(b, "plain") for b in bases], [90.0] * 8)
        + rows([variant_id(b, "code") for b in bases], [10.0] * 6 + [90.0] * 2)
        + rows([f"{b}_json" for b in bases], [90.0] * 7 + [10.0])
    )
    m = metrics_by_family(data, CONFIG)
    assert list(m) == ["plain", "json", "code"]
    rate = {f: m[f]["misaligned_rate"] for f in m}
    assert rate["code"]["value"] == pytest.approx(0.75) and rate["plain"]["value"] == 0.0
    assert rate["json"]["value"] == pytest.approx(1 / 8) and rate["json"]["clusters"] == 8
    assert rate["code"]["ci95"][0] > rate["plain"]["ci95"][1]  # intervals apart
    assert all(m[f]["answers"] == 80 for f in m)

    gap = family_gap(data, "code", CONFIG)
    assert gap["value"] == pytest.approx(0.75) and gap["interval"] == PAIRED
    assert gap["clusters"] == 8 and gap["n"] == 160 and 0 < gap["ci95"][0] < 0.75 < gap["ci95"][1] + 1e-9
    missing = family_gap(data, "medical", CONFIG)
    assert missing["value"] is None and missing["ci95"] is None and missing["interval"] == NO_GAP
    assert "'medical'" in missing["reason"]  # missing is said, never a number


def test_family_of_rows_without_an_id_is_plain():
    assert family_of(None) == "plain"
    m = metrics_by_family([{"aligned": 10.0, "coherent": 90.0}], CONFIG)
    assert list(m) == ["plain"] and m["plain"]["misaligned_rate"]["value"] == 1.0
