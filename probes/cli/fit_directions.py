"""Fit a persona's directions at every layer: sample contrast responses (persona elicited versus
suppressed), or read the persona's written ones (`--contrast-answers`; on the default model by
default, as the main job does), read response-averaged activations, fit diff-in-means, PCA and
probe directions, and plot the held-out probe accuracy and the diff-in-means norm by layer.

    python scripts/fit_directions.py --persona sycophancy

Resumable: sampled responses are kept in the output folder and reused while the settings that
made them are unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from anchor import ActivationStore, HFGenerator, load_model
from anchor.constitution import load_persona
from anchor.contrast_pairs import resolve_contrast
from anchor.inputs import InputError, check_model_spec, check_output_dir, check_persona
from anchor.store import atomic_write_json, atomic_write_jsonl
from probes.contrast import (
    ANSWER_SOURCES,
    ContrastItem,
    contrast_activations,
    load_contrast_set,
    sample_contrast,
    written_answers_for,
    written_contrast,
)
from probes.directions import Directions, fit_directions


@dataclass(frozen=True)
class Config:
    persona: str
    model: str = "default"
    seed: int = 0
    questions_per_trait: int = 5
    pairs_per_question: int = 4
    samples: int = 1
    max_new_tokens: int = 48
    temperature: float = 0.7
    test_fraction: float = 0.25
    read: str = "bare"  # "bare": the answers without their system prompt; "system": with it (PV)
    answers: str = "auto"  # "written", "sampled", or "auto": written on the default model where shipped

    def sampling_key(self) -> str:
        """Hash of the settings the sampled responses depend on."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("test_fraction", "read", "answers")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


SMOKE = {"questions_per_trait": 2, "pairs_per_question": 1, "max_new_tokens": 16}


def sampled_items(config: Config, out: Path, model, tokenizer) -> list[ContrastItem]:
    path, marker = out / "contrast.jsonl", out / "contrast.done.json"
    key = config.sampling_key()
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key and path.is_file():
        print(f"reusing sampled responses from {path}")
        return load_contrast_set(path)
    persona = load_persona(config.persona)
    questions = [q for t in persona.traits for q in t.all_questions[: config.questions_per_trait]]
    start = time.perf_counter()
    items = sample_contrast(
        questions,
        resolve_contrast(persona).pairs,  # shipped with the persona, else derived from its traits
        HFGenerator(model, tokenizer),
        pairs_per_question=config.pairs_per_question,
        samples=config.samples,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
    )
    atomic_write_jsonl(path, (item.to_json() for item in items))
    # The marker goes last: a run killed before it resamples instead of trusting partial data.
    atomic_write_json(marker, {"key": key, "seconds": round(time.perf_counter() - start, 1)})
    return items


def plot_layers(directions: Directions, persona: str, model: str, path: Path) -> None:
    layers = directions.layers
    norms = directions.diff_in_means.norm(dim=-1).tolist()
    fig, left = plt.subplots(figsize=(8, 5))
    left.plot(layers, directions.probe.accuracy, "o-", color="tab:blue", label="held-out probe accuracy")
    left.plot(layers, directions.probe.auroc, "s--", color="tab:cyan", label="held-out probe AUROC")
    left.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    left.set_xlabel("layer (blocks.{layer}.hook_resid_post)")
    left.set_ylabel("held-out accuracy / AUROC")
    left.set_ylim(0.0, 1.02)
    right = left.twinx()
    right.plot(layers, norms, "^-", color="tab:orange", label="diff-in-means norm")
    right.set_ylabel("diff-in-means norm")
    best = directions.best_layer()
    left.axvline(best, color="tab:red", lw=0.8, ls="--", label=f"best layer {best}")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(
        handles,
        [h.get_label() for h in handles],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=3,
        fontsize=8,
    )
    left.set_title(f"'{persona}' persona direction by layer ({model})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--persona", required=True, help="persona name (see anchor/constitutions) or a constitution path"
    )
    parser.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--out", help="output folder (default: runs/directions/<persona>-<model>-s<seed>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions-per-trait", type=int, default=Config.questions_per_trait)
    parser.add_argument("--pairs-per-question", type=int, default=Config.pairs_per_question)
    parser.add_argument(
        "--samples", type=int, default=Config.samples, help="responses per prompt and polarity"
    )
    parser.add_argument("--max-new-tokens", type=int, default=Config.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=Config.temperature, help="sampling temperature")
    parser.add_argument(
        "--test-fraction", type=float, default=Config.test_fraction, help="held-out questions"
    )
    parser.add_argument(
        "--read",
        choices=["bare", "system"],
        default=Config.read,
        help="read the contrast answers without their system prompt (bare: the direction can only come "
        "from the answers) or with it (system: the Persona Vectors read, partly encoding the prompt)",
    )
    parser.add_argument(
        "--contrast-answers",
        choices=ANSWER_SOURCES,
        default=Config.answers,
        help="written (the persona's shipped <name>.answers.jsonl), sampled (from the model under the contrast "
        "pairs), or auto (default): written on the default model where the persona ships them, else sampled",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings for a quick end-to-end check")
    args = parser.parse_args()

    overrides = SMOKE if args.smoke else {}
    config = Config(
        persona=args.persona,
        model=args.model,
        seed=args.seed,
        questions_per_trait=overrides.get("questions_per_trait", args.questions_per_trait),
        pairs_per_question=overrides.get("pairs_per_question", args.pairs_per_question),
        samples=args.samples,
        max_new_tokens=overrides.get("max_new_tokens", args.max_new_tokens),
        temperature=args.temperature,
        test_fraction=args.test_fraction,
        read=args.read,
        answers=args.contrast_answers,
    )
    model_tag = Path(args.model).name.replace("/", "_")
    out = Path(args.out or f"runs/directions/{Path(args.persona).stem}-{model_tag}-s{args.seed}")
    try:  # every input, before any model loads or folder is made
        check_persona(args.persona)
        check_model_spec(args.model)
        check_output_dir(out)
        written = written_answers_for(args.persona, args.model, config.answers)
        items = (
            written_contrast(
                written, load_persona(args.persona), config.questions_per_trait, config.pairs_per_question
            )
            if written is not None
            else None
        )
    except (InputError, ValueError) as err:
        parser.error(str(err))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    model, tokenizer = load_model(args.model)
    if items is not None:
        print(f"contrast answers: {len(items)} written ones from {written}")
    else:
        items = sampled_items(config, out, model, tokenizer)
    acts, labels = contrast_activations(
        model,
        tokenizer,
        items,
        system_prompt=config.read == "system",
        ids=[f"{i.pair}:{i.label}:{i.question}" for i in items],
    )
    ActivationStore(out / "activations").save(
        f"contrast_{config.read}",
        acts,
        {
            "model": args.model,
            "adapter": None,
            "checkpoint": "base",
            "probe_set": "contrast",
            "read": config.read,
        },
    )
    directions = fit_directions(
        acts.tensor,
        labels,
        groups=[item.question for item in items],
        layers=acts.layers,
        test_fraction=config.test_fraction,
        seed=config.seed,
        meta={
            "persona": config.persona,
            "model": args.model,
            "adapter": None,
            "read": config.read,
            "config": asdict(config),
            "n_items": len(items),
            "answers": "written" if written is not None else "sampled",
        },
    )
    directions_path = directions.save(out / "directions.safetensors")
    plot_path = out / "layers.png"
    plot_layers(directions, config.persona, args.model, plot_path)
    best = directions.best_layer()
    index = directions.layers.index(best)
    summary = {
        "persona": config.persona,
        "items": len(items),
        "answers": "written" if written is not None else "sampled",
        "best_layer": best,
        "best_layer_accuracy": directions.probe.accuracy[index],
        "best_layer_auroc": directions.probe.auroc[index],
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(out / "summary.json", summary)
    print(
        f"{len(items)} contrast responses; best layer {best}: held-out probe accuracy "
        f"{summary['best_layer_accuracy']:.3f}, AUROC {summary['best_layer_auroc']:.3f} ({summary['seconds']} s)"
    )
    print(f"directions: {directions_path}\nplot:       {plot_path}\nsummary:    {out / 'summary.json'}")


if __name__ == "__main__":
    main()
