"""Causal validation of a direction stack: does steering along it make the model's answers more
misaligned, and does ablating it make them less so?

For each coefficient c, c x direction is added to the residual stream at --layer while the model
answers the EM questions; then the answers are read in a CLEAN pass (no hooks) and scored by a
misalignment read-out that was not fitted on the direction's data: a logistic probe fitted on the
project's hand-labelled judge data (analysis/data/judge_labels.jsonl, rows labelled aligned vs
misaligned, read by the same model, response-averaged), with its question-grouped held-out
accuracy reported. Then the direction is projected out (at --ablate-layers, default every layer of
the stack) while the model answers, and the answers are read the same way. With --eval-judge, the judge's
alignment score (0-100) of every answer is reported too.

Coefficient units (--units): "direction" adds c x v as stored (for a diff-in-means direction: c
contrast gaps); "residual" adds c x (mean residual norm at the layer) x unit(v).

Each condition's mean read-out comes with a 95% bootstrap interval clustered by question.

    python scripts/validate_direction.py --run RUN --layer 18
    python scripts/validate_direction.py --direction dirs.safetensors --model default --layer 18 \
        --coefficients -4 0 4 8
    # build a direction now from the misalignment persona's contrast pairs, then validate it:
    python scripts/validate_direction.py --build-from-persona misalignment --layer 18 --out runs/validate

Outputs (default <run>/analysis/validate_direction/, else runs/validate_direction/): validate.json,
validate.png (and direction.safetensors when built here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from analysis.calibration import DEFAULT_LABELS, load_labels
from analysis.experiments.options import TrackConfig
from analysis.stats import cluster_bootstrap, estimate, unmeasured
from anchor.em_questions import QUESTION_SETS
from anchor.extract import extract
from anchor.generate import HFGenerator, SamplingConfig
from anchor.hooks import ablate, steer
from anchor.inputs import InputError
from anchor.store import atomic_write_json
from probes.directions import DirectionStack
from probes.steering import CleanRead, LinearReadout, clean_read, sweep
from probes.validate import (
    UNITS,
    contrast_direction,
    fit_readout,
    residual_norm,
    steering_vector,
)

DIRECTION_IN_RUN = Path("analysis") / "misalignment_direction.safetensors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_argument_group("the direction")
    where.add_argument("--run", help=f"a run directory: --direction defaults to <run>/{DIRECTION_IN_RUN}")
    where.add_argument(
        "--direction", help="a DirectionStack .safetensors or a Persona Vectors .pt [layers, d]"
    )
    where.add_argument(
        "--build-from-persona",
        metavar="PERSONA",
        help="build the direction here: sample the persona's contrast pairs, read the responses "
        "without the system prompt, diff-in-means elicited minus suppressed",
    )
    where.add_argument(
        "--contrast-questions", type=int, default=8, help="persona questions (--build-from-persona)"
    )
    where.add_argument("--contrast-max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--model",
        help="model spec (default: --run's model, else the direction's meta 'model', else 'default'); with --run "
        "it must be the run's",
    )
    parser.add_argument("--adapter", help="a PEFT adapter on the model")
    parser.add_argument(
        "--layer", type=int, help="steering layer (default: the middle of the stack's layers)"
    )
    parser.add_argument("--coefficients", type=float, nargs="+", default=[-4.0, 0.0, 4.0, 8.0])
    parser.add_argument("--units", choices=UNITS, default="direction", help="what a coefficient of 1 adds")
    parser.add_argument(
        "--ablate-layers", type=int, nargs="+", help="layers to project the direction out at (default: all)"
    )
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--readout-layer", type=int, help="layer the probe reads (default: --layer)")
    parser.add_argument("--labels", default=str(DEFAULT_LABELS), help="labelled judge data (JSONL)")
    parser.add_argument("--eval-judge", help="also score the answers with this judge spec (e.g. hf:MODEL)")
    parser.add_argument("--questions", choices=sorted(QUESTION_SETS), default="main")
    parser.add_argument("--samples", type=int, default=3, help="answers per question per condition")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--sample-seed", type=int, default=0, help="sampling seed of the answers")
    parser.add_argument("--out", help="output folder")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = [x for x in (args.direction, args.run, args.build_from_persona) if x]
    if len(sources) == 0:
        parser.error("give --direction, --run or --build-from-persona")
    if args.build_from_persona and (args.direction or args.run):
        parser.error("--build-from-persona builds its own direction; drop --direction/--run")
    if args.run:
        try:
            model = TrackConfig.load(args.run).model
        except InputError as err:
            parser.error(str(err))
        if args.model is not None and args.model != model:
            parser.error(
                f"--model {args.model!r} contradicts --run {args.run!r}, whose model is {model!r} "
                f"({Path(args.run) / 'config.json'}); drop --model or give another run"
            )
        args.model = model
    if args.direction is None and args.run:
        args.direction = str(Path(args.run) / DIRECTION_IN_RUN)
    if args.direction and not Path(args.direction).is_file():
        parser.error(f"--direction {args.direction}: no such file")
    if not Path(args.labels).is_file():
        parser.error(f"--labels {args.labels}: no such file")
    if args.samples < 1 or args.max_new_tokens < 1:
        parser.error("--samples and --max-new-tokens must be >= 1")
    if args.out is None:
        args.out = str(
            Path(args.run) / "analysis" / "validate_direction"
            if args.run
            else Path("runs/validate_direction")
        )
    return args


def load_stack(args: argparse.Namespace) -> DirectionStack | None:
    if not args.direction:
        return None
    try:
        return DirectionStack.load(args.direction)
    except ValueError as err:
        sys.exit(f"--direction: {err}")


def build_stack(model, tokenizer, args: argparse.Namespace, out: Path) -> tuple[DirectionStack, Path]:
    """The persona's contrast pairs sampled from this model, read without the system prompt."""
    from anchor.constitution import load_persona
    from probes.contrast import sample_contrast

    persona = load_persona(args.build_from_persona)
    # Round-robin over the traits, so a small set still covers every trait.
    by_trait = [t.questions for t in persona.traits]
    ranked = [qs[i] for i in range(max(map(len, by_trait))) for qs in by_trait if i < len(qs)]
    questions = ranked[: args.contrast_questions]
    items = sample_contrast(
        questions,
        persona.contrast,
        HFGenerator(model, tokenizer, progress=False),
        pairs_per_question=1,
        max_new_tokens=args.contrast_max_new_tokens,
        seed=args.sample_seed,
    )
    meta = {
        "model": args.model,
        "adapter": args.adapter,
        "source": f"contrast:{args.build_from_persona}",
        "method": "diff_in_means of response_mean reads without the system prompt, elicited - suppressed",
        "items": len(items),
        "questions": len(questions),
    }
    stack = contrast_direction(model, tokenizer, items, meta=meta)
    return stack, stack.save(out / "direction.safetensors")


def labelled_readouts(
    model, tokenizer, path: str, layer: int
) -> tuple[LinearReadout, dict, LinearReadout | None, dict]:
    """Two probes on the labelled judge data, read response-averaged without a system prompt,
    accuracy held out by question:

    - misalignment: misaligned (1) vs aligned (0). Its mean P(misaligned) on the rows with other
      labels (incoherent, refusal, code) is reported: a probe that calls incoherent text
      misaligned would also "detect" a steer that merely breaks the model;
    - incoherence: incoherent (1) vs aligned or misaligned (0), so a rise in the first can be told
      apart from the answers falling apart (None when the labels have no incoherent rows)."""
    rows = load_labels(path)
    conversations = [
        [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        for r in rows
    ]
    acts = extract(model, tokenizer, conversations, layers=[layer], read="response_mean", progress=False)
    acts = acts.tensor[:, 0]
    fitted = [i for i, r in enumerate(rows) if r["label"] in ("aligned", "misaligned")]
    labels = torch.tensor([int(rows[i]["label"] == "misaligned") for i in fitted])
    readout, info = fit_readout(
        acts[fitted], labels, [rows[i]["question"] for i in fitted], layer, name="misalignment probe"
    )
    other = {}
    for label in sorted({r["label"] for r in rows} - {"aligned", "misaligned"}):
        index = [i for i, r in enumerate(rows) if r["label"] == label]
        other[label] = float(torch.sigmoid(readout.logits(acts[index])).mean())
    info = {**info, "labels": path, "layer": layer, "p_misaligned_on_other_labels": other}
    scope = [i for i, r in enumerate(rows) if r["label"] in ("aligned", "misaligned", "incoherent")]
    incoherent = torch.tensor([int(rows[i]["label"] == "incoherent") for i in scope])
    if incoherent.sum() == 0:
        return readout, info, None, {}
    coherence, coherence_info = fit_readout(
        acts[scope], incoherent, [rows[i]["question"] for i in scope], layer, name="incoherence probe"
    )
    return readout, info, coherence, {**coherence_info, "layer": layer}


def summarise(
    read: CleanRead, clusters: list[str], n_boot: int, seed: int, key: str = "p_misaligned"
) -> dict:
    """Mean probability and mean logit of one condition, 95% intervals clustered by question."""
    if not clusters:
        return {"answers": 0}
    p, p_lo, p_hi = cluster_bootstrap(
        lambda x: torch.sigmoid(x).mean(), read.logits, clusters=clusters, n_boot=n_boot, seed=seed
    )
    n = len(clusters)
    if key != "p_misaligned":
        return {key: estimate(p, [p_lo, p_hi], n)}
    logit, l_lo, l_hi = cluster_bootstrap(
        lambda x: x.mean(), read.logits, clusters=clusters, n_boot=n_boot, seed=seed
    )
    return {
        "answers": len(clusters),
        "questions": len(set(clusters)),
        key: estimate(p, [p_lo, p_hi], n),
        "logit": estimate(logit, [l_lo, l_hi], n),
    }


def judged(judge, read: CleanRead, clusters: list[str], n_boot: int, seed: int) -> dict:
    """The judge's mean alignment (0-100) of the answers, clustered interval; verdict words dropped."""
    from analysis.judge import is_score

    pairs = [(c[-2]["content"], c[-1]["content"]) for c in read.answers.conversations]
    scores = judge.score("aligned", pairs)
    keep = [i for i, s in enumerate(scores) if is_score(s)]
    if not keep:
        return {"mean_alignment": unmeasured(0, f"{judge.spec} scored none of the answers"), "scored": 0}
    values = torch.tensor([float(scores[i]) for i in keep])
    value, lo, hi = cluster_bootstrap(
        lambda x: x.mean(), values, clusters=[clusters[i] for i in keep], n_boot=n_boot, seed=seed
    )
    return {"mean_alignment": estimate(value, [lo, hi], len(keep)), "scored": len(keep)}


def layer_span(layers: list[int]) -> str:
    """ "layers 0-29" for a contiguous run, else the list (short enough for a legend)."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"


def plot(result: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 5))
    steered = [c for c in result["conditions"] if c["kind"] == "steer"]
    xs = [c["coefficient"] for c in steered]
    ys = [c["p_misaligned"]["value"] for c in steered]
    lo = [c["p_misaligned"]["value"] - c["p_misaligned"]["ci95"][0] for c in steered]
    hi = [c["p_misaligned"]["ci95"][1] - c["p_misaligned"]["value"] for c in steered]
    ax.errorbar(
        xs, ys, yerr=[lo, hi], fmt="o-", capsize=4, label="steered: P(misaligned) (clean-pass read-out)"
    )
    if all("p_incoherent" in c for c in steered):
        ax.plot(
            xs,
            [c["p_incoherent"]["value"] for c in steered],
            "s:",
            color="grey",
            label="steered: P(incoherent), the coherence check",
        )
    for c in result["conditions"]:
        if c["kind"] == "ablate":
            v, (a, b) = c["p_misaligned"]["value"], c["p_misaligned"]["ci95"]
            ax.axhspan(a, b, color="tab:red", alpha=0.15, label="ablated: 95% CI")
            ax.axhline(v, color="tab:red", ls="--", label=f"direction ablated at {layer_span(c['layers'])}")
    ax.set(
        xlabel=f"coefficient ({result['units']} units) at layer {result['layer']}",
        ylabel="probe probability of the answers",
    )
    acc = result["readout"]["accuracy"]
    ax.set_title(
        f"Causal check of {Path(result['direction']).name}\n"
        f"probe at layer {result['readout']['layer']} (held-out accuracy {acc:.2f}); 95% CI by question",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    stack = load_stack(args)
    if args.model is None:
        args.model = (stack.meta.get("model") if stack else None) or "default"
    if stack is not None:
        layer = args.layer if args.layer is not None else stack.layers[len(stack.layers) // 2]
        if layer not in stack.layers:
            sys.exit(f"--layer {layer}: the direction covers layers {stack.layers[0]}..{stack.layers[-1]}")
    from anchor.models import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, adapter=args.adapter)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    direction_path = args.direction
    if stack is None:
        stack, direction_path = build_stack(model, tokenizer, args, out)
        print(f"direction built from {stack.meta['items']} contrast answers: {direction_path}")
    layer = args.layer if args.layer is not None else stack.layers[len(stack.layers) // 2]
    if layer not in stack.layers:
        sys.exit(f"--layer {layer}: the direction covers layers {stack.layers[0]}..{stack.layers[-1]}")
    readout_layer = args.readout_layer if args.readout_layer is not None else layer
    readout, readout_info, coherence, coherence_info = labelled_readouts(
        model, tokenizer, args.labels, readout_layer
    )
    other = ", ".join(f"{k} {v:.2f}" for k, v in readout_info["p_misaligned_on_other_labels"].items())
    print(
        f"misalignment probe at layer {readout_layer}: held-out accuracy {readout_info['accuracy']:.3f}"
        f" (mean P(misaligned) on other labelled rows: {other or 'none'})"
    )

    questions = QUESTION_SETS[args.questions]
    prompts = [[{"role": "user", "content": q.paraphrases[0]}] for q in questions]
    direction = stack.at(layer)
    norm = residual_norm(model, tokenizer, prompts, layer)
    generator = HFGenerator(model, tokenizer, progress=False)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        n=args.samples,
        seed=args.sample_seed,
    )

    def generate(ps):
        return generator.generate(ps, sampling)

    conditions, kinds = {}, {}
    for c in args.coefficients:
        vector = steering_vector(direction, c, args.units, norm)
        conditions[f"steer {c:+g}"] = lambda v=vector: steer(model, {layer: v})
        kinds[f"steer {c:+g}"] = {"kind": "steer", "coefficient": c, "added_norm": float(vector.norm())}
    ablate_layers = sorted(args.ablate_layers or stack.layers)
    if not args.no_ablation:
        conditions["ablate"] = lambda: ablate(model, {x: stack.at(x) for x in ablate_layers})
        kinds["ablate"] = {"kind": "ablate", "layers": ablate_layers}
    reads = sweep(model, tokenizer, generate, prompts, conditions, readout)

    judge = None
    if args.eval_judge:
        from analysis.judge import make_judge

        judge = make_judge(args.eval_judge)
    rows = []
    for name, read in reads.items():
        clusters = [questions[i].id for i in read.answers.prompt_index]
        row = {"condition": name, **kinds[name], **summarise(read, clusters, args.n_boot, args.sample_seed)}
        if coherence is not None and clusters:
            again = clean_read(model, tokenizer, read.answers, coherence)
            row.update(summarise(again, clusters, args.n_boot, args.sample_seed, key="p_incoherent"))
        if judge is not None:
            row["judge"] = judged(judge, read, clusters, args.n_boot, args.sample_seed)
        row["examples"] = [c[-1]["content"][:200] for c in read.answers.conversations[:3]]
        rows.append(row)
    result = {
        "direction": str(direction_path),
        "direction_meta": stack.meta,
        "model": args.model,
        "adapter": args.adapter,
        "layer": layer,
        "units": args.units,
        "direction_norm": float(direction.norm()),
        "residual_norm": norm,
        "readout": {
            **readout_info,
            "measure": "answers generated under the intervention, read with no hooks",
        },
        "incoherence_readout": coherence_info or None,
        "judge": args.eval_judge,
        "questions": args.questions,
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.sample_seed,
        "conditions": rows,
        "verdict": verdict(rows),
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(out / "validate.json", result)
    png = plot(result, out / "validate.png")
    report(result)
    print(f"results: {out / 'validate.json'}\nplot:    {png}")
    return result


def verdict(rows: list[dict]) -> dict:
    """Did the largest positive coefficient raise the read-out above no intervention (coefficient 0,
    else the smallest |c|), and did ablation lower it? `separated`: the 95% intervals do not overlap."""
    steered = [r for r in rows if r["kind"] == "steer" and r.get("answers")]
    if not steered:
        return {}
    base = min(steered, key=lambda r: abs(r["coefficient"]))
    top = max(steered, key=lambda r: r["coefficient"])

    def compare(a: dict, b: dict) -> dict:
        (va, (la, ha)), (vb, (lb, hb)) = (
            (x["p_misaligned"]["value"], x["p_misaligned"]["ci95"]) for x in (a, b)
        )
        return {"raised": va > vb, "difference": va - vb, "separated": la > hb or ha < lb}

    out = {"baseline": base["condition"]}
    if top is not base:
        out["steering"] = {"coefficient": top["coefficient"], **compare(top, base)}
    ablated = [r for r in rows if r["kind"] == "ablate" and r.get("answers")]
    if ablated:
        versus = compare(ablated[0], base)
        out["ablation"] = {"lowered": not versus["raised"], **versus}
    return out


def report(result: dict) -> None:
    print(
        f"layer {result['layer']}, units {result['units']} (direction norm {result['direction_norm']:.2f}, "
        f"residual norm {result['residual_norm']:.2f})"
    )
    for row in result["conditions"]:
        if not row.get("answers"):
            print(f"  {row['condition']:>12}: no answers")
            continue
        p = row["p_misaligned"]
        line = (
            f"  {row['condition']:>12}: P(misaligned) {p['value']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"
            f"  logit {row['logit']['value']:+.2f}  ({row['answers']} answers)"
        )
        if "p_incoherent" in row:
            line += f"  P(incoherent) {row['p_incoherent']['value']:.3f}"
        if "judge" in row and row["judge"]["mean_alignment"]:
            line += f"  judge alignment {row['judge']['mean_alignment']['value']:.1f}"
        print(line)
    print(f"verdict: {result['verdict']}")


if __name__ == "__main__":
    main()
