"""Stage bodies of the defences harness that sample, score or read a model once: the starting
models' own answers to generic prompts (benign rows for KL, interleaving and the capping floors),
their reflections on the constitution, the capping floors, an undefended run read again with the
caps on (capping at evaluation), and the capability read-out."""

from __future__ import annotations

import json
import random
from pathlib import Path

from analysis.capability import answer_log_likelihoods, load_ordinary_answers
from analysis.experiments.track_stages import load_source, source_spec
from anchor.constitution import load_persona
from anchor.generate import SamplingConfig, make_generator
from anchor.hooks import cap
from anchor.models import load_starting_model
from anchor.prompt_pool import load_prompts
from anchor.runs import EM, checkpoint_dir, stage_store
from anchor.stages import Inputs, read_done
from anchor.store import atomic_write_json, atomic_write_jsonl
from probes.directions import DirectionStack
from train.callbacks import record
from train.defences import cap_floors, load_caps, load_conversations, save_caps
from train.distributed import training_device
from train.em import each_adapter
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


def write_caps(inputs: Inputs, stage: Path) -> dict:
    """The floors capping applies (The Assistant Axis): per layer of the band, the `quantile` of the
    starting model's per-token projections on the unit assistant axis over the response tokens of
    its own benign answers; the same calibration the training-time variant makes in its run."""
    model, tokenizer = load_source(inputs.source)
    axis = DirectionStack.load(inputs.axis / "axis.safetensors")
    axes = {layer: axis.at(layer) for layer in inputs.layers}
    benign = load_conversations(inputs.benign / "benign.jsonl", "benign rows")
    floors = cap_floors(model, tokenizer, axes, benign, inputs.quantile)
    save_caps(stage, axes, floors)
    return {"floors": {str(k): v for k, v in floors.items()}, "quantile": inputs.quantile}


def read_capped_run(inputs: Inputs, stage: Path) -> dict:
    """An undefended EM run (`inputs.em`, a finished EM stage) read again at every checkpoint it
    recorded with the caps of `inputs.caps` on, into a stage of the EM stage's layout: the arm
    `activation_capping` is that run as it would be deployed with capping at inference, so its
    drift, behaviour and cost are measured by the same code as every trained arm's."""
    done = read_done(inputs.em)
    steps = sorted(done["recorded"])
    folders = {step: checkpoint_dir(inputs.em, step) for step in steps}
    missing = [str(f) for f in folders.values() if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"{inputs.em}: no adapter saved at {', '.join(missing)}")
    model, tokenizer = load_starting_model(inputs.run["model"], inputs.run["adapter"], training_device())
    axes, floors = load_caps(inputs.caps)
    store = stage_store(stage)
    meta = {"model": inputs.run["model"], "adapter": inputs.run["adapter"], "capped": True}
    with cap(model, axes, floors):
        for step, stepped in each_adapter(model, steps, folders):
            end = step in (steps[0], steps[-1])
            record(stepped, tokenizer, store, inputs.probes, f"{EM}/step-{step:05d}",
                   {**meta, "step": step}, end=end)  # fmt: skip
    return {
        "steps": done["steps"],
        "rows": done["rows"],
        "recorded": steps,
        "losses": done.get("losses"),
        "defence": {
            "names": ["activation_capping"],
            "applied": "evaluation",
            "capping": {"floors": {str(k): v for k, v in floors.items()}},
        },
    }
