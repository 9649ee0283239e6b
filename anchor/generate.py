"""Sampling responses to conversations behind one interface, so pipelines run on HF `generate`
on a CPU and on vLLM on a GPU without change."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anchor.batching import length_buckets
from anchor.chat import Conversation, pad_chats, render_chats

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
    """Maps conversations (each ending on a user turn) to `n` sampled assistant replies each."""

    @abstractmethod
    def generate(
        self, conversations: Sequence[Conversation], config: SamplingConfig | None = None, **overrides
    ) -> list[list[str]]:
        """Returns, in input order, a list of `config.n` replies per conversation."""


def _config(config: SamplingConfig | None, overrides: dict) -> SamplingConfig:
    return replace(config or SamplingConfig(), **overrides)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(i for i in ids if i is not None)


class HFGenerator(Generator):
    """Batched sampling with transformers' `generate`: left padding, length bucketing, stop tokens."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_tokens: int = 16384,
        max_batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.batch_tokens, self.max_batch_size, self.progress = batch_tokens, max_batch_size, progress
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    @torch.inference_mode()
    def generate(
        self, conversations: Sequence[Conversation], config: SamplingConfig | None = None, **overrides
    ) -> list[list[str]]:
        cfg = _config(config, overrides)
        for i, conversation in enumerate(conversations):
            if (
                conversation
                and isinstance(conversation[-1], dict)
                and conversation[-1].get("role") == "assistant"
            ):
                raise ValueError(f"conversation {i}: ends with an assistant message; nothing to generate")
        rendered = render_chats(self.tokenizer, conversations)
        # Each prompt row costs its length plus the new tokens, times n samples.
        costs = [(len(r) + cfg.max_new_tokens) * cfg.n for r in rendered]
        results: list[list[str]] = [[] for _ in rendered]
        device = self.model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            bar = tqdm(total=len(rendered), desc="generate", unit="prompt", disable=not self.progress)
            for batch in length_buckets(costs, self.batch_tokens, self.max_batch_size):
                padded = pad_chats([rendered[i] for i in batch], self.pad_id, side="left")
                out = self.model.generate(
                    input_ids=padded.input_ids.to(device),
                    attention_mask=padded.attention_mask.to(device),
                    max_new_tokens=cfg.max_new_tokens,
                    do_sample=cfg.temperature > 0,
                    temperature=cfg.temperature if cfg.temperature > 0 else None,
                    top_p=cfg.top_p if cfg.temperature > 0 else None,
                    top_k=None,
                    num_return_sequences=cfg.n,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                )
                new_tokens = out[:, padded.input_ids.shape[1] :].cpu()
                texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for row, text in enumerate(texts):  # rows are [prompt0 x n, prompt1 x n, ...]
                    results[batch[row // cfg.n]].append(text.strip())
                bar.update(len(batch))
            bar.close()
        return results


class VLLMGenerator(Generator):
    """vLLM back-end (the `gpu` extra). A PEFT adapter is served through vLLM's LoRA support, so
    the base weights stay shared and the adapter need not be merged."""

    def __init__(
        self,
        spec: str,
        adapter: str | os.PathLike | None = None,
        max_lora_rank: int = 64,
        progress: bool = True,
        **llm_kwargs,
    ) -> None:
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as err:
            raise ImportError(
                "VLLMGenerator needs vllm, which is not installed. Install the GPU extra: "
                "pip install 'identity-anchor[gpu]' (or use HFGenerator)."
            ) from err
        from anchor.models import resolve_spec

        self.progress = progress
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter is not None else None
        if adapter is not None:
            llm_kwargs.setdefault("enable_lora", True)
            llm_kwargs.setdefault("max_lora_rank", max_lora_rank)
        self.llm = LLM(model=resolve_spec(spec), **llm_kwargs)

    def generate(
        self, conversations: Sequence[Conversation], config: SamplingConfig | None = None, **overrides
    ) -> list[list[str]]:
        from vllm import SamplingParams

        cfg = _config(config, overrides)
        params = SamplingParams(
            n=cfg.n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
        )
        outputs = self.llm.chat(
            [list(c) for c in conversations],
            params,
            use_tqdm=self.progress,
            lora_request=self.lora,
            add_generation_prompt=True,
        )
        return [[o.text.strip() for o in out.outputs] for out in outputs]


def make_generator(spec: str, adapter: str | os.PathLike | None = None, backend: str = "auto") -> Generator:
    """vLLM where it can run (a CUDA device and the `gpu` extra installed), else batched HF
    `generate`. `backend` forces "vllm" or "hf"."""
    if backend not in ("auto", "vllm", "hf"):
        raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', got {backend!r}")
    if backend == "auto":
        import importlib.util

        backend = "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"
    if backend == "vllm":
        return VLLMGenerator(spec, adapter=adapter)
    from anchor.models import load_model

    return HFGenerator(*load_model(spec, adapter=adapter))
