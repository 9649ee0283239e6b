"""Sampling responses to conversations behind one interface, so pipelines run on HF `generate`
on a CPU and on vLLM on a GPU without change.

Both back-ends sample exactly what `SamplingConfig` says: a model's shipped `generation_config`
never applies (Qwen2.5 ships top_k 20, top_p 0.8 and repetition penalty 1.05, which would
quietly lower EM rates), and both see the same prompt tokens, rendered here, so templates without
a system role fold it the same way on both.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from anchor import engines, timings
from anchor.batching import length_buckets
from anchor.chat import Conversation, RenderedChat, pad_chats, render_chats
from anchor.specs import ModelSpec

# End-of-turn tokens of common chat templates; generation stops at any that the vocabulary has.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 with temperature 0 would return n identical greedy samples")


class Generator(ABC):
    """Maps conversations (each ending on a user turn) to `n` sampled assistant replies each.

    A generator that owns an engine or a model frees it in `close()`; use it as a context manager
    so the GPU is free again before training or a judge needs it.

    After each call, `truncated[i][k]` says whether reply k to conversation i stopped at
    `max_new_tokens` rather than at a stop token (pipelines drop such replies and count them).
    `prefill` starts every reply with that text (not returned), where the back-end allows it."""

    truncated: list[list[bool]] = []

    @abstractmethod
    def generate(
        self,
        conversations: Sequence[Conversation],
        config: SamplingConfig | None = None,
        prefill: str = "",
        **overrides,
    ) -> list[list[str]]:
        """Returns, in input order, a list of `config.n` replies per conversation."""

    @property
    def thinks(self) -> bool:
        """Whether the model's chat template has a thinking section a prefill can open."""
        template = getattr(getattr(self, "tokenizer", None), "chat_template", None) or ""
        return "<think>" in template

    def close(self) -> None:  # noqa: B027 (a no-op by default, not abstract)
        """Free what this generator owns (nothing, unless it loaded its own model or engine)."""

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _config(config: SamplingConfig | None, overrides: dict) -> SamplingConfig:
    return replace(config or SamplingConfig(), **overrides)


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, configured_eos: int | list[int] | None = None
) -> list[int]:
    """EOS, the model's configured EOS ids and the end-of-turn tokens the vocabulary has."""
    ids = {tokenizer.eos_token_id}
    ids.update(configured_eos if isinstance(configured_eos, list) else [configured_eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(i for i in ids if i is not None)


def truncation(generator: Generator, replies: Sequence[Sequence[str]]) -> list[list[bool]]:
    """The `truncated` flags of a generator's last call, all False for one that does not report them."""
    return getattr(generator, "truncated", None) or [[False] * len(r) for r in replies]


def with_prefill(tokenizer, rendered: list[RenderedChat], prefill: str) -> list[RenderedChat]:
    """Each prompt followed by the start of the reply (e.g. an opened thinking section)."""
    if not prefill:
        return rendered
    ids = tokenizer.encode(prefill, add_special_tokens=False)
    return [
        RenderedChat(r.input_ids + ids, len(r) + len(ids) - 1, len(r) + len(ids), len(r) + len(ids))
        for r in rendered
    ]


def hf_sampling_kwargs(cfg: SamplingConfig) -> dict:
    """`generate` keywords for `cfg`, every filter that a shipped config could switch on set to
    off: no top-k, no min-p, no typical sampling, no repetition penalty."""
    if cfg.temperature == 0:
        return dict(do_sample=False, max_new_tokens=cfg.max_new_tokens, repetition_penalty=1.0)
    return dict(
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        min_p=None,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_new_tokens=cfg.max_new_tokens,
    )


def vllm_sampling_kwargs(cfg: SamplingConfig, stop_ids: Sequence[int]) -> dict:
    """`vllm.SamplingParams` keywords for `cfg`: the same policy as `hf_sampling_kwargs`
    (top_k -1 and min_p 0 switch those filters off in vLLM)."""
    return dict(
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
        top_k=-1,
        min_p=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        stop_token_ids=list(stop_ids),
        skip_special_tokens=True,
    )


@contextmanager
def neutral_generation_config(model: PreTrainedModel) -> Iterator[None]:
    """Hide the model's shipped sampling defaults while `generate` runs: transformers fills every
    sampling field the call leaves unset from `model.generation_config`, so a field added in a
    later release would otherwise leak in. Special-token ids are kept."""
    from anchor.hooks import unwrap

    base = unwrap(model)
    shipped = base.generation_config
    base.generation_config = GenerationConfig(
        bos_token_id=shipped.bos_token_id,
        eos_token_id=shipped.eos_token_id,
        pad_token_id=shipped.pad_token_id,
        decoder_start_token_id=getattr(shipped, "decoder_start_token_id", None),
    )
    try:
        yield
    finally:
        base.generation_config = shipped


class HFGenerator(Generator):
    """Batched sampling with transformers' `generate`: left padding, length bucketing, stop tokens."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_tokens: int = 16384,
        max_batch_size: int = 64,
        progress: bool = True,
        owns_model: bool = False,
    ) -> None:
        """`owns_model`: the model was loaded for this generator alone (by `make_generator`), so
        `close()` frees it and it counts as a live engine until then."""
        self.model, self.tokenizer = model, tokenizer
        self.owns_model = owns_model
        if owns_model:
            engines.register(self, f"hf:{getattr(model, 'name_or_path', type(model).__name__)}")
        self.batch_tokens, self.max_batch_size, self.progress = batch_tokens, max_batch_size, progress
        self.stop_ids = stop_token_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    @torch.inference_mode()
    def generate(
        self,
        conversations: Sequence[Conversation],
        config: SamplingConfig | None = None,
        prefill: str = "",
        **overrides,
    ) -> list[list[str]]:
        cfg = _config(config, overrides)
        for i, conversation in enumerate(conversations):
            if (
                conversation
                and isinstance(conversation[-1], dict)
                and conversation[-1].get("role") == "assistant"
            ):
                raise ValueError(f"conversation {i}: ends with an assistant message; nothing to generate")
        rendered = with_prefill(self.tokenizer, render_chats(self.tokenizer, conversations), prefill)
        # Each prompt row costs its length plus the new tokens, times n samples.
        costs = [(len(r) + cfg.max_new_tokens) * cfg.n for r in rendered]
        results: list[list[str]] = [[] for _ in rendered]
        self.truncated = [[] for _ in rendered]
        stops = torch.tensor(self.stop_ids)
        device = self.model.device
        fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with fork, neutral_generation_config(self.model):
            torch.manual_seed(cfg.seed)
            bar = tqdm(total=len(rendered), desc="generate", unit="prompt", disable=not self.progress)
            for batch in length_buckets(costs, self.batch_tokens, self.max_batch_size):
                padded = pad_chats([rendered[i] for i in batch], self.pad_id, side="left")
                out = self.model.generate(
                    input_ids=padded.input_ids.to(device),
                    attention_mask=padded.attention_mask.to(device),
                    **hf_sampling_kwargs(cfg),
                    num_return_sequences=cfg.n,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                )
                new_tokens = out[:, padded.input_ids.shape[1] :].cpu()
                texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                is_stop = torch.isin(new_tokens, stops)
                stopped = is_stop.any(-1).tolist()
                # new tokens up to and including each row's first stop (the rest is padding)
                made = torch.where(is_stop.any(-1), is_stop.int().argmax(-1) + 1, new_tokens.shape[1])
                timings.count(tokens_generated=int(made.sum()))
                for row, text in enumerate(texts):  # rows are [prompt0 x n, prompt1 x n, ...]
                    results[batch[row // cfg.n]].append(text.strip())
                    self.truncated[batch[row // cfg.n]].append(not stopped[row])
                bar.update(len(batch))
            bar.close()
        return results

    def close(self) -> None:
        if self.owns_model and self.model is not None:
            self.model = None
            _free_torch_memory()
            engines.release(self)


def _free_torch_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_gpu_memory(utilization: float, free: int | None = None, total: int | None = None) -> None:
    """vLLM claims `utilization` of the GPU's total memory and fails to start when less is free;
    say so up front, with both numbers, instead of after minutes of engine start-up."""
    if not 0 < utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization must be in (0, 1], got {utilization}")
    if free is None or total is None:
        free, total = torch.cuda.mem_get_info()
    wanted = utilization * total
    if free < wanted:
        gib = 2**30
        raise RuntimeError(
            f"vLLM wants {wanted / gib:.1f} GiB ({utilization:.2f} of {total / gib:.1f} GiB) but only "
            f"{free / gib:.1f} GiB of GPU memory is free. Free the GPU (a model, judge or engine still "
            f"loaded?) or pass --gpu-memory-utilization {max(0.05, free / total - 0.02):.2f} or lower."
        )


def _vllm_worker(connection, model: str, adapter: str | None, engine_kwargs: dict) -> None:
    """The child process that owns the vLLM engine: its GPU memory goes when the process does."""
    import traceback

    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        llm = LLM(model=model, **engine_kwargs)
        lora = LoRARequest("adapter", 1, adapter) if adapter is not None else None
        connection.send(("ready", None))
        while (message := connection.recv()) is not None:
            token_ids, params, progress = message
            outputs = llm.generate(
                [TokensPrompt(prompt_token_ids=ids) for ids in token_ids],
                SamplingParams(**params),
                use_tqdm=progress,
                lora_request=lora,
            )
            replies = [[(o.text, o.finish_reason == "length") for o in out.outputs] for out in outputs]
            connection.send(("ok", replies))
    except Exception:
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def vllm_engine_kwargs(
    adapter: str | os.PathLike | None, gpu_memory_utilization: float, max_lora_rank: int, **extra
) -> dict:
    """`vllm.LLM` keywords. `generation_config="vllm"`: the model's shipped sampling defaults are
    ignored here too, not only overridden per request."""
    kwargs = dict(gpu_memory_utilization=gpu_memory_utilization, generation_config="vllm", **extra)
    if adapter is not None:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
    return kwargs


class VLLMGenerator(Generator):
    """vLLM back-end (the `gpu` extra), run in a child process so that closing it returns every
    byte of GPU memory it took (an in-process engine does not reliably let go of it). A PEFT
    adapter is served through vLLM's LoRA support, so the base weights need not be merged.
    Prompts are rendered here with the project's chat rendering and sent as token ids."""

    def __init__(
        self,
        spec: str,
        adapter: str | os.PathLike | None = None,
        gpu_memory_utilization: float = 0.85,
        max_lora_rank: int = 64,
        progress: bool = True,
        start_timeout_s: float = 1800,
        **llm_kwargs,
    ) -> None:
        import importlib.util
        import multiprocessing

        from transformers import AutoTokenizer

        from anchor.models import resolve_spec

        if importlib.util.find_spec("vllm") is None:
            raise ImportError(
                "VLLMGenerator needs vllm, which is not installed. Install the GPU extra: "
                "pip install 'identity-anchor[gpu]' (or use HFGenerator)."
            )
        check_gpu_memory(gpu_memory_utilization)
        source = resolve_spec(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        try:
            shipped_eos = GenerationConfig.from_pretrained(source).eos_token_id
        except OSError:  # no generation_config.json
            shipped_eos = None
        self.stop_ids = stop_token_ids(self.tokenizer, shipped_eos)
        self.progress = progress
        engines.register(self, f"vllm:{spec}")
        context = multiprocessing.get_context("spawn")  # a forked CUDA context is unusable
        self.connection, child = context.Pipe()
        kwargs = vllm_engine_kwargs(adapter, gpu_memory_utilization, max_lora_rank, **llm_kwargs)
        self.process = context.Process(
            target=_vllm_worker, args=(child, source, str(adapter) if adapter else None, kwargs), daemon=True
        )
        self.process.start()
        child.close()
        try:
            self._receive(start_timeout_s, "start")
        except BaseException:
            self.close()
            raise

    def _receive(self, timeout_s: float | None, what: str):
        if not self.connection.poll(timeout_s):
            raise TimeoutError(f"vLLM engine did not {what} within {timeout_s} s")
        try:
            status, payload = self.connection.recv()
        except EOFError as err:
            raise RuntimeError(
                f"vLLM engine process exited during {what} (exit code {self.process.exitcode})"
            ) from err
        if status == "error":
            raise RuntimeError(f"vLLM engine failed during {what}:\n{payload}")
        return payload

    def generate(
        self,
        conversations: Sequence[Conversation],
        config: SamplingConfig | None = None,
        prefill: str = "",
        **overrides,
    ) -> list[list[str]]:
        if self.process is None:
            raise RuntimeError("this VLLMGenerator is closed")
        cfg = _config(config, overrides)
        rendered = with_prefill(self.tokenizer, render_chats(self.tokenizer, conversations), prefill)
        token_ids = [list(r.input_ids) for r in rendered]
        self.connection.send((token_ids, vllm_sampling_kwargs(cfg, self.stop_ids), self.progress))
        replies = self._receive(None, "generation")
        self.truncated = [[cut for _, cut in samples] for samples in replies]
        return [[text.strip() for text, _ in samples] for samples in replies]

    def close(self, timeout_s: float = 120) -> None:
        """Stop the engine's process and wait for it: its GPU memory is the driver's again."""
        if getattr(self, "process", None) is None:
            return
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(30)
        self.connection.close()
        self.process = None
        engines.release(self)

    def __del__(self) -> None:  # a generator dropped without close() must not leave its engine running
        self.close()


def make_generator(
    spec: str,
    adapter: str | os.PathLike | None = None,
    backend: str = "auto",
    gpu_memory_utilization: float = 0.85,
) -> Generator:
    """vLLM where it can run (a CUDA device and the `gpu` extra installed), else batched HF
    `generate`; `openai:<model>` is a model behind an OpenAI-compatible server ($OPENAI_BASE_URL).
    `backend` forces "vllm" or "hf". The generator owns its engine or model: use it in a `with`
    block (at most one is alive at a time; see `anchor.engines`)."""
    spec = ModelSpec(spec)
    if spec.served:
        from anchor.openai_generator import OpenAIGenerator

        return OpenAIGenerator(spec.served_name)
    if backend not in ("auto", "vllm", "hf"):
        raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', got {backend!r}")
    if backend == "auto":
        import importlib.util

        backend = "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"
    if backend == "vllm":
        return VLLMGenerator(spec, adapter=adapter, gpu_memory_utilization=gpu_memory_utilization)
    from anchor.models import load_model

    engines.assert_no_engine(f"generator {spec!r}")
    return HFGenerator(*load_model(spec, adapter=adapter), owns_model=True)
