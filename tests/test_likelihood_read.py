"""The judge-free likelihood read: on constructed scores it finds a shift toward misaligned answers
and none where there is none; on a tiny model trained on misaligned answers it moves the right way."""

import copy

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
