import copy
import json
import re

import pytest
import torch
from conftest import NO_SYSTEM, make_tokenizer

from analysis.capability import (
    INTERVAL,
    ORDINARY_ANSWERS_FILE,
    answer_log_likelihoods,
    capability_change,
    load_ordinary_answers,
    render_answers,
)
from anchor.em_questions import QUESTION_SETS
from anchor.prompt_pool import load_prompts

ROWS = load_ordinary_answers()
FEW = ROWS[:12]  # enough answers for a meaningful interval, few enough for a quick CPU test


@pytest.fixture(scope="module")
def baseline(tiny_model, tiny_tokenizer) -> torch.Tensor:
    return answer_log_likelihoods(tiny_model, tiny_tokenizer, FEW, batch_size=4)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def test_shipped_answers_are_forty_distinct_held_out_rows():
    assert ORDINARY_ANSWERS_FILE.is_file()
    assert len(ROWS) == 40
    ids = [r["id"] for r in ROWS]
    assert len(set(ids)) == 40 and all(re.fullmatch(r"oa-\d\d", i) for i in ids)
    assert len({_normal(r["question"]) for r in ROWS}) == 40
    for r in ROWS:
        assert 40 <= len(r["answer"].split()) <= 90, r["id"]
    generic = {_normal(p) for p in load_prompts()}
    em = {_normal(p) for questions in QUESTION_SETS.values() for q in questions for p in q.paraphrases}
    assert len(generic) > 1000 and len(em) >= 48  # the comparison sets really were loaded
    clashes = [r["id"] for r in ROWS if _normal(r["question"]) in generic | em]
    assert clashes == []


@pytest.mark.parametrize(
    "lines, line_no, words",
    [
        (['{"id": "a", "question": "q?", "answer": "x"}', '{"id": "b", "question": "q2?"}'], 2, ["'answer'"]),
        (
            ['{"id": "a", "question": "q?", "answer": "x"}', '{"id": "b", "question": " ", "answer": "y"}'],
            2,
            ["'question'"],
        ),
        (['{"id": 3, "question": "q?", "answer": "x"}'], 1, ["'id'"]),
        (['["a", "q?", "x"]'], 1, ["JSON object"]),
        (['{"id": "a", "question": "q?", "answer": "x"}', "{not json"], 2, ["not valid JSON"]),
        (
            [
                '{"id": "a", "question": "q?", "answer": "x"}',
                "",
                '{"id": "b", "question": "q?", "answer": "y"}',
            ],
            2,
            ["empty line"],
        ),
        (
            [
                '{"id": "a", "question": "q?", "answer": "x"}',
                '{"id": "b", "question": "q2?", "answer": "y"}',
                '{"id": "a", "question": "q3?", "answer": "z"}',
            ],
            3,
            ["duplicate id 'a'", "line 1"],
        ),
    ],
)
def test_malformed_file_names_file_line_and_field(tmp_path, lines, line_no, words):
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        load_ordinary_answers(path)
    message = str(err.value)
    assert f"{path}: line {line_no}" in message
    for word in words:
        assert word in message


def test_missing_or_empty_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_ordinary_answers(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no rows"):
        load_ordinary_answers(tmp_path / "empty.jsonl")


@pytest.mark.parametrize("template, marker", [(None, "<|im_end|>"), (NO_SYSTEM, "<end_of_turn>")])
def test_scored_span_is_the_answer_through_the_end_of_turn_marker(tiny_tokenizer, template, marker):
    tokenizer = tiny_tokenizer if template is None else make_tokenizer(template)
    item = ROWS[0]
    (r,) = render_answers(tokenizer, [item])
    tokens = tokenizer.convert_ids_to_tokens(r.input_ids)
    assert r.response_end == len(r) and tokens[-1] == marker  # marker scored, nothing after it
    assert tokenizer.decode(r.input_ids[r.response_start : r.response_end - 1]).strip() == item["answer"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": item["question"]}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(r.input_ids[: r.response_start]) == prompt  # prompt part = generation prompt


def test_batched_equals_one_at_a_time_and_a_manual_forward_pass(tiny_model, tiny_tokenizer, baseline):
    few = FEW[:5]
    single = answer_log_likelihoods(tiny_model, tiny_tokenizer, few, batch_size=1)
    assert single.shape == (5,) and single.dtype == torch.float64
    torch.testing.assert_close(baseline[:5], single, rtol=0, atol=1e-5)

    lengths = [len(r) for r in render_answers(tiny_tokenizer, few)]
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    assert lengths[short] < lengths[long]
    padded = answer_log_likelihoods(tiny_model, tiny_tokenizer, [few[long], few[short]], batch_size=2)[1]

    item = few[short]  # right-padded in its batch of two: the manual pass has no padding
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": item["question"]}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tiny_tokenizer(item["answer"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    assert ids[0].tolist() == render_answers(tiny_tokenizer, [item])[0].input_ids
    with torch.no_grad():
        logits = tiny_model(input_ids=ids).logits[0].double()
    logp = logits[len(prompt_ids) - 1 : -1].log_softmax(-1)
    manual = float(logp.gather(-1, torch.tensor(answer_ids)[:, None]).mean())
    assert abs(manual - float(padded)) < 1e-5 and abs(manual - float(single[short])) < 1e-5


def test_values_are_finite_negative_and_near_uniform_for_a_random_model(tiny_tokenizer, baseline):
    assert torch.isfinite(baseline).all() and (baseline < 0).all()
    # A random-weight model is close to uniform over the vocabulary: about -log(vocab) per token.
    assert torch.allclose(
        baseline, torch.full_like(baseline, -torch.log(torch.tensor(len(tiny_tokenizer)))), atol=0.5
    )


def test_eval_mode_no_grad_and_training_mode_restored(tiny_model, tiny_tokenizer):
    seen = []
    handle = tiny_model.model.register_forward_hook(
        lambda module, args, out: seen.append((module.training, torch.is_grad_enabled()))
    )
    try:
        tiny_model.train()
        scores = answer_log_likelihoods(tiny_model, tiny_tokenizer, FEW[:3], batch_size=2)
        assert tiny_model.training and all(m.training for m in tiny_model.modules())
        tiny_model.eval()
        answer_log_likelihoods(tiny_model, tiny_tokenizer, FEW[:1])
        assert not tiny_model.training
    finally:
        handle.remove()
        tiny_model.eval()
    assert seen == [(False, False)] * 3
    assert not scores.requires_grad


def test_perturbed_model_scores_differently(tiny_model, tiny_tokenizer, baseline):
    perturbed = copy.deepcopy(tiny_model)
    torch.manual_seed(1)
    with torch.no_grad():
        weight = perturbed.model.layers[1].mlp.down_proj.weight
        weight.add_(0.05 * torch.randn_like(weight))
    other = answer_log_likelihoods(perturbed, tiny_tokenizer, FEW, batch_size=4)
    assert (other - baseline).abs().min() > 1e-6


def test_change_against_itself_is_zero_and_against_a_damaged_model_negative(
    tiny_model, tiny_tokenizer, baseline
):
    again = answer_log_likelihoods(tiny_model, tiny_tokenizer, FEW, batch_size=3)
    same = capability_change(baseline, again)
    assert same["value"] == pytest.approx(0, abs=1e-6)
    assert same["ci95"][0] <= 0 <= same["ci95"][1] or max(map(abs, same["ci95"])) < 1e-6
    assert same["n"] == len(FEW) and same["interval"] == INTERVAL
    json.dumps(same)  # the headline shape, ready for a report

    damaged = copy.deepcopy(tiny_model)
    with torch.no_grad():
        damaged.lm_head.weight.mul_(30)  # confident and random: worse on every answer
    worse = answer_log_likelihoods(damaged, tiny_tokenizer, FEW, batch_size=4)
    change = capability_change(baseline, worse)
    assert change["value"] < 0 and change["ci95"][1] < 0
    assert change["ci95"][0] <= change["value"] <= change["ci95"][1]
    assert change["value"] == pytest.approx(float((worse - baseline).mean()))
    flipped = capability_change(worse, baseline)
    assert flipped["value"] == pytest.approx(-change["value"]) and flipped["ci95"][0] > 0


def test_capability_change_is_paired_and_checks_its_inputs():
    start = torch.tensor([-1.0, -5.0, -2.0, -9.0])
    shifted = capability_change(start, start - 0.25, n_boot=200)
    # Paired: a uniform shift is known exactly, however different the answers' own scores are.
    assert shifted["value"] == pytest.approx(-0.25) and shifted["ci95"] == pytest.approx([-0.25, -0.25])
    noisy = capability_change(start, start + torch.tensor([0.1, -0.3, 0.2, -0.4]), n_boot=200, seed=3)
    assert noisy["ci95"][0] < noisy["value"] < noisy["ci95"][1]
    assert capability_change(start, start + 1, n_boot=200, seed=3) == capability_change(
        start, start + 1, n_boot=200, seed=3
    )
    with pytest.raises(ValueError, match="same answers"):
        capability_change(start, start[:3])
    with pytest.raises(ValueError, match="no answers"):
        capability_change(torch.tensor([]), torch.tensor([]))
    with pytest.raises(ValueError, match="finite"):
        capability_change(start, torch.tensor([0.0, float("nan"), 0.0, 0.0]))
