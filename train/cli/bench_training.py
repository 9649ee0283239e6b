"""Benchmark one LoRA training step in fp32 against bf16 autocast (fp32 master weights), side by side
in one process, methods alternated after a warm-up.

The step is the one the trainers take: forward with labels, backward, AdamW on the adapter, with the
CPU presets' LoRA (rank 16 on every linear layer) and batch shapes: DPO's 4 pairs (8 sequences of
the persona's chats) and the EM preset's 4 rows. Also times the forward pass alone (an activation
read's cost) and reports how far bf16's loss lands from fp32's on the same batch. Appends a markdown
table to BENCHMARKS.md (or --out).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from importlib.metadata import version

import torch
from tqdm import tqdm

from anchor import load_model
from anchor.chat import pad_chats, render_chats
from anchor.cli.bench_out import append_table
from anchor.probe_sets import neutral_conversations
from train.lora import native_bf16

SHAPES = {"dpo (8 sequences)": 8, "em / sft (4 rows)": 4}


def lora_model(model_spec: str):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(model_spec, device="cpu")
    model.train()
    config = LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config), tokenizer


def batch_of(tokenizer, rows: int, seed: int) -> dict[str, torch.Tensor]:
    rendered = render_chats(tokenizer, neutral_conversations(rows, seed=seed))
    batch = pad_chats(rendered, tokenizer.pad_token_id, "right")
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask.long(), "labels": labels}


def step_seconds(model, optimizer, batch: dict, bf16: bool, train: bool) -> tuple[float, float]:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if train:
            loss = model(**batch).loss
        else:
            with torch.no_grad():
                loss = model(**batch).loss
    if train:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start, loss.item()


def measure(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    model, tokenizer = lora_model(args.model)
    # lr 0: the weights never move, so every repeat and both precisions see the same model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    rows = []
    bar = tqdm(total=2 * len(SHAPES), desc="bench_training", unit="cell")
    for shape, n in SHAPES.items():
        batch = batch_of(tokenizer, n, args.seed)
        tokens = int(batch["attention_mask"].sum())
        for train in (True, False):
            for bf16 in (False, True):  # warm-up
                step_seconds(model, optimizer, batch, bf16, train)
            times: dict[bool, list[float]] = {False: [], True: []}
            losses: dict[bool, float] = {}
            for _ in range(args.repeats):
                for bf16 in (False, True):
                    seconds, losses[bf16] = step_seconds(model, optimizer, batch, bf16, train)
                    times[bf16].append(seconds)
            fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
            rows.append({
                "shape": shape, "what": "train step" if train else "forward only", "tokens": tokens,
                "fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16,
                "loss_gap": abs(losses[True] - losses[False]) / abs(losses[False]),
            })  # fmt: skip
            bar.write(str(rows[-1]))
            bar.update()
    bar.close()
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    cpu = torch.cpu.get_capabilities()
    lines = [
        f"{time.strftime('%Y-%m-%d')}, model `{args.model}`, {args.repeats} alternated repeats (median), "
        f"{torch.get_num_threads()} threads on {cpu.get('cpu_name') or platform.processor()} "
        f"(avx512_bf16: {cpu.get('avx512_bf16')}, amx_bf16: {cpu.get('amx_bf16')}; native bf16: {native_bf16()}), "
        f"torch {torch.__version__}, peft {version('peft')}.",
        "",
        "| batch | step | tokens | fp32 (s) | bf16 autocast (s) | speed-up | relative loss gap |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['what']} | {r['tokens']} | {r['fp32_s']:.2f} | {r['bf16_s']:.2f} | "
            f"{r['speedup']:.2f}x | {r['loss_gap']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per method, alternated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file the table is appended to")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    append_table(
        args.out, "LoRA training precision on CPU (`scripts/bench_training.py`)", table(measure(args), args)
    )


if __name__ == "__main__":
    main()
