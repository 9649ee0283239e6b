"""A teacher (or any generator) served over HTTP: an OpenAI-compatible chat endpoint such as
`vllm serve` or a hosted API, so a model larger than the training GPU's share can teach.

Requests carry the project's sampling policy in the standard fields (temperature, top_p, n,
max_tokens, seed); a vLLM server is started with `--generation-config vllm` so the model's shipped
sampling defaults do not fill the fields a request leaves out. Replies that end on the token limit
(`finish_reason == "length"`) are marked in `truncated`. No prefill: the server applies its own
chat template."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from anchor.chat import Conversation
from anchor.generate import Generator, SamplingConfig, _config
from anchor.http import post_json

PREFIX = "openai:"


class OpenAIGenerator(Generator):
    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 16,
        timeout: float = 600.0,
        retries: int = 4,
        progress: bool = True,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError(
                f"{PREFIX}{model} needs a server: set OPENAI_BASE_URL (e.g. http://localhost:8000/v1)"
            )
        self.model, self.url = model, base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.concurrency, self.timeout, self.retries, self.progress = concurrency, timeout, retries, progress

    def _one(self, job: tuple[Conversation, SamplingConfig]) -> list[tuple[str, bool]]:
        conversation, cfg = job
        body = {
            "model": self.model,
            "messages": list(conversation),
            "n": cfg.n,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p if cfg.temperature > 0 else 1.0,
            "max_tokens": cfg.max_new_tokens,
            "seed": cfg.seed,
        }
        response, error = post_json(self.url, body, self.api_key, self.timeout, self.retries)
        if response is None:
            raise RuntimeError(f"{PREFIX}{self.model}: no answer from {self.url} ({error})")
        choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != cfg.n:
            raise RuntimeError(f"{PREFIX}{self.model}: asked for {cfg.n} choices, got {len(choices)}")
        return [
            (str((c.get("message") or {}).get("content") or "").strip(), c.get("finish_reason") == "length")
            for c in choices
        ]

    def generate(
        self,
        conversations: Sequence[Conversation],
        config: SamplingConfig | None = None,
        prefill: str = "",
        **overrides,
    ) -> list[list[str]]:
        if prefill:
            raise ValueError(f"{PREFIX}{self.model}: a prefill cannot be sent through a chat endpoint")
        cfg = _config(config, overrides)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            jobs = [(c, cfg) for c in conversations]
            replies = list(
                tqdm(
                    pool.map(self._one, jobs),
                    total=len(jobs),
                    desc=f"generate {self.model}",
                    disable=not self.progress,
                )
            )
        self.truncated = [[cut for _, cut in r] for r in replies]
        return [[text for text, _ in r] for r in replies]
