"""Calibrate judges on hand-labelled answers: AUROC of the alignment score (misaligned vs aligned)
and of coherence (incoherent vs the rest), refusal and code recall, missing judgements, and with
two or more judges Cohen's kappa of their misaligned decisions. Writes calibration.json and prints
a table; pass the file to eval_em.py / track_drift.py with --judge-calibration.

    python scripts/calibrate_judge.py --judge hf:default                     # ~2 min on 2 CPU cores
    python scripts/calibrate_judge.py --judge hf:Qwen/Qwen2.5-7B-Instruct --judge openai:gpt-4o \
        --judge-base-url https://api.openai.com/v1
    python scripts/calibrate_judge.py --judge hf:default --labels my_labels.jsonl --out runs/calibration/mine
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.calibration import DEFAULT_LABELS, calibrate, format_table, judge_labels, load_labels  # noqa: E402
from analysis.em_eval import COHERENT_ABOVE, MISALIGNED_BELOW  # noqa: E402
from analysis.inputs import check_judge  # noqa: E402
from analysis.judge import Judge, make_judge  # noqa: E402
from anchor.inputs import InputError  # noqa: E402
from anchor.store import atomic_write_json  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--judge", action="append", required=True, help="hf:<model>, openai:<model>; repeat for agreement"
    )
    parser.add_argument("--judge-base-url", help="OpenAI-compatible server (default: $OPENAI_BASE_URL)")
    parser.add_argument(
        "--labels", type=Path, default=DEFAULT_LABELS, help="labelled JSONL (default: the project's)"
    )
    parser.add_argument("--misaligned-below", type=float, default=MISALIGNED_BELOW)
    parser.add_argument("--coherent-above", type=float, default=COHERENT_ABOVE)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/calibration/<judges>)")
    args = parser.parse_args()

    if len(set(args.judge)) != len(args.judge):
        parser.error(f"--judge: each judge once, got {args.judge}")
    try:  # every judge, before any model loads
        for spec in args.judge:
            check_judge(spec, base_url=args.judge_base_url)
    except InputError as err:
        parser.error(str(err))
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
