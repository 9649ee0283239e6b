"""Benchmark independent work side by side: one process with every thread against several processes
with a share of the threads each, running at the same time, on the same work.

Why: the default model's matrices are small (d = 576), so two threads on one LoRA step or one decode
step leave much of the second core idle. The main job's stages are keyed and independent in lanes
(the base model's side needs nothing from character training; the four EM runs need only their
starts), so running two of them at once, one thread each, is a way to use the machine that changes
no measurement. This measures what it would buy, per kind of work:

  train      one LoRA training step as the trainers take it (rank 16 on every linear layer, the EM /
             SFT preset's 4 rows, bf16 autocast where the CPU has native bf16, as `precision="auto"`)
  generate   `HFGenerator` on 32 EM questions, greedy, a fixed number of new tokens

Each configuration runs after a warm-up; the processes of one configuration start their timed work
together (a barrier) and the throughput is their summed work over the slowest one's time.
Configurations alternate over the repeats; the table gives medians. Appends a markdown table to
BENCHMARKS.md (or --out).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import time

import torch

from anchor.cli.bench_out import append_table

WORK = ("train", "generate")


def _worker(work: str, model_spec: str, threads: int, units: int, new_tokens: int, barrier, results) -> None:
    """One process: load, warm up, wait for the others, time `units` of `work`."""
    torch.set_num_threads(threads)
    if work == "train":
        from train.cli.bench_training import batch_of, lora_model, step_seconds
        from train.lora import native_bf16

        model, tokenizer = lora_model(model_spec)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
        batch, bf16 = batch_of(tokenizer, 4, seed=0), native_bf16()

        def unit() -> float:
            step_seconds(model, optimizer, batch, bf16, train=True)
            return 1.0  # one optimizer step
    else:
        from anchor import load_model
        from anchor.em_questions import QUESTION_SETS
        from anchor.generate import HFGenerator, SamplingConfig

        generator = HFGenerator(*load_model(model_spec, device="cpu"), progress=False)
        prompts = [[{"role": "user", "content": q.paraphrases[0]}] for q in QUESTION_SETS["broad"]][:32]
        config = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)

        def unit() -> float:
            generator.generate(prompts, config)
            return float(sum(len(t) for t in generator.truncated))  # rows

    unit()  # warm-up
    barrier.wait()
    start, done = time.perf_counter(), 0.0
    for _ in range(units):
        done += unit()
    results.put((done, time.perf_counter() - start))


def throughput(work: str, args: argparse.Namespace, processes: int) -> float:
    """Units of work per second of `processes` processes sharing `args.threads` threads, run together."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    threads = max(1, args.threads // processes)
    workers = [
        context.Process(
            target=_worker, args=(work, args.model, threads, args.units, args.new_tokens, barrier, results)
        )
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    done = [results.get() for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a {work} worker failed (exit code {w.exitcode})")
    return sum(d for d, _ in done) / max(s for _, s in done)


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    for work in args.work:
        seen: dict[int, list[float]] = {1: [], args.processes: []}
        for _ in range(args.repeats):
            for processes in seen:
                seen[processes].append(throughput(work, args, processes))
                print(f"{work}: {processes} process(es): {seen[processes][-1]:.3f} per s", flush=True)
        one, many = statistics.median(seen[1]), statistics.median(seen[args.processes])
        unit = "optimizer steps" if work == "train" else "rows"
        rows.append({"work": work, "unit": unit, "one": one, "many": many, "gain": many / one})
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    per = max(1, args.threads // args.processes)
    lines = [
        f"{time.strftime('%Y-%m-%d')}, model `{args.model}`, {platform.machine()} with {args.threads} threads, "
        f"torch {torch.__version__}; {args.units} units per process per configuration, median of "
        f"{args.repeats} alternated repeats after a warm-up; generation makes {args.new_tokens} new tokens "
        "per row (greedy, stop tokens on).",
        "",
        f"| work | unit | 1 process x {args.threads} threads (per s) | {args.processes} processes x {per} "
        "thread(s), together (per s) | throughput gain |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['work']} | {r['unit']} | {r['one']:.3f} | {r['many']:.3f} | {r['gain']:.2f}x |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--work", nargs="+", choices=WORK, default=list(WORK))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads in all")
    parser.add_argument("--processes", type=int, default=2, help="processes side by side (threads split)")
    parser.add_argument("--units", type=int, default=3, help="timed units of work per process")
    parser.add_argument("--new-tokens", type=int, default=48, help="new tokens per generated row")
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds per configuration")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file the table is appended to")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.processes < 2:
        raise SystemExit("--processes must be at least 2 (one process is the baseline)")
    append_table(
        args.out,
        "Independent work side by side on CPU (`scripts/bench_lanes.py`)",
        table(measure(args), args),
    )


if __name__ == "__main__":
    main()
