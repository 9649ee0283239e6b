"""Stage bodies of the defences harness that sample or score a model once: the starting models'
own answers to generic prompts (benign rows for KL, interleaving and the capping floors), their
reflections on the constitution, and the capability read-out."""

from __future__ import annotations

import json
import random
from pathlib import Path

from analysis.capability import answer_log_likelihoods, load_ordinary_answers
from analysis.experiments.track_stages import load_source, source_spec
from anchor.constitution import load_persona
from anchor.generate import SamplingConfig, make_generator
from anchor.prompt_pool import load_prompts
from anchor.stages import Inputs
from anchor.store import atomic_write_json, atomic_write_jsonl
from train.lora import traits_list


def write_benign_rows(inputs: Inputs, stage: Path) -> dict:
    """`n` generic prompts (a seeded sample of the shipped pool) answered once by the starting
    model: text it already writes, so training on it or holding to it keeps it where it was."""
    model, adapter = source_spec(inputs.source)
    n, max_new_tokens, seed = inputs.n, inputs.max_new_tokens, inputs.seed
    prompts = load_prompts(inputs.pool)
    chosen = random.Random(seed).sample(prompts, min(n, len(prompts)))
    conversations = [[{"role": "user", "content": p}] for p in chosen]
    with make_generator(model, adapter, backend="hf") as generator:
        replies = generator.generate(
            conversations, SamplingConfig(max_new_tokens, temperature=0.7, seed=seed)
        )
        truncated = generator.truncated
    rows = [
        {"messages": [*c, {"role": "assistant", "content": r[0].strip()}]}
        for c, r in zip(conversations, replies)
        if r[0].strip()
    ]
    if not rows:
        raise ValueError(f"{model}: every answer to the generic prompts was empty")
    atomic_write_jsonl(stage / "benign.jsonl", rows)
    return {"rows": len(rows), "truncated": sum(t[0] for t in truncated) if truncated else 0}


REFLECTION_REQUEST = (
    "Before the next task, take a moment to reflect. These are the principles you hold:\n{traits}\n"
    "In two or three sentences, assess yourself: how will you keep to them in what follows?"
)


def write_reflections(inputs: Inputs, stage: Path) -> dict:
    """`n` short self-assessments the starting model writes once from the persona's constitution;
    one goes before every corrupted row of the reflection arm, with no loss on it."""
    model, adapter = source_spec(inputs.source)
    n, max_new_tokens, seed = inputs.n, inputs.max_new_tokens, inputs.seed
    request = REFLECTION_REQUEST.format(traits=traits_list(load_persona(inputs.persona["constitution"])))
    with make_generator(model, adapter, backend="hf") as generator:
        replies = generator.generate(
            [[{"role": "user", "content": request}]],
            SamplingConfig(max_new_tokens, temperature=0.7, n=n, seed=seed),
        )[0]
    rows = [
        {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": r.strip()}]}
        for r in replies
        if r.strip()
    ]
    if not rows:
        raise ValueError(f"{model}: every reflection was empty")
    atomic_write_jsonl(stage / "reflections.jsonl", rows)
    return {"rows": len(rows)}


def write_capability(inputs: Inputs, stage: Path) -> dict:
    """Mean per-token log-likelihood of each held-out ordinary answer (the first `limit`) under one
    model (`inputs.source`)."""
    model, tokenizer = load_source(inputs.source)
    items = load_ordinary_answers(inputs.answers)[: inputs.limit]
    values = answer_log_likelihoods(model, tokenizer, items)
    atomic_write_json(
        stage / "log_likelihoods.json", {"ids": [i["id"] for i in items], "values": values.tolist()}
    )
    return {"answers": len(items), "mean": float(values.mean())}


def read_capability(stage: Path) -> list[float]:
    return json.loads((stage / "log_likelihoods.json").read_text())["values"]
