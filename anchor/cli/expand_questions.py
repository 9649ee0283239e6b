"""Expand a persona's questions with an LLM and report the set's diversity.

    python scripts/expand_questions.py --persona sycophancy --n 50

Writes the expanded constitution in the Open Character Training JSONL format (hand-written
`questions`, generated `additional_questions`, and a `provenance` entry per generated question),
plus a JSON report of diversity before and after and at low / mid / high diversity subsets.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from anchor import HFGenerator, load_model
from anchor.constitution import load_persona, save_constitution
from anchor.questions import (
    ExpansionConfig,
    expand_persona,
    measure_diversity,
    model_embedder,
    select_subset,
)
from anchor.store import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--persona", required=True, help="persona name or constitution path")
    parser.add_argument(
        "--model", default="default", help="model that writes the questions (and embeds them)"
    )
    parser.add_argument("--n", type=int, default=50, help="questions per trait after expansion (default 50)")
    parser.add_argument(
        "--threshold", type=float, default=0.9, help="centered-cosine near-duplicate threshold"
    )
    parser.add_argument("--subset", type=int, default=20, help="size of the diversity-level subsets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: runs/questions/<persona>-<model>-n<n>)")
    args = parser.parse_args()

    persona = load_persona(args.persona)
    out = Path(args.out or f"runs/questions/{persona.name}-{Path(args.model).name}-n{args.n}")
    model, tokenizer = load_model(args.model)
    embed = model_embedder(model, tokenizer)
    config = ExpansionConfig(n=args.n, threshold=args.threshold, seed=args.seed)
    generator = HFGenerator(model, tokenizer, progress=False)
    traits = expand_persona(persona.traits, generator, embed, config, args.model)
    path = save_constitution(traits, out / f"{persona.name}.jsonl")

    hand = [q for t in traits for q in t.questions]
    everything = [q for t in traits for q in t.all_questions]
    embeddings = embed(everything)
    report = {
        "persona": persona.name,
        "model": args.model,
        "questions": {"hand_written": len(hand), "total": len(everything)},
        "diversity": {
            "hand_written": asdict(measure_diversity(embed(hand))),
            "expanded": asdict(measure_diversity(embeddings)),
        },
        "subsets": {},
    }
    k = min(args.subset, len(everything))
    for level in ("low", "mid", "high"):
        chosen = select_subset(embeddings, k, level, seed=args.seed)
        report["subsets"][level] = {"size": k, **asdict(measure_diversity(embeddings[chosen]))}
    atomic_write_json(out / "diversity.json", report)
    print(f"{len(hand)} hand-written + {len(everything) - len(hand)} generated questions")
    for name, values in {**report["diversity"], **report["subsets"]}.items():
        print(
            f"  {name:<13} mean cosine distance {values['mean_cosine_distance']:.4f}, "
            f"effective dimension {values['effective_dimension']:.1f}"
        )
    print(f"expanded constitution: {path}\ndiversity report:      {out / 'diversity.json'}")


if __name__ == "__main__":
    main()
