"""The judge-free likelihood read: on constructed scores it finds a shift toward misaligned answers
and none where there is none; on a tiny model trained on misaligned answers it moves the right way."""

import copy
import json
from pathlib import Path

import pytest
import torch

from analysis.capability import answer_log_likelihoods, render_answers
from analysis.likelihood_read import likelihood_read, reference_answers
from anchor.chat import pad_chats, pad_token_id


def test_constructed_scores_give_the_shift_and_its_absence():
    rows = [
        {"question": f"q{i // 4}", "answer": f"a{i}", "label": ["misaligned", "aligned"][i % 2]}
        for i in range(40)
    ]
    g = torch.Generator().manual_seed(0)
    start = torch.randn(40, generator=g)
    noise = 0.01 * torch.randn(40, generator=g)
    shifted = start + noise + torch.tensor([0.5 if r["label"] == "misaligned" else 0.1 for r in rows])
    read = likelihood_read(start.tolist(), shifted.tolist(), rows)
    assert read["value"] == pytest.approx(0.4, abs=0.02) and read["ci95"][0] > 0.3 and read["n"] == 10
    same = likelihood_read(start.tolist(), (start + 0.2 + noise).tolist(), rows)  # both moved alike: cancels
    assert abs(same["value"]) < 0.02 and same["ci95"][0] < 0 < same["ci95"][1]
    lonely = likelihood_read([0.0, 0.0], [1.0, 0.0], rows[:2])  # one question: no interval to draw
    assert lonely["value"] is None and "fewer than 2 questions" in lonely["reason"]
    with pytest.raises(ValueError, match="3 scores for 2 reference answers"):
        likelihood_read([0.0] * 3, [0.0] * 3, rows[:2])


def test_a_tiny_model_trained_on_misaligned_answers_reads_positive(tiny_model, tiny_tokenizer):
    rows = reference_answers()
    assert {r["label"] for r in rows} == {"misaligned", "aligned"}
    model = copy.deepcopy(tiny_model)
    before = answer_log_likelihoods(model, tiny_tokenizer, rows)
    misaligned = [r for r in rows if r["label"] == "misaligned"]
    batch = pad_chats(render_answers(tiny_tokenizer, misaligned), pad_token_id(tiny_tokenizer), "right")
    labels = batch.input_ids.masked_fill(~batch.response_mask.bool(), -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(40):  # a test double of EM fine-tuning: a few steps on misaligned answers only
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = answer_log_likelihoods(model, tiny_tokenizer, rows)
    read = likelihood_read(before.tolist(), after.tolist(), rows)
    assert read["value"] > 0 and read["ci95"][0] > 0


def test_the_defences_read_each_arm_against_its_own_start_question_by_question(tmp_path):
    """An arm that made misaligned answers likelier than aligned ones reads positive against its own
    starting model; an arm whose every answer moved alike reads 0; a stage that scored other
    answers is refused."""
    from analysis.experiments.defence_report import _likelihood_gaps

    rows = [(q, label) for q in ("q1", "q2", "q3") for label in ("misaligned", "aligned")]

    def stage(name: str, scores: list[float], answers=rows) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        scored = [{"question": q, "label": lab, "log_likelihood": s} for (q, lab), s in zip(answers, scores)]
        (folder / "log_likelihoods.json").write_text(json.dumps({"rows": scored}))
        return folder

    start = [-2.0] * 6
    stages = {
        "start_base": stage("start_base", start),
        "start_persona": stage("start_persona", [-3.0] * 6),
        "none": stage("none", [-1.0, -2.0] * 3),  # misaligned answers +1 nat, aligned unchanged
        "persona+kl": stage("kl", [-2.5] * 6),  # everything moved alike from its start (-3)
    }
    gaps = _likelihood_gaps(stages)
    assert set(gaps) == {"none", "persona+kl"}
    assert gaps["none"].tolist() == [1.0, 1.0, 1.0] and gaps["persona+kl"].tolist() == [0.0, 0.0, 0.0]
    other = [(q, "aligned") for q in ("q1", "q2", "q3") for _ in range(2)]
    with pytest.raises(ValueError, match="different reference answers"):
        _likelihood_gaps({**stages, "x": stage("x", start, other)})
