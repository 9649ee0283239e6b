"""Benchmark generation: `HFGenerator` against transformers' faster paths (and vLLM when installed), on
the same prompts, sampling and lengths, methods alternated after a warm-up, beside the hardware's limit.

  hf           HFGenerator as the project runs it (dynamic KV cache, length buckets, stop tokens)
  hf-static    the same `generate` call with a static KV cache (`cache_implementation="static"`)
  continuous   transformers' continuous batching with paged attention (`generate_batch`)
  vllm         vLLM, when installed (CUDA only)
  limit        bare decode-step forward passes: the same batch, a KV cache at the same lengths, no
               sampling, no stop checks (on CUDA also the bandwidth bound: model bytes / bandwidth)

tokens/s counts the new tokens each method returned (up to and including each row's stop token), so
rows that stop early make a method look slower than the limit, which always runs every step; the
table says how many tokens each produced. Greedy output is compared with `hf`'s, reply for reply.
Appends a markdown table to BENCHMARKS.md (or --out).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import platform
import statistics
import threading
import time
from collections.abc import Callable
from importlib.metadata import version

import psutil
import torch

from anchor import load_model, timings
from anchor.chat import pad_chats, render_chats
from anchor.cli.bench_out import append_table
from anchor.em_questions import question_set
from anchor.generate import HFGenerator, SamplingConfig, hf_sampling_kwargs, neutral_generation_config

METHODS = ("hf", "hf-static", "continuous", "vllm")


class PeakMemory:
    """Peak memory while a block runs, above the level at its start: CUDA's allocator peak on a GPU,
    the process's resident set (sampled every 5 ms) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        process = psutil.Process()
        self._start, self._peak, self._stop = process.memory_info().rss, 0, threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, process.memory_info().rss)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._start) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self._peak - self._start, 0) / 2**20


def prompts(n: int) -> list[list[dict]]:
    """`n` user turns from the EM evaluation questions (cycled): the prompts the project samples most."""
    questions = [p for q in question_set("broad") for p in q.paraphrases]
    return [[{"role": "user", "content": questions[i % len(questions)]}] for i in range(n)]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model, self.tokenizer = load_model(args.model)
        self.device = next(self.model.parameters()).device
        self.conversations = prompts(args.n)
        self.config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0)
        self.generator = HFGenerator(self.model, self.tokenizer, progress=False)
        self.rendered = render_chats(self.tokenizer, self.conversations)
        self._vllm = None

    def run(self, method: str, config: SamplingConfig) -> tuple[list[str], int]:
        """(the reply per prompt, the new tokens made) by `method`."""
        if method == "hf":
            before = timings.totals().tokens_generated
            texts = self.generator.generate(self.conversations, config)
            return [t[0] for t in texts], timings.totals().tokens_generated - before
        if method == "vllm":
            from anchor.generate import VLLMGenerator

            if self._vllm is None:
                self._vllm = VLLMGenerator(self.args.model, progress=False)
            texts = [t[0] for t in self._vllm.generate(self.conversations, config)]
            return texts, sum(len(self.tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts)
        rows = self._static(config) if method == "hf-static" else self._continuous(config)
        rows = self._until_stop(rows)
        texts = self.tokenizer.batch_decode([torch.tensor(r) for r in rows], skip_special_tokens=True)
        return [t.strip() for t in texts], sum(len(r) for r in rows)

    def _static(self, config: SamplingConfig) -> torch.Tensor:
        padded = pad_chats(self.rendered, self.generator.pad_id, side="left")
        torch.manual_seed(config.seed)
        with neutral_generation_config(self.model):
            out = self.model.generate(
                input_ids=padded.input_ids.to(self.device),
                attention_mask=padded.attention_mask.to(self.device),
                **hf_sampling_kwargs(config),
                eos_token_id=self.generator.stop_ids,
                pad_token_id=self.generator.pad_id,
                cache_implementation="static",
            )
        return out[:, padded.input_ids.shape[1] :].cpu()

    def _continuous(self, config: SamplingConfig) -> list[torch.Tensor]:
        from transformers import GenerationConfig

        generation = GenerationConfig(
            **hf_sampling_kwargs(config),
            eos_token_id=self.generator.stop_ids,
            pad_token_id=self.generator.pad_id,
        )
        torch.manual_seed(config.seed)
        outputs = self.model.generate_batch(
            [list(r.input_ids) for r in self.rendered], generation_config=generation, warmup=False
        )
        ordered = sorted(outputs.values(), key=lambda o: int(str(o.request_id).rsplit("_", 1)[-1]))
        return [torch.tensor(o.generated_tokens) for o in ordered]

    def _until_stop(self, rows) -> list[list[int]]:
        stops = set(self.generator.stop_ids)
        out = []
        for row in rows:
            ids = [int(t) for t in row]
            end = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
            out.append(ids[:end])
        return out

    @torch.inference_mode()
    def limit(self) -> float:
        """Seconds for the decode steps alone: prefill once (untimed), then `max_new_tokens` forward
        passes of one token per row on the growing KV cache, no sampling and no stop checks."""
        padded = pad_chats(self.rendered, self.generator.pad_id, side="left")
        ids, mask = padded.input_ids.to(self.device), padded.attention_mask.to(self.device)
        # transformers renamed `past_key_values` to `cache` (5.25); either release runs here
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache, token = getattr(out, name), out.logits[:, -1:].argmax(-1)
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(self.args.max_new_tokens):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = self.model(input_ids=token, attention_mask=mask, use_cache=True, **{name: cache})
            cache = getattr(out, name)
            token = out.logits[:, -1:].argmax(-1)  # next input; sampling is not part of the limit
        _sync(self.device)
        return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bandwidth_bound(model: torch.nn.Module, batch: int, bandwidth_gb_s: float) -> float:
    """Decode tokens/s if each step only had to read the weights once: bandwidth / bytes x batch."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return bandwidth_gb_s * 1e9 / weight_bytes * batch


def time_method(bench: Bench, method: str) -> tuple[float, int, float]:
    """(seconds, new tokens, peak extra MB) of one run."""
    gc.collect()
    with PeakMemory(bench.device) as memory:
        _sync(bench.device)
        start = time.perf_counter()
        _, tokens = bench.run(method, bench.config)
        _sync(bench.device)
        seconds = time.perf_counter() - start
    return seconds, tokens, memory.peak_mb


def available(bench: Bench, method: str) -> str | None:
    """None when `method` runs here, else why not (tried once, on two prompts, before timing)."""
    if method == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            return "vllm is not installed"
        if bench.device.type != "cuda":
            return "vLLM needs CUDA"
    try:
        saved = bench.conversations, bench.rendered
        bench.conversations, bench.rendered = saved[0][:2], saved[1][:2]
        bench.run(method, SamplingConfig(max_new_tokens=2, temperature=0))
    except Exception as err:  # a path this transformers/torch build cannot run: said in the table
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    finally:
        bench.conversations, bench.rendered = saved
    return None


def measure(bench: Bench, methods: list[str], repeats: int, log: Callable[[str], None] = print) -> dict:
    """Median seconds per method over `repeats` rounds, the methods alternated within each round after
    one untimed warm-up round; greedy agreement with `hf`; the limit measured in the same rounds."""
    unavailable = {m: why for m in methods if (why := available(bench, m))}
    running = [m for m in methods if m not in unavailable]
    for m in running:  # warm-up: caches, allocator, any compilation
        bench.run(m, bench.config)
    bench.limit()
    results: dict = {m: {"seconds": [], "peak_mb": []} for m in running}
    results["limit"] = {"seconds": [], "peak_mb": []}
    for round_ in range(repeats):
        for m in running:
            seconds, tokens, peak = time_method(bench, m)
            results[m]["seconds"].append(seconds)
            results[m]["peak_mb"].append(peak)
            results[m]["tokens"] = tokens  # the same every round: one seed per round
            log(f"round {round_ + 1}: {m} {seconds:.2f} s, {results[m]['tokens']} tokens")
        with PeakMemory(bench.device) as memory:
            results["limit"]["seconds"].append(bench.limit())
        results["limit"]["peak_mb"].append(memory.peak_mb)
        results["limit"]["tokens"] = len(bench.conversations) * bench.args.max_new_tokens
        log(f"round {round_ + 1}: limit {results['limit']['seconds'][-1]:.2f} s")
    greedy = SamplingConfig(max_new_tokens=bench.args.max_new_tokens, temperature=0)
    reference = bench.run("hf", greedy)[0]
    for m in running:
        results[m]["greedy_identical"] = m == "hf" or bench.run(m, greedy)[0] == reference
    for r in results.values():
        r["median_seconds"] = statistics.median(r["seconds"])
        r["tokens_per_s"] = r["tokens"] / r["median_seconds"]
    return {"results": results, "unavailable": unavailable}


def table(bench: Bench, measured: dict, args: argparse.Namespace) -> str:
    results, limit = measured["results"], measured["results"]["limit"]["tokens_per_s"]
    device = bench.device
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()}, {psutil.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    )
    lines = [
        f"Run {time.strftime('%Y-%m-%d')}: `python scripts/bench_generate.py --model {args.model} --n {args.n} "
        f"--max-new-tokens {args.max_new_tokens} --temperature {args.temperature} --repeats {args.repeats}` on "
        f"{where}; Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{version('transformers')}. {args.n} prompts (EM questions) in one batch, "
        f"{bench.model.dtype}; median of {args.repeats} alternated rounds after a warm-up round.",
        "",
        "| method | seconds | new tokens | tokens/s | vs limit | peak extra MB | greedy output = hf |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("limit", *(m for m in METHODS if m in results)):
        r = results[name]
        label = "limit: bare decode steps" if name == "limit" else name
        same = "" if name == "limit" else ("yes" if r["greedy_identical"] else "no")
        lines.append(
            f"| {label} | {r['median_seconds']:.2f} | {r['tokens']} | {r['tokens_per_s']:.0f} | "
            f"{r['tokens_per_s'] / limit:.2f}x | {max(r['peak_mb']):.0f} | {same} |"
        )
    for name, why in measured["unavailable"].items():
        lines.append(f"| {name} | not run: {why} | | | | | |")
    if device.type == "cuda" and args.bandwidth_gb_s:
        bound = bandwidth_bound(bench.model, args.n, args.bandwidth_gb_s)
        best = max(r["tokens_per_s"] for n, r in results.items() if n != "limit")
        lines += [
            "",
            f"Decode bandwidth bound at batch {args.n}: {args.bandwidth_gb_s:.0f} GB/s / model bytes x {args.n} = "
            f"{bound:.0f} tokens/s; the fastest method reaches {best / bound:.0%} of it, the bare decode steps "
            f"{limit / bound:.0%}.",
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--n", type=int, default=32, help="prompts, generated as one batch (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="the sampling the project uses (default 1)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per method (median reported)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--bandwidth-gb-s",
        type=float,
        default=None,
        help="the GPU's memory bandwidth, for the bound (H100: 3350)",
    )
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file the table is appended to")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    bench = Bench(args)
    measured = measure(bench, args.methods, args.repeats)
    append_table(args.out, "Generation (`scripts/bench_generate.py`)", table(bench, measured, args))


if __name__ == "__main__":
    main()
