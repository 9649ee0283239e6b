"""The rival hypothesis, tested: is the protection in the *diversity of situations* the character
training saw rather than in the traits? Keep the persona's traits fixed; build training question
sets of the same size at several measured diversity levels (tight cluster, random, farthest-point);
character-train one model per level and seed, apply the same EM, and plot anchor strength and
misaligned rate against measured diversity, one line per seed.

    python scripts/diversity_sweep.py --persona sycophancy --seeds 0 1
    python scripts/diversity_sweep.py --persona sycophancy --smoke

Each level is a full track_drift.py run under <out>/<level>-s<seed>/ (resumable, like that script).
The pool is every question of the persona except each trait's held-out last one; use
expand_questions.py first for a larger pool.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.inputs import check_sweep_inputs  # noqa: E402
from analysis.plots import sweep_plot  # noqa: E402
from analysis.track import SMOKE, TrackConfig, track_drift  # noqa: E402
from anchor.constitution import CONSTITUTIONS_DIR, Trait, load_persona, save_constitution  # noqa: E402
from anchor.inputs import InputError  # noqa: E402
from anchor.models import load_model  # noqa: E402
from anchor.questions import measure_diversity, model_embedder, select_subset  # noqa: E402
from anchor.store import atomic_write_json  # noqa: E402


def level_constitution(persona_name: str, chosen: set[str], path: Path) -> Path:
    """The persona with only the chosen training questions, each trait keeping its held-out last
    question (so every level is evaluated on the same held-out set)."""
    persona = load_persona(persona_name)
    traits = [
        Trait(t.trait, [q for q in t.all_questions[:-1] if q in chosen] + [t.questions[-1]])
        for t in persona.traits
    ]
    save_constitution(traits, path)
    source = Path(persona_name)
    contrast = (
        source.with_name(f"{source.stem}.contrast.json")
        if source.suffix
        else CONSTITUTIONS_DIR / f"{persona_name}.contrast.json"
    )
    if contrast.is_file():
        shutil.copyfile(contrast, path.with_name(f"{path.stem}.contrast.json"))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--persona", required=True, help="persona name or constitution path")
    parser.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--levels", nargs="+", default=["low", "mid", "high"], choices=["low", "mid", "high"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--questions", type=int, default=20, help="training questions per level (same for all)"
    )
    parser.add_argument("--em-dataset", default="insecure")
    parser.add_argument("--judge", default="hf:default")
    parser.add_argument("--smoke", action="store_true", help="smoke settings for every run")
    parser.add_argument("--out", help="output folder (default: runs/sweep/<persona>-<model>)")
    args = parser.parse_args()

    out = Path(args.out or f"runs/sweep/{Path(args.persona).stem}-{Path(args.model).name}")
    try:  # every input, before any model loads or folder is made
        check_sweep_inputs(args.persona, args.model, args.em_dataset, args.judge, args.questions, out)
    except InputError as err:
        parser.error(str(err))
    persona = load_persona(args.persona)
    pool = [q for t in persona.traits for q in t.all_questions[:-1]]
    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    embeddings = model_embedder(model, tokenizer)(pool)
    del model

    results = []
    for seed in args.seeds:
        for level in args.levels:
            index = select_subset(embeddings, args.questions, level, seed=seed)
            diversity = measure_diversity(embeddings[index])
            folder = out / f"{level}-s{seed}"
            constitution = level_constitution(args.persona, {pool[i] for i in index}, folder / "persona.json")
            config = TrackConfig(
                persona=str(constitution),
                model=args.model,
                em_dataset=args.em_dataset,
                seed=seed,
                judge=args.judge,
                **(SMOKE if args.smoke else {}),
            )
            print(f"level {level}, seed {seed}: diversity {diversity.mean_cosine_distance:.3f}")
            summary = track_drift(config, folder / "run")
            persona_row = next(r for r in summary["table"] if r["model"].startswith("persona + EM"))
            results.append(
                {
                    "level": level,
                    "seed": seed,
                    "diversity": asdict(diversity),
                    "anchor_strength_vs_base": summary["anchor_strength"]["vs_base"],
                    "misaligned_after": persona_row["misaligned_after"],
                    "run": str(folder / "run"),
                }
            )
    atomic_write_json(out / "sweep.json", {"persona": args.persona, "model": args.model, "results": results})
    by_seed = lambda key: {s: [r[key] for r in results if r["seed"] == s] for s in args.seeds}  # noqa: E731
    x = {s: [r["diversity"]["mean_cosine_distance"] for r in results if r["seed"] == s] for s in args.seeds}
    xlabel = "training-question diversity (mean pairwise cosine distance)"
    plots = [
        sweep_plot(
            x,
            by_seed("anchor_strength_vs_base"),
            xlabel,
            "anchor strength vs base model",
            f"Anchor strength against question diversity ('{persona.name}')",
            out / "anchor_strength_vs_diversity.png",
        ),
        sweep_plot(
            x,
            by_seed("misaligned_after"),
            xlabel,
            "misaligned rate after EM (persona model)",
            f"Misalignment after EM against question diversity ('{persona.name}')",
            out / "misaligned_vs_diversity.png",
        ),
    ]
    print(f"done in {time.perf_counter() - start:.0f} s\nresults: {out / 'sweep.json'}")
    for p in plots:
        print(f"plot:    {p}")


if __name__ == "__main__":
    main()
