"""Model and judge specs as small value types, parsed once where they enter (a command's flags, a
config's fields) instead of re-split wherever they are used.

Both are `str` subclasses: a spec is still the text the user gave, so it serialises into
`config.json` and stage keys exactly as before, compares equal to that text, and prints as it.
"""

from __future__ import annotations

SERVED = "openai:"


class ModelSpec(str):
    """`default`, a local model folder, a hub name (`owner/name`), or `openai:<model>`: a model behind
    an OpenAI-compatible server (it can generate, e.g. teach, but not be trained or read)."""

    __slots__ = ()

    def __new__(cls, text: str) -> ModelSpec:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"model spec {text!r}: give default, a model folder or a hub name")
        if text.startswith(SERVED) and not text.removeprefix(SERVED):
            raise ValueError(f"model spec {text!r}: name the served model after 'openai:'")
        return super().__new__(cls, text)

    @property
    def served(self) -> bool:
        return self.startswith(SERVED)

    @property
    def served_name(self) -> str:
        """The model's name on the server (`openai:<name>`)."""
        if not self.served:
            raise ValueError(f"model spec {str(self)!r} is not a served model")
        return self.removeprefix(SERVED)


JUDGE_KINDS = ("hf", "openai", "probe", "distilled")
JUDGE_FORMS = "hf:<model spec>, openai:<model>, probe:<directions file> or distilled:default|<folder>"


class JudgeSpec(str):
    """`<kind>:<target>`: `hf:<model spec>` (a local LLM judge), `openai:<model>` (a server),
    `probe:<directions file>` (no LLM) or `distilled:default|<folder>` (heads fitted to a reference
    judge's labels)."""

    __slots__ = ()

    def __new__(cls, text: str) -> JudgeSpec:
        kind, _, target = str(text).partition(":")
        if kind not in JUDGE_KINDS or not target:
            raise ValueError(f"judge {str(text)!r}: use {JUDGE_FORMS}")
        return super().__new__(cls, text)

    @property
    def kind(self) -> str:
        return self.partition(":")[0]

    @property
    def target(self) -> str:
        return self.partition(":")[2]

    @property
    def model(self) -> ModelSpec:
        """The judging model of an `hf:` judge."""
        if self.kind != "hf":
            raise ValueError(f"judge {str(self)!r} is not an hf: judge")
        return ModelSpec(self.target)
