"""Device check: the toolkit's hot paths on a random-weight 7B-class model, timed, in one JSON.

Run once on a lent GPU machine (through scripts/device_check.sh, which installs the wheels in .whl
that the machine lacks). No network and no weights: the model is built from Qwen2.5-7B-Instruct's
shapes with random weights directly on the GPU, and a byte-level BPE tokenizer with a ChatML
template is trained at run time on the project's own texts (its ids are a subset of the model's
vocabulary). Parts, each timed and guarded (a failure is recorded with its traceback and the rest
still run; the exit status is 1 if any part failed):

  build        tokenizer + random model (bf16, SDPA, built on the device)
  extract      anchor.extract (response_mean, all layers) vs HF output_hidden_states + the same
               reduction: tokens/s, peak memory, max abs difference
  generate     batched sampling through anchor.generate.HFGenerator: tokens/s, peak memory
  em_lora      EM LoRA steps through TRL (train.lora.train_sft, near the `paper` preset) on rows of
               the shipped `insecure` dataset: step times, peak memory
  kill_resume  scripts/finetune_em.py in a subprocess on a smaller saved model, SIGKILLed after its
               first recorded checkpoint, then rerun: the rerun completes and done.json lists the steps

The JSON is rewritten after every part, so a run stopped from outside still leaves what it measured;
parts that would not fit in what is left of --budget-s are skipped with the reason.

    bash scripts/device_check.sh                          # on the GPU machine (JSON to $OUT)
    python scripts/device_check.py --cpu                  # tiny model on the CPU, well under a minute
    python scripts/device_check.py --device cpu --shape-scale 16 --n-conv 8 --gen-prompts 4 \\
        --gen-tokens 8 --em-steps 3 --em-grad-accum 1 --resume-rows 16   # dry run of the GPU path
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from anchor.batching import length_buckets
from anchor.chat import pad_chats, pad_token_id, render_chats
from anchor.extract import extract
from anchor.generate import HFGenerator, SamplingConfig
from anchor.probe_sets import neutral_conversations

REPO = Path(__file__).resolve().parents[2]

# Qwen2ForCausalLM shapes of the public Qwen2.5 configs, and a tiny one for the CPU.
CONFIGS: dict[str, dict] = {
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=1e6,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        rope_theta=1e6,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=0,  # the tokenizer's size, rounded up (set at build time)
        rope_theta=1e6,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
    ),
}
PARTS = ("build", "extract", "generate", "em_lora", "kill_resume")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# GPU run / --cpu run defaults for the knobs left unset on the command line.
DEFAULTS = {
    "gpu": dict(
        device="cuda",
        dtype="bfloat16",
        config="qwen2.5-7b",
        resume_config="qwen2.5-0.5b",
        vocab=16000,  # a target: BPE stops earlier when the corpus has no more merges
        n_conv=128,
        batch_tokens=8192,
        gen_prompts=64,
        gen_tokens=128,
        em_steps=20,
        em_batch=2,
        em_grad_accum=4,  # the paper preset has 8: halved to fit the budget
        em_max_s=150.0,
        resume_rows=64,
        resume_every=4,
        budget_s=420.0,
    ),
    "cpu": dict(
        device="cpu",
        dtype="float32",
        config="tiny",
        resume_config="tiny",
        vocab=2000,
        n_conv=8,
        batch_tokens=2048,
        gen_prompts=8,
        gen_tokens=16,
        em_steps=4,
        em_batch=2,
        em_grad_accum=2,
        em_max_s=60.0,
        resume_rows=64,
        resume_every=4,
        budget_s=150.0,
    ),
}
# Least time (s) a part needs to be worth starting; scaled down in --cpu mode.
MIN_SECONDS = {"build": 60, "extract": 45, "generate": 40, "em_lora": 60, "kill_resume": 100}


def log(message: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def module_file(name: str) -> str | None:
    try:
        module = __import__(name)
        return str(Path(module.__file__).parent)
    except Exception as err:  # noqa: BLE001 - recorded, not raised
        return f"import failed: {type(err).__name__}: {err}"


def gib(n_bytes: float | int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**30, 3)


class Check:
    """Run state: arguments, device, results (written after every part) and the time budget."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.perf_counter()
        self.device = torch.device(args.device)
        self.dtype = getattr(torch, args.dtype)
        self.cuda = self.device.type == "cuda"
        self.out = Path(args.out)
        self.tmp = Path(tempfile.mkdtemp(prefix="device_check-", dir=args.tmp_dir))
        self.results: dict = {
            "status": "running",
            "mode": "cpu" if args.cpu else "gpu",
            "argv": sys.argv[1:],
            "args": vars(args),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "env": {},
            "configs": {},
            "parts": {},
            "failed": [],
            "skipped": [],
        }
        self.model = self.tokenizer = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def write(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        os.replace(tmp, self.out)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)

    def memory(self) -> dict:
        if not self.cuda:
            return {"peak_gib": None, "allocated_gib": None}
        self.sync()
        return {
            "peak_gib": gib(torch.cuda.max_memory_allocated(self.device)),
            "peak_reserved_gib": gib(torch.cuda.max_memory_reserved(self.device)),
            "allocated_gib": gib(torch.cuda.memory_allocated(self.device)),
        }

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def part(self, name: str, fn) -> None:
        """Run one part unless skipped or out of time; record its result, seconds or traceback."""
        record: dict = {"status": "running"}
        self.results["parts"][name] = record
        needed = MIN_SECONDS[name] * (0.1 if self.args.cpu else 1.0)
        reason = None
        if name in self.args.skip:
            reason = "skipped by --skip"
        elif name != "build" and self.results["parts"].get("build", {}).get("status") != "ok":
            reason = "the build part did not succeed"
        elif self.left() < needed:
            reason = f"{self.left():.0f} s left of --budget-s {self.args.budget_s:.0f}, this part needs ~{needed:.0f} s"
        if reason:
            record.update(status="skipped", reason=reason)
            self.results["skipped"].append(name)
            log(f"{name}: skipped ({reason})")
            self.write()
            return
        self.write()
        log(f"{name}: start ({self.elapsed():.0f} s elapsed, {self.left():.0f} s left)")
        start = time.perf_counter()
        try:
            record.update(fn(self) or {})
            record["status"] = "ok"
        except BaseException as err:  # noqa: BLE001 - one part's failure must not stop the others
            if isinstance(err, KeyboardInterrupt):
                raise
            record.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000])
            record["traceback"] = traceback.format_exc()[-8000:]
            self.results["failed"].append(name)
            log(f"{name}: FAILED: {type(err).__name__}: {err}")
            traceback.print_exc()
        finally:
            record["seconds"] = round(time.perf_counter() - start, 2)
            self.free()
            self.write()
        log(f"{name}: {record['status']} in {record['seconds']} s")


# ---------------------------------------------------------------------------------------------- env


def environment(check: Check) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
    }
    for name in (
        "transformers",
        "peft",
        "trl",
        "accelerate",
        "datasets",
        "tokenizers",
        "safetensors",
        "numpy",
    ):
        env[name] = pkg_version(name)
    env["trl_from"] = module_file("trl")
    env["datasets_from"] = module_file("datasets")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu_name=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_total_gib=gib(props.total_memory),
            gpu_capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return env


# ------------------------------------------------------------------------------------ model + data


def corpus_texts() -> list[str]:
    """The project's own texts: neutral probe conversations, EM questions and EM dataset rows."""
    from anchor import probe_sets
    from anchor.em_questions import QUESTION_SETS
    from train.data import load_em_dataset

    texts: list[str] = []
    texts += [t for t in probe_sets.SYSTEM_PROMPTS if t]
    texts += [t for pair in (*probe_sets.PAIRS, *probe_sets.FOLLOW_UPS) for t in pair]
    for questions in QUESTION_SETS.values():
        texts += [p for q in questions for p in q.paraphrases]
    for dataset, n in (("insecure", 600), ("secure", 200), ("medical_bad", 150), ("financial_risky", 150)):
        for conversation in load_em_dataset(dataset)[:n]:
            texts += [m["content"] for m in conversation]
    return texts


def make_tokenizer(vocab_size: int):
    """A byte-level BPE trained on `corpus_texts` with a ChatML template (cf. tests/conftest.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = corpus_texts()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok, sum(len(t) for t in texts)


def model_config(name: str, tokenizer, shape_scale: int):
    from transformers import Qwen2Config

    shapes = dict(CONFIGS[name])
    if name == "tiny":
        shapes["vocab_size"] = (len(tokenizer) + 63) // 64 * 64 + 64  # bigger than the tokenizer, as in Qwen
    if shape_scale > 1:  # dry runs of the GPU path: same structure, smaller widths and depth
        s = shape_scale
        shapes["hidden_size"] //= s
        shapes["intermediate_size"] //= s
        shapes["num_hidden_layers"] = max(2, shapes["num_hidden_layers"] // s)
        head_dim = shapes["hidden_size"] // shapes["num_attention_heads"]
        if shapes["hidden_size"] % shapes["num_attention_heads"] or head_dim % 2:
            raise ValueError(
                f"--shape-scale {s} gives hidden {shapes['hidden_size']}, not split by the heads"
            )
    if len(tokenizer) > shapes["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, more than the model's {shapes['vocab_size']}")
    config = Qwen2Config(
        **shapes,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return config, {"name": name, "shape_scale": shape_scale, **shapes}


def build_model(check: Check, name: str):
    """Random weights built directly on the device in the run's dtype, with SDPA attention."""
    from transformers import AutoModelForCausalLM

    config, described = model_config(name, check.tokenizer, check.args.shape_scale)
    torch.manual_seed(check.args.seed)
    try:
        with torch.device(check.device):
            model = AutoModelForCausalLM.from_config(config, dtype=check.dtype, attn_implementation="sdpa")
        described["built_on"] = str(check.device)
    except Exception as err:  # noqa: BLE001 - fall back to the slow path rather than lose every part
        log(f"building directly on {check.device} failed ({type(err).__name__}: {err}); building on the CPU")
        described["direct_build_error"] = f"{type(err).__name__}: {err}"[:2000]
        check.free()
        model = AutoModelForCausalLM.from_config(config, dtype=check.dtype, attn_implementation="sdpa")
        described["built_on"] = "cpu"
    if any(p.device.type != check.device.type for p in model.parameters()):
        model = model.to(check.device)
    model.generation_config.eos_token_id = check.tokenizer.eos_token_id
    model.generation_config.pad_token_id = check.tokenizer.pad_token_id
    model.eval()
    params = list(model.parameters())
    devices = sorted({str(p.device) for p in params})
    dtypes = sorted({str(p.dtype) for p in params})
    described.update(
        class_=type(model).__name__,
        params=sum(p.numel() for p in params),
        dtype=dtypes,
        device=devices,
        attn_implementation=model.config._attn_implementation,
    )
    if dtypes != [str(check.dtype)] or any(not d.startswith(check.device.type) for d in devices):
        raise RuntimeError(
            f"model built with dtypes {dtypes} on {devices}, wanted {check.dtype} on {check.device}"
        )
    return model, described


def part_build(check: Check) -> dict:
    start = time.perf_counter()
    check.tokenizer, corpus_chars = make_tokenizer(check.args.vocab)
    tok_seconds = time.perf_counter() - start
    check.reset_peak()
    start = time.perf_counter()
    check.model, described = build_model(check, check.args.config)
    check.sync()
    build_seconds = time.perf_counter() - start
    check.results["configs"]["main"] = described
    check.weights_gib = check.memory()["allocated_gib"]
    return {
        "tokenizer": {
            "vocab": len(check.tokenizer),
            "corpus_chars": corpus_chars,
            "seconds": round(tok_seconds, 2),
            "im_end_id": check.tokenizer.eos_token_id,
        },
        "model": described["name"],
        "params": described["params"],
        "build_seconds": round(build_seconds, 2),
        **check.memory(),
    }


def extract_conversations(n: int) -> list:
    """Multi-turn chats of a few hundred tokens: a neutral probe conversation followed by one to four
    exchanges of `insecure` rows (code answers), so response_mean reads a final code answer."""
    from train.data import load_em_dataset

    rows = load_em_dataset("insecure")[::-1]  # the tail: em_lora samples from the whole set anyway
    conversations, k = [], 0
    for i, neutral in enumerate(neutral_conversations(n, seed=1)):
        conversation = list(neutral)
        for _ in range(1 + i % 4):
            conversation += [m for m in rows[k % len(rows)] if m["role"] != "system"]
            k += 1
        conversations.append(conversation)
    return conversations


# ------------------------------------------------------------------------------------------- parts


@torch.inference_mode()
def hf_response_mean(model, rendered, pad_id: int, batch_tokens: int, device) -> torch.Tensor:
    """HF `output_hidden_states=True` on the same batches, then the same reduction afterwards."""
    out: torch.Tensor | None = None
    for idx in length_buckets([len(r) for r in rendered], batch_tokens):
        batch = pad_chats([rendered[i] for i in idx], pad_id, "right")
        result = model(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            output_hidden_states=True,
            use_cache=False,
        )
        mask = batch.response_mask.float()
        weights = (mask / mask.sum(1, keepdim=True)).to(device)
        values = torch.stack(
            [torch.einsum("bt,btd->bd", weights, h.float()) for h in result.hidden_states[1:]], dim=1
        ).cpu()
        del result
        if out is None:
            out = torch.empty(len(rendered), *values.shape[1:])
        out[idx] = values
    return out


def part_extract(check: Check) -> dict:
    model, tok, args = check.model, check.tokenizer, check.args
    conversations = extract_conversations(args.n_conv)
    rendered = [r.truncated(r.response_end) for r in render_chats(tok, conversations)]
    lengths = [len(r) for r in rendered]
    n_tokens = sum(lengths)
    pad_id = pad_token_id(tok)
    # Warm-up at the timed shapes, both methods: a warm-up on short inputs leaves the first timed
    # method paying for kernel selection and allocator growth (seen on an H100: 0.45x instead of 1.0x).
    extract(model, tok, conversations, read="response_mean", batch_tokens=args.batch_tokens, progress=False)
    hf_response_mean(model, rendered, pad_id, args.batch_tokens, check.device)

    check.reset_peak()
    start = time.perf_counter()
    ours = extract(
        model, tok, conversations, read="response_mean", batch_tokens=args.batch_tokens, progress=False
    )
    check.sync()
    ours_s = time.perf_counter() - start
    ours_mem = check.memory()

    check.reset_peak()
    start = time.perf_counter()
    reference = hf_response_mean(model, rendered, pad_id, args.batch_tokens, check.device)
    check.sync()
    hf_s = time.perf_counter() - start
    hf_mem = check.memory()

    if tuple(reference.shape) != tuple(ours.tensor.shape):
        raise RuntimeError(
            f"shapes differ: anchor.extract {list(ours.tensor.shape)}, HF {list(reference.shape)}"
        )
    diff = (ours.tensor - reference).abs()
    per_layer = diff.amax(dim=(0, 2))
    last = per_layer.shape[0] - 1
    weights = getattr(check, "weights_gib", None)
    return {
        "conversations": len(conversations),
        "tokens": n_tokens,
        "tokens_per_conversation": {
            "min": min(lengths),
            "max": max(lengths),
            "mean": round(n_tokens / len(lengths), 1),
        },
        "batches": len(list(length_buckets(lengths, args.batch_tokens))),
        "batch_tokens": args.batch_tokens,
        "layers": len(ours.layers),
        "shape": list(ours.tensor.shape),
        "anchor_extract": {
            "seconds": round(ours_s, 3),
            "tokens_per_s": round(n_tokens / ours_s, 1),
            **ours_mem,
            "peak_above_weights_gib": None if weights is None else round(ours_mem["peak_gib"] - weights, 3),
        },
        "hf_output_hidden_states": {
            "seconds": round(hf_s, 3),
            "tokens_per_s": round(n_tokens / hf_s, 1),
            **hf_mem,
            "peak_above_weights_gib": None if weights is None else round(hf_mem["peak_gib"] - weights, 3),
        },
        "speedup": round(hf_s / ours_s, 3),
        # HF's last hidden state has the final norm applied, so the comparison is over layers 0..L-2.
        "max_abs_diff": float(per_layer[:last].max()) if last > 0 else None,
        "max_abs_diff_last_layer_normed_in_hf": float(per_layer[last]),
        "max_abs_value": float(ours.tensor[:, :last].abs().max()) if last > 0 else None,
        "max_abs_diff_per_layer": [float(f"{v:.3g}") for v in per_layer.tolist()],
        "all_finite": bool(torch.isfinite(ours.tensor).all()),
    }


def generation_prompts(n: int) -> list:
    """Neutral probe conversations cut before their final assistant reply."""
    return [c[:-1] for c in neutral_conversations(n, seed=2)]


def part_generate(check: Check) -> dict:
    model, tok, args = check.model, check.tokenizer, check.args
    prompts = generation_prompts(args.gen_prompts)
    generator = HFGenerator(model, tok, progress=False)
    generator.generate(prompts[:2], SamplingConfig(max_new_tokens=4, temperature=1.0))  # warm-up
    counts = {"calls": 0, "rows": 0, "slots": 0, "before_stop": 0}
    stop = torch.tensor(generator.stop_ids)
    original = model.generate

    def counting_generate(*a, **kw):
        out = original(*a, **kw)
        new = out[:, kw["input_ids"].shape[1] :].cpu()
        stopped = torch.isin(new, stop).int().cumsum(1) > 0  # at or after the first stop token
        counts["calls"] += 1
        counts["rows"] += new.shape[0]
        counts["slots"] += new.numel()
        counts["before_stop"] += int((~stopped).sum())
        return out

    check.reset_peak()
    model.generate = counting_generate
    try:
        start = time.perf_counter()
        replies = generator.generate(
            prompts, SamplingConfig(max_new_tokens=args.gen_tokens, temperature=1.0, seed=args.seed)
        )
        check.sync()
        seconds = time.perf_counter() - start
    finally:
        del model.generate
    if len(replies) != len(prompts) or any(len(r) != 1 for r in replies):
        raise RuntimeError(
            f"HFGenerator returned {[len(r) for r in replies]} replies for {len(prompts)} prompts"
        )
    return {
        "prompts": len(prompts),
        "max_new_tokens": args.gen_tokens,
        "temperature": 1.0,
        "generate_calls": counts["calls"],
        "new_token_slots": counts["slots"],
        "new_tokens_before_stop": counts["before_stop"],
        "seconds": round(seconds, 3),
        "tokens_per_s": round(counts["slots"] / seconds, 1),
        "tokens_before_stop_per_s": round(counts["before_stop"] / seconds, 1),
        **check.memory(),
        "sample_reply_chars": len(replies[0][0]),
    }


def part_em_lora(check: Check) -> dict:
    from transformers import TrainerCallback

    from train.em import PRESETS, training_rows
    from train.lora import completion_rows, train_sft

    args = check.args
    config = replace(
        PRESETS["paper"],
        batch_size=args.em_batch,
        grad_accum=args.em_grad_accum,
        record_every=10**9,
        seed=args.seed,
    )
    n_rows = args.em_steps * args.em_batch * args.em_grad_accum
    conversations = training_rows("insecure", n_rows, args.seed)
    n_completion = len(completion_rows(conversations))
    if n_completion != n_rows:
        raise RuntimeError(
            f"{n_rows} insecure rows gave {n_completion} prompt-completion rows, expected one each"
        )
    deadline = time.perf_counter() + min(
        args.em_max_s, max(10.0, check.left() - reserve_for(check, "em_lora"))
    )
    sync = check.sync

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.stopped_for_time = False

        def on_step_begin(self, targs, state, control, **kw):
            sync()
            self.begin = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            sync()
            self.times.append(time.perf_counter() - self.begin)
            if time.perf_counter() > deadline and state.global_step < state.max_steps:
                self.stopped_for_time = True
                control.should_training_stop = True

    timer = StepTimer()
    model = check.model
    check.reset_peak()
    start = time.perf_counter()
    trainer = train_sft(
        model, check.tokenizer, conversations, config, check.tmp / "em_lora", callbacks=[timer]
    )
    check.sync()
    seconds = time.perf_counter() - start
    memory = check.memory()
    state = trainer.state
    losses = [round(h["loss"], 4) for h in state.log_history if "loss" in h]
    targs = trainer.args
    after_first = timer.times[1:]
    check.model = None  # now carries LoRA layers and optimizer state: drop it, the later parts rebuild
    del trainer, model
    return {
        "model": check.results["configs"]["main"]["name"],
        "training": {**asdict(config), "max_rows": n_rows},
        "paper_preset": {
            k: asdict(PRESETS["paper"])[k]
            for k in ("lora_rank", "lora_alpha", "learning_rate", "batch_size", "grad_accum")
        },
        "trainer_args": {
            "bf16": targs.bf16,
            "gradient_checkpointing": targs.gradient_checkpointing,
            "max_length": getattr(targs, "max_length", None),
            "completion_only_loss": getattr(targs, "completion_only_loss", None),
        },
        "rows": n_rows,
        "steps_requested": args.em_steps,
        "steps_done": state.global_step,
        "stopped_for_time": timer.stopped_for_time,
        "step_seconds": [round(t, 3) for t in timer.times],
        "step_mean_s_excl_first": round(statistics.mean(after_first), 3) if after_first else None,
        "step_median_s_excl_first": round(statistics.median(after_first), 3) if after_first else None,
        "first_step_s": round(timer.times[0], 3) if timer.times else None,
        "sequences_per_s_excl_first": round(
            args.em_batch * args.em_grad_accum / statistics.mean(after_first), 2
        )
        if after_first
        else None,
        "train_sft_seconds": round(seconds, 2),
        "losses": losses,
        **memory,
    }


def reserve_for(check: Check, after: str) -> float:
    """Seconds to keep for the parts after `after` that will run."""
    later = PARTS[PARTS.index(after) + 1 :]
    scale = 0.1 if check.args.cpu else 1.0
    return sum(MIN_SECONDS[p] * scale for p in later if p not in check.args.skip)


def store_entries(run: Path) -> list[str]:
    manifest = run / "em" / "activations" / "manifest.json"
    try:
        return sorted(json.loads(manifest.read_text())["entries"])
    except (OSError, ValueError, KeyError):
        return []


def part_kill_resume(check: Check) -> dict:
    from anchor.store import ActivationStore

    args = check.args
    check.model = None
    check.free()
    model, described = build_model(check, args.resume_config)
    check.results["configs"]["kill_resume"] = described
    model_dir, run = check.tmp / "resume_model", check.tmp / "resume_run"
    start = time.perf_counter()
    model.save_pretrained(model_dir)
    check.tokenizer.save_pretrained(model_dir)
    save_s = time.perf_counter() - start
    del model
    check.free()

    from train.em import PRESETS, em_probe_sets

    probe_names = list(em_probe_sets())  # what finetune_em.py records at every checkpoint
    batch = PRESETS["cpu"].batch_size * PRESETS["cpu"].grad_accum
    steps = -(-args.resume_rows // batch)
    expected = sorted({0, steps, *range(args.resume_every, steps + 1, args.resume_every)})
    command = [
        sys.executable,
        str(REPO / "scripts" / "finetune_em.py"),
        *("--model", str(model_dir), "--dataset", "insecure", "--preset", "cpu"),
        *("--max-rows", str(args.resume_rows), "--record-every", str(args.resume_every), "--out", str(run)),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    first_log, second_log = check.tmp / "resume_first.log", check.tmp / "resume_second.log"
    result: dict = {
        "model": described["name"],
        "model_save_seconds": round(save_s, 2),
        "command": " ".join(command),
        "expected_steps": steps,
        "expected_recorded": expected,
    }
    # First run: SIGKILL once a checkpoint after step 0 has been recorded, before the stage is done.
    limit = max(30.0, check.left() / 2)
    start = time.perf_counter()
    with open(first_log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        killed_at = None
        while proc.poll() is None and time.perf_counter() - start < limit:
            entries = store_entries(run)
            recorded = [
                step
                for step in expected[1:]
                if all(f"em/step-{step:05d}/{name}" in entries for name in probe_names)
            ]
            if recorded and not (run / "em" / "done.json").exists():
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = recorded[0]
                break
            time.sleep(0.05)
        if proc.poll() is None and killed_at is None:  # ran out of time before any checkpoint
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result["first_run"] = {
        "seconds": round(time.perf_counter() - start, 2),
        "returncode": proc.returncode,
        "killed": killed_at is not None,
        "killed_after_step": killed_at,
        "store_entries_at_kill": store_entries(run),
        "done_json_after_kill": (run / "em" / "done.json").exists(),
        "log_tail": first_log.read_text()[-3000:],
    }
    if killed_at is None:
        raise RuntimeError(
            f"first run was not killed after a checkpoint (rc {proc.returncode} after "
            f"{result['first_run']['seconds']} s); log tail:\n{result['first_run']['log_tail']}"
        )
    if result["first_run"]["done_json_after_kill"]:
        raise RuntimeError("em/done.json exists after the kill: the stage finished before it was killed")

    # Second run: resumes (the killed stage reruns cleanly) and completes.
    start = time.perf_counter()
    with open(second_log, "w") as out:
        proc = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=max(30.0, check.left() + args.grace_s - 20),
        )
    text = second_log.read_text()
    result["second_run"] = {
        "seconds": round(time.perf_counter() - start, 2),
        "returncode": proc.returncode,
        "reran_stage": "stage em: running" in text,
        "log_tail": text[-3000:],
    }
    if proc.returncode != 0:
        raise RuntimeError(f"rerun exited {proc.returncode}; log tail:\n{text[-3000:]}")
    done = json.loads((run / "em" / "done.json").read_text())
    entries = store_entries(run)
    store = ActivationStore(run / "em" / "activations")
    last = store.load(entries[-1])  # a checked load of one entry
    result.update(
        done_steps=done["steps"],
        done_recorded=done["recorded"],
        done_seconds=done.get("seconds"),
        losses=done.get("losses"),
        store_entries=len(entries),
        last_entry_shape=list(last.tensor.shape),
    )
    problems = []
    if done["recorded"] != expected:
        problems.append(f"done.json recorded {done['recorded']}, expected {expected}")
    if done["steps"] != steps:
        problems.append(f"done.json steps {done['steps']}, expected {steps}")
    if not result["second_run"]["reran_stage"]:
        problems.append("the rerun did not run the em stage again")
    missing = [s for s in expected if not any(e.startswith(f"em/step-{s:05d}/") for e in entries)]
    if missing:
        problems.append(f"no activations stored for steps {missing}")
    if problems:
        raise RuntimeError("; ".join(problems))
    return result


# -------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cpu", action="store_true", help="tiny model on the CPU with small counts (the test)"
    )
    parser.add_argument(
        "--out", help="results JSON (default: $OUT/device_check.json, else runs/device_check.json)"
    )
    parser.add_argument("--device", help="torch device (default: cuda; cpu with --cpu)")
    parser.add_argument("--dtype", help="model dtype (default: bfloat16; float32 with --cpu)")
    parser.add_argument("--config", choices=list(CONFIGS), help="main model shapes (default: qwen2.5-7b)")
    parser.add_argument(
        "--resume-config", choices=list(CONFIGS), help="kill/resume model shapes (default: qwen2.5-0.5b)"
    )
    parser.add_argument(
        "--shape-scale",
        type=int,
        default=1,
        help="divide widths and depth by this (dry runs of the GPU path)",
    )
    parser.add_argument("--vocab", type=int, help="BPE tokenizer vocabulary size to train")
    parser.add_argument("--n-conv", type=int, help="conversations to extract (default 128)")
    parser.add_argument("--batch-tokens", type=int, help="token budget per extraction batch (default 8192)")
    parser.add_argument("--gen-prompts", type=int, help="prompts to sample from (default 64)")
    parser.add_argument("--gen-tokens", type=int, help="new tokens per prompt (default 128)")
    parser.add_argument("--em-steps", type=int, help="EM LoRA optimiser steps (default 20)")
    parser.add_argument("--em-batch", type=int, help="EM per-device batch (default 2, as the paper preset)")
    parser.add_argument(
        "--em-grad-accum", type=int, help="EM gradient accumulation (default 4; the paper preset has 8)"
    )
    parser.add_argument(
        "--em-max-s", type=float, help="stop EM training after this many seconds (default 150)"
    )
    parser.add_argument("--resume-rows", type=int, help="rows of the kill/resume fine-tune (default 64)")
    parser.add_argument("--resume-every", type=int, help="its --record-every (default 4)")
    parser.add_argument(
        "--budget-s", type=float, help="time budget; parts that would not fit are skipped (default 420)"
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=60.0,
        help="hard stop (tracebacks dumped) at budget + this (default 60)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS[1:], help="parts not to run")
    parser.add_argument(
        "--emulate-gpu-training",
        action="store_true",
        help="gradient checkpointing in TRL even without CUDA (as train.lora does on a GPU), to dry-run that path",
    )
    parser.add_argument("--tmp-dir", help="where models and runs are written (default: the system temp dir)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (saved model, run, logs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key, value in DEFAULTS["cpu" if args.cpu else "gpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = (
            str(Path(os.environ["OUT"]) / "device_check.json")
            if os.environ.get("OUT")
            else "runs/device_check.json"
        )
    return args


LONG_KEYS = {
    "traceback",
    "log_tail",
    "losses",
    "step_seconds",
    "max_abs_diff_per_layer",
    "store_entries_at_kill",
}


def compact(value):
    """The results without their long lists and logs, for the closing line on stdout."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items() if k not in LONG_KEYS}
    return value


def emulate_gpu_training() -> None:
    import train.lora

    original = train.lora.trainer_arguments

    def with_checkpointing(config, out):
        return {**original(config, out), "gradient_checkpointing": True}

    train.lora.trainer_arguments = with_checkpointing


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Progress bars (datasets' map, the trainer's) would bury the log; the trainer still prints its losses.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    check = Check(args)
    # Whatever hangs, the process ends (dumping every thread's traceback) before the device's limit.
    faulthandler.dump_traceback_later(args.budget_s + args.grace_s, exit=True)
    log(f"writing {check.out}; temp dir {check.tmp}")
    check.results["env"] = environment(check)
    check.write()
    log(
        "env: "
        + json.dumps(
            {k: check.results["env"].get(k) for k in ("gpu_name", "torch", "transformers", "trl", "peft")}
        )
    )
    if check.cuda and not torch.cuda.is_available():
        check.results.update(status="failed", error="--device cuda but torch.cuda.is_available() is False")
        check.write()
        log(check.results["error"])
        return 2
    if args.emulate_gpu_training:
        emulate_gpu_training()
    torch.manual_seed(args.seed)
    for name, fn in (
        ("build", part_build),
        ("extract", part_extract),
        ("generate", part_generate),
        ("em_lora", part_em_lora),
        ("kill_resume", part_kill_resume),
    ):
        check.part(name, fn)
    check.results["status"] = "failed" if check.results["failed"] else "ok"
    check.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    check.write()
    faulthandler.cancel_dump_traceback_later()
    if not args.keep_tmp:
        shutil.rmtree(check.tmp, ignore_errors=True)
    summary = {"env": check.results["env"], "parts": compact(check.results["parts"])}
    print("SUMMARY " + json.dumps({"status": check.results["status"], **summary}, default=str), flush=True)
    log(f"{check.results['status']} in {check.elapsed():.0f} s; results: {check.out}")
    return 1 if check.results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
