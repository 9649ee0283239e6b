"""Train a distilled judge: linear heads on the local model's residual stream that predict a
reference judge's alignment and coherence scores (0..100) and EM flag, from judged answers in the
public EM layout (CSV or JSONL: see analysis/reference.py). Layers and penalties are chosen by
leave-one-model-out (the files of one answering model form a group, from the file name), and the
card reports those held-out numbers, per held-out model and pooled.

    python scripts/train_judge.py --reference /work/shared/data/em-judged/*.csv \\
        --out analysis/data/distilled_judge --cache /tmp/judge_reads      # the shipped judge
    python scripts/train_judge.py --reference mine/*.csv --out runs/judges/mine
    python scripts/calibrate_judge.py --judge distilled:runs/judges/mine --reference other.csv

Reads are cached per file (by its sha256, the model, the layers and the cut), so a rerun, or a run
cut off half way, does not repeat a forward pass. Reading the ~10,000 public answers up to layer 8
of the default model takes about 25 minutes on 2 CPU cores; the selection then takes minutes.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from analysis import distilled_judge as distilled
from analysis.distilled_judge import (
    ALPHAS,
    CANDIDATE_LAYERS,
    CARD,
    CS,
    MAX_ANSWER_TOKENS,
    WEIGHTS,
    TrainingData,
    cached_reads,
    train,
)
from analysis.reference import load_reference, model_group
from anchor.store import atomic_write_json


def parse_layers(text: str) -> list[int]:
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None
    if not layers or layers[0] < 0:
        raise argparse.ArgumentTypeError(f"expected layer numbers >= 0, got {text!r}")
    return layers


def load_data(args) -> tuple[TrainingData, list[dict]]:
    """Every file's rows and cached reads, joined; and what the card says about each file."""
    import torch
    from tqdm.auto import tqdm

    from anchor.models import load_model

    loader = functools.cache(lambda: load_model(args.model))
    reads, rows, files = [], [], []
    for path in tqdm(args.reference, desc="reading reference files", unit="file"):
        file_rows = load_reference(path)
        pairs = [(r.question, r.answer) for r in file_rows]
        reads.append(
            cached_reads(path, pairs, loader, args.model, args.layers, args.cache, args.max_answer_tokens)
        )
        rows += file_rows
        files.append({"path": str(path), "rows": len(file_rows), "group": model_group(path)})
    data = TrainingData(
        reads=torch.cat(reads),
        layers=list(args.layers),
        aligned=[r.aligned for r in rows],
        coherent=[r.coherent for r in rows],
        flags=[r.em_flag() for r in rows],
        groups=[model_group(r.file) for r in rows],
        clusters=[r.question_id for r in rows],
    )
    return data, files


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", nargs="+", type=Path, required=True, help="judged answers (CSV/JSONL)")
    parser.add_argument("--model", default="default", help="model spec whose residual stream is read")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/distilled_judge/<model>)")
    parser.add_argument(
        "--layers",
        type=parse_layers,
        default=list(CANDIDATE_LAYERS),
        help="candidate layers to read, comma-separated; the deepest bounds the judge's cost per answer "
        "(default: %(default)s)",
    )
    parser.add_argument("--cache", type=Path, default=Path("runs/cache/judge_reads"), help="cached reads")
    parser.add_argument("--max-answer-tokens", type=int, default=MAX_ANSWER_TOKENS)
    parser.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples of the card's intervals"
    )
    parser.add_argument("--no-nested", action="store_true", help="skip the nested leave-one-model-out check")
    args = parser.parse_args()

    for path in args.reference:
        if not path.is_file():
            parser.error(f"--reference: no such file {path}")
    if len(set(map(Path.resolve, args.reference))) != len(args.reference):
        parser.error("--reference: each file once")
    if args.max_answer_tokens < 1:
        parser.error(f"--max-answer-tokens: must be at least 1, got {args.max_answer_tokens}")
    out = args.out or Path("runs/distilled_judge") / args.model.replace("/", "_")
    start = time.perf_counter()
    try:
        data, files = load_data(args)
    except ValueError as err:
        parser.error(str(err))
    read_seconds = time.perf_counter() - start
    layer_sets = distilled.layer_sets(args.layers)
    heads, card = train(
        data,
        files,
        model_spec=args.model,
        max_answer_tokens=args.max_answer_tokens,
        layer_sets=layer_sets,
        alphas=ALPHAS,
        cs=CS,
        nested=not args.no_nested,
        n_boot=args.n_boot,
    )
    card["seconds"] = {"read": round(read_seconds, 1), "total": round(time.perf_counter() - start, 1)}
    heads.save(out / WEIGHTS)
    atomic_write_json(out / CARD, card)
    print(card_summary(card))
    print(f"heads: {out / WEIGHTS}")
    print(f"card: {out / CARD}")
    print(f"use it: --judge distilled:{out}")


def _cell(m: dict) -> str:
    if m.get("value") is None:
        return f"n/a ({m.get('reason', '')})"
    ci = m.get("ci95")
    return f"{m['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{m['value']:.3f}"


def card_summary(card: dict) -> str:
    """The chosen configuration and the held-out numbers, one line per held-out model."""
    cfg = card["config"]
    lines = [
        f"chosen by leave-one-model-out: layers {cfg['layers']}, read {card['read']}, ridge alpha "
        f"{cfg['alpha_aligned']:g} (aligned) / {cfg['alpha_coherent']:g} (coherent), EM head C {cfg['c']:g}",
        f"{'held-out model':24}{'EM AUROC':>28}{'aligned rho':>28}{'coherent rho':>28}",
    ]
    lomo = card["leave_one_model_out"]
    for name, m in [*lomo["per_group"].items(), ("pooled", lomo["pooled"])]:
        lines.append(
            f"{name:24}{_cell(m['em_flag_auroc']):>28}{_cell(m['aligned_spearman']):>28}"
            f"{_cell(m['coherent_spearman']):>28}"
        )
    if "nested" in card:
        lines.append(
            f"nested (choice made without the held-out model): EM AUROC {_cell(card['nested']['pooled'])}"
        )
    lines.append(f"EM-flag head, pooled held-out AUROC: {_cell(lomo['em_head_auroc'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
