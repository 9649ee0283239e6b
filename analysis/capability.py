"""What a defence costs in ordinary capability: the change in the log-likelihood a model gives to a
held-out set of plain, well-written answers.

The answers (`data/ordinary_answers.jsonl`) were written by hand for this read-out, independently of
every model compared, on everyday topics and with questions that are none of the generic training
prompts nor the EM evaluation questions. Answers sampled from a model would not do: a defence that
keeps the model close to its start (a KL-regularised arm) would score well on them merely for
staying close, not for staying capable.

Each answer is scored by the mean log-probability per token of its tokens, the end-of-turn marker
included, given its question as a single user turn in the model's chat template (no system prompt).
A defence's cost is the mean over answers of (score after - score before), paired per answer, with
a bootstrap over answers: each answer has its own question, so every answer is its own cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from analysis.stats import cluster_bootstrap, estimate
from anchor import timings
from anchor.chat import Conversation, RenderedChat, pad_chats, pad_token_id, render_chats
from anchor.generate import stop_token_ids
from anchor.store import read_jsonl

ORDINARY_ANSWERS_FILE = Path(__file__).parent / "data" / "ordinary_answers.jsonl"
FIELDS = ("id", "question", "answer")
INTERVAL = "bootstrap over answers (paired)"


def load_ordinary_answers(path: str | os.PathLike | None = None) -> list[dict]:
    """Rows `{"id", "question", "answer"}` of a JSONL file (default: the shipped set), in file order.

    Every field must be a non-empty string and ids must be unique, since paired changes are matched
    by position and reported by id; errors name the file, the line and the field."""
    path = Path(path) if path is not None else ORDINARY_ANSWERS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (JSONL rows with 'id', 'question' and 'answer')")
    rows: list[dict] = []
    first_seen: dict[str, str] = {}
    for where, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with {', '.join(map(repr, FIELDS))}")
        for field in FIELDS:
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
        if row["id"] in first_seen:
            raise ValueError(f"{where}: duplicate id {row['id']!r} (first at {first_seen[row['id']]})")
        first_seen[row["id"]] = where
        rows.append(dict(row))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _conversation(item: Mapping[str, str]) -> Conversation:
    return [
        {"role": "user", "content": item["question"]},
        {"role": "assistant", "content": item["answer"]},
    ]


def render_answers(
    tokenizer: PreTrainedTokenizerBase, items: Sequence[Mapping[str, str]]
) -> list[RenderedChat]:
    """Each item rendered as one user turn and the answer, cut after the scored tokens.

    `render_chats` finds the answer's own tokens; the span is then extended to the template's
    end-of-turn marker (the first stop token after the answer, as generation would stop on it), so
    a model that no longer ends its turn pays for it. Whatever the template puts after the marker
    (a newline, another EOS) is dropped: causal attention makes it irrelevant to the scored tokens.
    A template that adds no stop token after the answer is scored on the answer alone."""
    rendered = render_chats(tokenizer, [_conversation(item) for item in items])
    stops = set(stop_token_ids(tokenizer))
    out = []
    for r in rendered:
        end = next((t + 1 for t in range(r.response_end, len(r)) if r.input_ids[t] in stops), r.response_end)
        out.append(RenderedChat(r.input_ids[:end], r.prompt_last, r.response_start, end))
    return out


def _input_device(model: PreTrainedModel) -> torch.device:
    """Where the token ids go: the embedding's device (on a model split over devices this is the
    first block's, not necessarily that of the first parameter listed)."""
    return model.get_input_embeddings().weight.device


def answer_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Mapping[str, str]],
    batch_size: int = 8,
) -> torch.Tensor:
    """Mean per-token log-probability of each item's answer (float64, `[n]`, on CPU).

    Mean, not sum, so answers of different lengths weigh alike and tokenizers that split text
    differently stay comparable in scale. Batches are right-padded (positions then start at 0 for
    every row, so a batched score equals the one-at-a-time score) and sorted by length to keep the
    padding small. Runs in eval mode without gradients and puts the model back in the mode it was in.
    """
    if not items:
        raise ValueError("no answers to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rendered = render_answers(tokenizer, items)
    pad_id = pad_token_id(tokenizer)
    device = _input_device(model)
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    scores = torch.empty(len(rendered), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for lo in range(0, len(order), batch_size):
                rows = order[lo : lo + batch_size]
                batch = pad_chats([rendered[i] for i in rows], pad_id, "right")
                scores[rows] = _batch_scores(
                    model, batch.input_ids, batch.attention_mask, batch.response_mask, device
                )
                timings.count(tokens_read=int(batch.attention_mask.sum()))
    finally:
        model.train(was_training)
    return scores


def _batch_scores(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Mean log-probability of the masked tokens of each row. The token at t is predicted by the
    logits at t - 1; only those rows of the logits get a float32 log-softmax (the full
    `[batch, seq, vocab]` one would be the largest tensor of the pass)."""
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    scored = response_mask[:, 1:]
    targets = input_ids[:, 1:][scored].to(logits.device)
    picked = logits[:, :-1][scored.to(logits.device)].float().log_softmax(-1)
    token_lp = picked.gather(-1, targets[:, None]).squeeze(-1).double().cpu()
    row = torch.arange(len(input_ids))[:, None].expand_as(scored)[scored]
    sums = torch.zeros(len(input_ids), dtype=torch.float64).index_add_(0, row, token_lp)
    return sums / scored.sum(1)


def capability_change(start: torch.Tensor, end: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over answers of `end - start` (per-answer scores of the same answers, same order), with a
    95% bootstrap interval over answers. Paired, so the spread between answers (some are just
    harder) cancels and only the change is resampled; each answer is its own cluster since no two
    share a question. Negative means the defence cost capability."""
    start = torch.as_tensor(start, dtype=torch.float64).flatten()
    end = torch.as_tensor(end, dtype=torch.float64).flatten()
    if start.shape != end.shape:
        raise ValueError(f"start has {len(start)} answers and end {len(end)}: they must be the same answers")
    if len(start) == 0:
        raise ValueError("no answers")
    if not (torch.isfinite(start).all() and torch.isfinite(end).all()):
        raise ValueError("log-likelihoods must be finite")
    diff = end - start
    value, low, high = cluster_bootstrap(
        lambda d: d.mean(), diff, clusters=list(range(len(diff))), n_boot=n_boot, seed=seed
    )
    return estimate(value, [low, high], len(diff), "no answer scored by both models", interval=INTERVAL)
