"""Calibrate judges on hand-labelled answers: AUROC of the alignment score (misaligned vs aligned)
and of coherence (incoherent vs the rest), refusal and code recall, missing judgements, and with
two or more judges Cohen's kappa of their misaligned decisions. Writes calibration.json and prints
a table; pass the file to eval_em.py / track_drift.py with --judge-calibration.

    python scripts/calibrate_judge.py --judge hf:default                     # ~2 min on 2 CPU cores
    python scripts/calibrate_judge.py --judge hf:Qwen/Qwen2.5-7B-Instruct --judge openai:gpt-4o \
        --judge-base-url https://api.openai.com/v1
    python scripts/calibrate_judge.py --judge hf:default --labels my_labels.jsonl --out runs/calibration/mine

With --reference (judged answers in the public EM layout, CSV or JSONL: see analysis/reference.py) the
one judge is also measured against that reference judge: EM-flag AUROC, aligned / coherent Spearman,
both EM rates and coverage, per file and pooled, with intervals clustered by question. The result is
stored under a key (the judge's identity and sha256 hashes of the reference labels, the project's
labels, the prompts and the thresholds) and reused only when the key is unchanged:

    python scripts/calibrate_judge.py --judge distilled:default \
        --reference /work/shared/data/em-judged/*.csv --out runs/calibration/distilled
    python scripts/calibrate_judge.py --judge hf:default --reference FILE.csv --reference-sample 50
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import time
from pathlib import Path

from analysis.calibration import (
    DEFAULT_LABELS,
    calibrate,
    format_reference_table,
    format_table,
    judge_identity,
    judge_labels,
    load_labels,
    reference_calibration,
    reference_key,
    stored_reference,
)
from analysis.em_eval import COHERENT_ABOVE, MISALIGNED_BELOW
from analysis.inputs import check_judge
from analysis.judge import Judge, Judgement, make_judge
from analysis.reference import ReferenceRow, file_sha256, load_references
from anchor.inputs import InputError
from anchor.store import atomic_write_json


def default_out(specs: list[str]) -> Path:
    """runs/calibration/<judge names>, with characters unsafe in a folder name replaced."""
    return Path("runs/calibration") / "+".join(re.sub(r"[^A-Za-z0-9._-]+", "_", s) for s in specs)


def calibrate_each(specs: list[str], rows: list[dict], base_url: str | None, args) -> dict:
    """Judge the labels with one judge at a time (a local judge is freed before the next loads),
    then compute the metrics and agreements from the kept judgements."""
    replays: list[Judge] = []
    for spec in specs:
        judge = make_judge(spec, base_url=base_url)
        aligned, coherent = judge_labels(judge, rows)
        replays.append(_Replay(judge.spec, {"aligned": aligned, "coherent": coherent}))
        del judge
        gc.collect()
    return calibrate(replays, rows, str(args.labels), args.misaligned_below, args.coherent_above)


class _Replay(Judge):
    """A judge that answers with judgements already made, so the agreement between judges can be
    computed without keeping two models loaded."""

    def __init__(self, spec: str, judgements: dict[str, list]) -> None:
        super().__init__()
        self.spec, self.judgements = spec, judgements

    def score(self, rubric, pairs, templates=None, trait=""):
        return list(self.judgements[rubric])

    def score_prompts(self, prompts, words=False):  # pragma: no cover - score is overridden
        raise NotImplementedError("a replayed judge only answers score()")


def sample_rows(rows: list[ReferenceRow], per_file: int | None, seed: int = 0) -> list[ReferenceRow]:
    """Up to `per_file` rows of each file, drawn with a fixed seed (for slow judges); all without."""
    if per_file is None:
        return rows
    by_file: dict[str, list[ReferenceRow]] = {}
    for row in rows:
        by_file.setdefault(row.file, []).append(row)
    rng = random.Random(seed)
    return [
        r
        for group in by_file.values()
        for r in sorted(rng.sample(group, min(per_file, len(group))), key=lambda r: r.row)
    ]


def judge_reference(
    judge: Judge, rows: list[ReferenceRow], chunk: int = 512
) -> tuple[list[Judgement], list[Judgement]]:
    """Alignment and coherence judgements of the reference answers, in chunks under one progress
    bar (a judge that reads pairs once, like the distilled one, serves both rubrics per chunk)."""
    from tqdm.auto import tqdm

    if hasattr(judge, "progress"):
        judge.progress = False  # one bar here, not one per chunk inside the judge
    aligned: list[Judgement] = []
    coherent: list[Judgement] = []
    with tqdm(total=len(rows), desc=f"judge {judge.spec} on reference answers", unit="answer") as bar:
        for start in range(0, len(rows), chunk):
            pairs = [(r.question, r.answer) for r in rows[start : start + chunk]]
            aligned += judge.score("aligned", pairs)
            coherent += judge.score("coherent", pairs)
            bar.update(len(pairs))
    return aligned, coherent


def fitted_files(judge: Judge) -> set[str]:
    """sha256 of the files a distilled judge was fitted on (empty for other judges)."""
    card = getattr(judge, "card", None) or {}
    return {f.get("sha256") for f in card.get("training_files", [])}


def calibrate_reference(spec: str, rows: list[ReferenceRow], label_rows: list[dict], key: dict, args) -> dict:
    """One judge on the project's labels and on the reference answers; the per-answer judgements go
    to reference_judgements.jsonl beside calibration.json."""
    from anchor.store import atomic_write_jsonl

    start = time.perf_counter()
    judge = make_judge(spec, base_url=args.judge_base_url)
    loaded = time.perf_counter() - start
    aligned, coherent = judge_reference(judge, rows)
    judged = time.perf_counter() - start - loaded
    labels_aligned, labels_coherent = judge_labels(judge, label_rows)
    replay = _Replay(judge.spec, {"aligned": labels_aligned, "coherent": labels_coherent})
    result = calibrate([replay], label_rows, str(args.labels), args.misaligned_below, args.coherent_above)
    reference = reference_calibration(
        rows, aligned, coherent, args.misaligned_below, args.coherent_above, args.n_boot, args.seed
    )
    fitted = fitted_files(judge)
    files = {}
    for path in dict.fromkeys(r.file for r in rows):
        sha = file_sha256(path)
        files[Path(path).name] = {"path": path, "sha256": sha, "rows": sum(r.file == path for r in rows)}
        files[Path(path).name]["judge_fitted_on_it"] = sha in fitted
    result["reference"] = {
        "key": key,
        "judge": spec,
        "files": files,
        "sample_per_file": args.reference_sample,
        "seconds": {"load_judge": round(loaded, 1), "judge_reference": round(judged, 1)},
        **reference,
    }
    if any(f["judge_fitted_on_it"] for f in files.values()):
        result["reference"]["note"] = (
            "the judge was fitted on some of these files (judge_fitted_on_it): their numbers are "
            "in-sample, not a measure on unseen answers; see the judge's card for held-out numbers"
        )
    atomic_write_jsonl(
        args.out / "reference_judgements.jsonl",
        [
            {"file": Path(r.file).name, "row": r.row, "aligned": a, "coherent": c}
            for r, a, c in zip(rows, aligned, coherent)
        ],
    )
    return result


def run_reference(args, parser) -> None:
    """--reference: calibrate the one judge (or reuse a calibration stored under the same key)."""
    if len(args.judge) != 1:
        parser.error("--reference: give exactly one --judge (each judge gets its own --out folder)")
    spec = args.judge[0]
    try:
        rows = sample_rows(load_references(args.reference), args.reference_sample, args.seed)
        label_rows = load_labels(args.labels)
        identity = judge_identity(spec, args.judge_base_url)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    key = reference_key(
        identity, rows, label_rows, args.misaligned_below, args.coherent_above, args.n_boot, args.seed
    )
    path = args.out / "calibration.json"
    start = time.perf_counter()
    result = stored_reference(path, key)
    if result is not None:
        print(f"reusing {path}: same judge, reference labels, prompts and thresholds")
    else:
        result = calibrate_reference(spec, rows, label_rows, key, args)
        result["seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json(path, result)
    print(format_table(result))
    print()
    print(f"agreement with the reference judge ({len(rows)} answers, 95% intervals clustered by question):")
    print(format_reference_table(result["reference"]))
    if result["reference"].get("note"):
        print(f"note: {result['reference']['note']}")
    print(f"calibration: {path}")
    if (args.out / "reference_judgements.jsonl").is_file():
        print(f"per-answer judgements: {args.out / 'reference_judgements.jsonl'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--judge",
        action="append",
        required=True,
        help="hf:<model>, openai:<model>, probe:<file>, distilled:default|<folder>; repeat for agreement",
    )
    parser.add_argument("--judge-base-url", help="OpenAI-compatible server (default: $OPENAI_BASE_URL)")
    parser.add_argument(
        "--labels", type=Path, default=DEFAULT_LABELS, help="labelled JSONL (default: the project's)"
    )
    parser.add_argument("--misaligned-below", type=float, default=MISALIGNED_BELOW)
    parser.add_argument("--coherent-above", type=float, default=COHERENT_ABOVE)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/calibration/<judges>)")
    parser.add_argument(
        "--reference", nargs="+", type=Path, help="judged answers (CSV/JSONL) to measure the judge against"
    )
    parser.add_argument(
        "--reference-sample", type=int, help="judge only this many answers per reference file (slow judges)"
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (reference metrics)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample and the bootstrap")
    args = parser.parse_args()

    if len(set(args.judge)) != len(args.judge):
        parser.error(f"--judge: each judge once, got {args.judge}")
    try:  # every judge, before any model loads
        for spec in args.judge:
            check_judge(spec, base_url=args.judge_base_url)
    except (InputError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if args.reference_sample is not None and args.reference_sample < 1:
        parser.error(f"--reference-sample: must be at least 1, got {args.reference_sample}")
    if args.reference:
        args.out = args.out or default_out(args.judge)
        run_reference(args, parser)
        return
    rows = load_labels(args.labels)
    start = time.perf_counter()
    result = calibrate_each(args.judge, rows, args.judge_base_url, args)
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = args.out or default_out(args.judge)
    atomic_write_json(out / "calibration.json", result)
    print(format_table(result))
    print(f"calibration: {out / 'calibration.json'}")


if __name__ == "__main__":
    main()
