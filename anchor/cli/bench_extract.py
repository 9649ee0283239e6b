"""Benchmark residual-stream extraction against the usual alternatives, side by side in one process.

Same model, same conversations, same length-bucketed batches (right padding) for every method:
  (a) anchor.extract                      (b) HF output_hidden_states + the same reduction
  (c) TransformerLens TransformerBridge    (d) nnsight LanguageModel trace with .save()
  (e) the limit: the decoder body forward with no hooks
plus anchor.extract reading only up to half depth, and input-order versus length-bucketed batching.
Peak memory is measured apart, one fresh process per method on the widest batch, because a
process's resident memory never shrinks back between methods.
Writes a markdown table (default BENCHMARKS.md) with the machine and package versions.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from anchor import extract, load_model
from anchor.batching import length_buckets
from anchor.chat import ChatBatch, pad_chats, render_chats
from anchor.hooks import decoder_body, find_blocks, hook_name
from anchor.probe_sets import neutral_conversations

READS = ("response_mean", "prompt_last")
LABELS = {
    "limit": "(e) limit: decoder body, no hooks",
    "ours": "(a) anchor.extract",
    "hf": "(b) HF output_hidden_states",
    "tl": "(c) TransformerLens bridge run_with_cache",
    "nnsight": "(d) nnsight trace + save",
}


def reduce(per_layer: list[torch.Tensor], batch: ChatBatch, read: str) -> torch.Tensor:
    """[b, T, d] per layer -> [b, layers, d]: the reductions anchor.extract makes, done afterwards."""
    hidden = torch.stack(per_layer, dim=1).float()  # [b, L, T, d]
    if read == "prompt_last":
        index = batch.prompt_last_mask.float().argmax(1)
        return hidden[torch.arange(len(index)), :, index]
    weights = batch.response_mask.float() / batch.response_mask.sum(1, keepdim=True)
    return torch.einsum("bt,bltd->bld", weights, hidden)


class Bench:
    """The model, the conversation set, its batches, and one callable per method."""

    def __init__(self, args: argparse.Namespace, copies: bool = True) -> None:
        self.args = args
        self.model, self.tokenizer = load_model(args.model)
        self.conversations = neutral_conversations(args.n, seed=args.seed)
        rendered = render_chats(self.tokenizer, self.conversations)
        self.lengths = [len(r) for r in rendered]
        self.n_layers = len(find_blocks(self.model))
        self.batches = [
            (idx, pad_chats([rendered[i] for i in idx], self.tokenizer.pad_token_id, "right"))
            for idx in length_buckets(self.lengths, args.batch_tokens)
        ]
        from nnsight import LanguageModel
        from transformer_lens.model_bridge import TransformerBridge

        # Wrappers get copies in the timing process, so no wrapper can change what the others run.
        wrap = copy.deepcopy if copies else (lambda m: m)
        self.lm = LanguageModel(wrap(self.model), tokenizer=self.tokenizer)
        self.bridge = TransformerBridge.boot_transformers(self.model.name_or_path, hf_model=wrap(self.model))
        self.names = [hook_name(layer) for layer in range(self.n_layers)]

    def padded_tokens(self, sort: bool) -> int:
        buckets = length_buckets(self.lengths, self.args.batch_tokens, sort=sort)
        return sum(len(b) * max(self.lengths[i] for i in b) for b in buckets)

    def per_batch(self, key: str, read: str) -> Callable[[ChatBatch], torch.Tensor | None]:
        if key == "limit":
            body = decoder_body(self.model)

            def limit(b):
                body(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

            return limit
        if key == "hf":

            def hf(b):
                out = self.model(
                    input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True
                )
                return reduce(list(out.hidden_states[1:]), b, read)

            return hf
        if key == "tl":

            def tl(b):
                _, cache = self.bridge.run_with_cache(
                    b.input_ids, names_filter=lambda name: name in self.names
                )
                return reduce([cache[name] for name in self.names], b, read)

            return tl

        def nnsight(b):
            saved = []
            with self.lm.trace(b.input_ids):
                for layer in range(self.n_layers):
                    saved.append(self.lm.model.layers[layer].output.save())
            return reduce([s if torch.is_tensor(s) else s[0] for s in saved], b, read)

        return nnsight

    def run(self, key: str, read: str, batches=None, layers=None, bucket: bool = True) -> torch.Tensor | None:
        batches = self.batches if batches is None else batches
        if key == "ours":
            chosen = sorted(i for idx, _ in batches for i in idx)  # extract returns input order
            return extract(
                self.model,
                self.tokenizer,
                [self.conversations[i] for i in chosen],
                layers=layers,
                read=read,
                batch_tokens=self.args.batch_tokens,
                bucket=bucket,
                progress=False,
            ).tensor
        fn, out = self.per_batch(key, read), None
        for idx, batch in batches:
            values = fn(batch)
            if values is not None:
                out = torch.empty(len(self.lengths), *values.shape[1:]) if out is None else out
                out[idx] = values
        return out


@dataclass
class Row:
    method: str
    read: str
    seconds: float
    tokens: int
    max_abs_diff: float | None = None
    padded_tokens: int | None = None
    peak_extra_mb: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory_probe(args: argparse.Namespace) -> None:
    """Child-process mode: run one method on the widest batch; print its peak resident memory above
    the level just before it (Linux: the high-water mark is reset through /proc/self/clear_refs)."""
    bench = Bench(args, copies=False)
    with torch.inference_mode():  # warm-up: touches the (memory-mapped) weights and lazy state first
        bench.run(args.memory_probe, "response_mean", batches=bench.batches[-1:])
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    with torch.inference_mode():
        bench.run(args.memory_probe, "response_mean", batches=bench.batches[:1])
    print(json.dumps({"extra_mb": (_status_kb("VmHWM") - before) / 1024}))


def peak_memory(args: argparse.Namespace) -> dict[str, float]:
    """Peak extra memory of each method on the widest batch, one fresh process each."""
    extra = {}
    for key in LABELS:
        command = [
            sys.executable,
            "-m",
            "anchor.cli.bench_extract",
            "--memory-probe",
            key,
            "--model",
            args.model,
            "--n",
            str(args.n),
            "--batch-tokens",
            str(args.batch_tokens),
            "--seed",
            str(args.seed),
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        extra[key] = json.loads(out.strip().splitlines()[-1])["extra_mb"]
        print(f"  {LABELS[key]:<44} peak +{extra[key]:6.0f} MB")
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="default", help="model spec for anchor.load_model (default: SmolLM2-135M)"
    )
    parser.add_argument("--n", type=int, default=256, help="number of conversations (default 256)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="token budget per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the conversation set")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all methods; the fastest counts")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write the table to")
    parser.add_argument(
        "--sweep",
        help="comma-separated token budgets (e.g. 256,512,1024,2048,4096,8192): time anchor.extract and the "
        "decoder body at each instead, and append that table to --out",
    )
    parser.add_argument("--memory-probe", choices=list(LABELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args)
    if args.sweep:
        return sweep(args)

    bench = Bench(args)
    n_tokens = sum(bench.lengths)
    print(
        f"{args.n} conversations, {n_tokens} tokens ({min(bench.lengths)}-{max(bench.lengths)} each), "
        f"{len(bench.batches)} batches, {bench.n_layers} layers, {torch.get_num_threads()} threads"
    )
    half = list(range(bench.n_layers // 2))
    # (label, read, run, padded slots); each read's (a) row runs first and is the reference for (b)-(d).
    specs = [(LABELS["limit"], "-", lambda: bench.run("limit", "-"), None)]
    for read in READS:
        specs += [
            (LABELS[key], read, lambda k=key, r=read: bench.run(k, r), None)
            for key in ("ours", "hf", "tl", "nnsight")
        ]
    specs += [
        (
            f"anchor.extract, layers 0-{half[-1]} (half depth)",
            "response_mean",
            lambda: bench.run("ours", "response_mean", layers=half),
            None,
        ),
        (
            "anchor.extract, input-order batches",
            "response_mean",
            lambda: bench.run("ours", "response_mean", bucket=False),
            bench.padded_tokens(sort=False),
        ),
        (
            "anchor.extract, length-bucketed batches",
            "response_mean",
            lambda: bench.run("ours", "response_mean"),
            bench.padded_tokens(sort=True),
        ),
    ]

    print("warm-up ...")
    with torch.inference_mode():
        for key in LABELS:
            bench.run(key, "response_mean", batches=bench.batches[-1:])

    best: dict[tuple[str, str], Row] = {}
    last = bench.n_layers - 1  # HF's last hidden state has the final norm applied: compare layers before it
    for round_ in range(args.repeats):
        print(f"round {round_ + 1}/{args.repeats}")
        reference: dict[str, torch.Tensor] = {}
        for label, read, run, padded in specs:
            with torch.inference_mode():
                start = time.perf_counter()
                values = run()
                seconds = time.perf_counter() - start
            diff = None
            if label == LABELS["ours"]:
                reference[read] = values
            elif label in (LABELS["hf"], LABELS["tl"], LABELS["nnsight"]):
                diff = float((values[:, :last] - reference[read][:, :last]).abs().max())
            row = Row(label, read, seconds, n_tokens, diff, padded)
            print(
                f"  {label:<44} {read:<14} {seconds:7.2f} s {row.tokens_per_s:7.0f} tok/s"
                + (f"  max|diff| {diff:.1e}" if diff is not None else "")
            )
            if (label, read) not in best or seconds < best[(label, read)].seconds:
                best[(label, read)] = row
    print("peak memory, one process per method ...")
    extra = peak_memory(args)
    for (label, read), row in best.items():
        key = next((k for k, v in LABELS.items() if v == label), None)
        row.peak_extra_mb = extra.get(key) if read in ("-", "response_mean") else None
    write_table(Path(args.out), args, bench, list(best.values()))
    print(f"wrote {args.out}")


def write_table(path: Path, args: argparse.Namespace, bench: Bench, rows: list[Row]) -> None:
    n_tokens, lengths = sum(bench.lengths), bench.lengths
    ours = {row.read: row for row in rows if row.method == LABELS["ours"]}
    limit = rows[0]
    lines = [
        "# Benchmarks",
        "",
        "## Activation extraction (`scripts/bench_extract.py`)",
        "",
        f"Run {time.strftime('%Y-%m-%d')}: `python scripts/bench_extract.py --n {args.n} --batch-tokens "
        f"{args.batch_tokens} --repeats {args.repeats}` (fastest round) on {platform.machine()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {version('transformers')}, transformer-lens "
        f"{version('transformer-lens')}, nnsight {version('nnsight')}.",
        "",
        f"Model `{args.model}` ({bench.n_layers} layers), fp32. {args.n} conversations of the project's neutral "
        f"probe set (`anchor.probe_sets`), {n_tokens} tokens ({min(lengths)}-{max(lengths)} per conversation), "
        f"{len(bench.batches)} length-bucketed batches of at most {args.batch_tokens} token slots, right padding, "
        "all layers unless stated. tokens/s counts the conversations' tokens for every method. (b)-(e) get the "
        "same pre-tokenised batches; (a) renders and tokenises inside the timed region and runs only the prefix "
        "each read needs (through the last response token, or through the prompt's last token). `max abs diff` "
        "compares with (a) over layers 0..L-2 (HF's last hidden state has the final norm applied). Peak extra "
        "memory: in a fresh process per method, the peak resident memory while it runs on the widest batch, above "
        "the level just before (model loaded and warmed up on the narrowest batch).",
        "",
        "| method | read | seconds | tokens/s | vs limit (e) | (a) is faster by | peak extra MB, widest batch | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        faster = (
            f"{r.seconds / ours[r.read].seconds:.2f}x"
            if r.read in ours and r.method[:3] in ("(b)", "(c)", "(d)")
            else ""
        )
        diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        peak = "" if r.peak_extra_mb is None else f"{r.peak_extra_mb:.0f}"
        lines.append(
            f"| {r.method} | {r.read} | {r.seconds:.2f} | {r.tokens_per_s:.0f} | "
            f"{limit.seconds / r.seconds:.2f}x | {faster} | {peak} | {diff} |"
        )
    naive, bucketed = rows[-2], rows[-1]
    lines += [
        "",
        f"Batching: input-order batches pad to {naive.padded_tokens} token slots, length-bucketed ones to "
        f"{bucketed.padded_tokens} ({n_tokens} real tokens): {naive.tokens_per_s:.0f} versus "
        f"{bucketed.tokens_per_s:.0f} tokens/s.",
        "",
    ]
    path.write_text("\n".join(lines))


def sweep(args: argparse.Namespace) -> None:
    """anchor.extract (response_mean, all layers) and its limit, the bare decoder body, at each token
    budget per forward pass, alternated within each round (fastest round counts). The budget that
    reads fastest depends on the device (on CPU a narrow pass keeps its activations in cache), so
    `anchor.extract.default_batch_tokens` is chosen from this table."""
    budgets = sorted({int(b) for b in args.sweep.split(",")})
    model, tokenizer = load_model(args.model)
    conversations = neutral_conversations(args.n, seed=args.seed)
    rendered = render_chats(tokenizer, conversations)
    lengths = [len(r) for r in rendered]
    n_tokens = sum(lengths)
    body = decoder_body(model)

    def batches(budget: int) -> list[ChatBatch]:
        return [
            pad_chats([rendered[i] for i in idx], tokenizer.pad_token_id, "right")
            for idx in length_buckets(lengths, budget)
        ]

    padded = {b: batches(b) for b in budgets}

    def limit(budget: int) -> None:
        for b in padded[budget]:
            body(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def ours(budget: int) -> torch.Tensor:
        return extract(model, tokenizer, conversations, batch_tokens=budget, progress=False).tensor

    print(f"{args.n} conversations, {n_tokens} tokens, budgets {budgets}, {torch.get_num_threads()} threads")
    with torch.inference_mode():
        reference = ours(budgets[-1])  # also the warm-up
        best: dict[tuple[int, str], float] = {}
        diffs: dict[int, float] = {}
        for round_ in range(args.repeats):
            print(f"round {round_ + 1}/{args.repeats}")
            for budget in budgets:
                for what, fn in (("extract", ours), ("limit", limit)):
                    start = time.perf_counter()
                    values = fn(budget)
                    seconds = time.perf_counter() - start
                    if what == "extract":
                        diffs[budget] = float((values - reference).abs().max())
                    best[budget, what] = min(seconds, best.get((budget, what), float("inf")))
                    print(f"  {budget:>6} {what:<8} {seconds:7.2f} s {n_tokens / seconds:7.0f} tok/s")
    fastest = min(budgets, key=lambda b: best[b, "extract"])
    lines = [
        "",
        "## Token budget per forward pass (`scripts/bench_extract.py --sweep`)",
        "",
        f"Run {time.strftime('%Y-%m-%d')}: `python scripts/bench_extract.py --sweep {args.sweep} --n {args.n} "
        f"--repeats {args.repeats}` (fastest round) on {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}. Model `{args.model}`, fp32, "
        f"{args.n} neutral conversations ({n_tokens} tokens), response_mean over all layers, length-bucketed "
        f"right-padded batches. `max abs diff`: against the widest budget's read (float rounding of differently "
        "shaped matrix products).",
        "",
        "| token budget | anchor.extract (s) | tokens/s | decoder body (s) | vs the widest budget | max abs diff |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    widest = best[budgets[-1], "extract"]
    for b in budgets:
        lines.append(
            f"| {b} | {best[b, 'extract']:.2f} | {n_tokens / best[b, 'extract']:.0f} | {best[b, 'limit']:.2f} | "
            f"{widest / best[b, 'extract']:.2f}x | {diffs[b]:.1e} |"
        )
    lines += ["", f"Fastest here: {fastest} token slots per pass.", ""]
    with open(args.out, "a") as f:
        f.write("\n".join(lines))
    print(f"appended the table to {args.out}")


if __name__ == "__main__":
    main()
