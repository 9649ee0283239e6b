"""Extraction on a GPU, side by side in one process: anchor.extract against the decoder-body limit
and HF `output_hidden_states`, on a random-weight model with real 7B shapes (Qwen2.5-7B, bf16,
SDPA) built by the device check. Methods alternate over rounds and the fastest round counts, so
no method gains from running after another warmed the allocator.

    bash scripts/device_check.sh  # prepares nothing for this; run on a GPU machine:
    python scripts/bench_extract_gpu.py --out $OUT/bench_extract_gpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anchor.batching import length_buckets
from anchor.chat import pad_chats, pad_token_id, render_chats
from anchor.extract import read_rendered
from anchor.hooks import decoder_body
from train.cli.device_check import extract_conversations, make_tokenizer, model_config


@torch.inference_mode()
def limit(model, batches, positions: bool) -> None:
    """The decoder body on the same batches with no hooks (with or without explicit positions)."""
    body = decoder_body(model)
    for padded in batches:
        attention = padded.attention_mask.cuda()
        extra = {"position_ids": (attention.cumsum(-1) - 1).clamp(min=0)} if positions else {}
        body(input_ids=padded.input_ids.cuda(), attention_mask=attention, use_cache=False, **extra)


@torch.inference_mode()
def hf_hidden_states(model, batches) -> None:
    for padded in batches:
        out = model(
            input_ids=padded.input_ids.cuda(),
            attention_mask=padded.attention_mask.cuda(),
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=1,
        )
        mask = padded.response_mask.float().cuda()
        weights = mask / mask.sum(1, keepdim=True)
        torch.stack([torch.einsum("bt,btd->bd", weights, h.float()) for h in out.hidden_states[1:]], 1).cpu()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="qwen2.5-7b", help="model shapes (device_check CONFIGS)")
    parser.add_argument("--n", type=int, default=128, help="conversations (default 128)")
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_extract_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_extract_gpu.py needs a CUDA device")

    tokenizer, _ = make_tokenizer(16000)
    config, shapes = model_config(args.config, tokenizer, 1)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    rendered = [r.truncated(r.response_end) for r in render_chats(tokenizer, extract_conversations(args.n))]
    tokens = sum(len(r) for r in rendered)
    pad = pad_token_id(tokenizer)
    results = {"gpu": torch.cuda.get_device_name(), "model": shapes, "tokens": tokens, "budgets": {}}
    for budget in args.batch_tokens:
        batches = [
            pad_chats([rendered[i] for i in b], pad, "right")
            for b in length_buckets([len(r) for r in rendered], budget)
        ]
        methods = {
            "limit (body, no hooks, positions)": lambda b=batches: limit(model, b, True),
            "limit (body, no hooks, no positions)": lambda b=batches: limit(model, b, False),
            "anchor.extract (read_rendered)": lambda bt=budget: read_rendered(
                model, rendered, None, "response_mean", pad, bt, progress=False
            ),
            "HF output_hidden_states": lambda b=batches: hf_hidden_states(model, b),
        }
        best: dict[str, float] = {}
        peaks: dict[str, float] = {}
        for run in methods.values():  # warm-up at these shapes
            run()
        for _ in range(args.rounds):
            for name, run in methods.items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                run()
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                best[name] = min(best.get(name, float("inf")), seconds)
                peaks[name] = torch.cuda.max_memory_allocated() / 2**30
        results["budgets"][str(budget)] = {
            name: {
                "seconds": round(s, 3),
                "tokens_per_s": round(tokens / s),
                "peak_gib": round(peaks[name], 2),
            }
            for name, s in best.items()
        }
        print(json.dumps({budget: results["budgets"][str(budget)]}, indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
