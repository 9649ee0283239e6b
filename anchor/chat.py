"""Render conversations with the tokenizer's chat template and mark where the response is.

Activation reads need two positions per conversation: the prompt's last token (the model's state
just before it answers) and the tokens of the final assistant message (averaged for
`response_mean`). Token positions are found from character offsets in the rendered text, so they
are exact for any template: no template-specific markers, no assumptions about where the
end-of-turn tokens go.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
Conversation = list[Message]
PaddingSide = Literal["left", "right"]

ROLES = ("system", "user", "assistant")

# Chat template -> whether it renders a system message. Keyed by template text, so it is decided
# (and warned about) once per template.
_SYSTEM_SUPPORT: dict[str, bool] = {}
_PROBE_SYSTEM = "SYSTEM-PROBE-7f3a"


@dataclass(frozen=True)
class RenderedChat:
    """One tokenised conversation. `response` is the [start, end) token span of the final
    assistant message; it is empty (start == end == len) when the conversation ends on a user turn,
    which is then rendered with the generation prompt."""

    input_ids: list[int]
    prompt_last: int
    response_start: int
    response_end: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def truncated(self, length: int) -> RenderedChat:
        """The first `length` tokens. In a causal model nothing after a position changes its
        activations, so reads that need only a prefix can skip the rest."""
        if not self.prompt_last < length <= len(self):
            raise ValueError(f"cannot truncate to {length} tokens: the prompt needs {self.prompt_last + 1}")
        return RenderedChat(
            self.input_ids[:length],
            self.prompt_last,
            min(self.response_start, length),
            min(self.response_end, length),
        )


@dataclass
class ChatBatch:
    """Padded tensors `[batch, seq]`; the masks are boolean."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_last_mask: torch.Tensor
    response_mask: torch.Tensor


def validate_conversation(conversation: object, index: int = 0) -> Conversation:
    """Reject malformed input early, naming the conversation, the message and the field."""
    where = f"conversation {index}"
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {type(conversation).__name__}")
    for i, message in enumerate(conversation):
        if not isinstance(message, dict):
            raise ValueError(f"{where}, message {i}: expected a dict with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(
                f"{where}, message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
            )
        if not isinstance(content, str):
            raise ValueError(
                f"{where}, message {i}: 'content' must be a string, got {type(content).__name__}"
            )
        if role == "system" and i != 0:
            raise ValueError(f"{where}, message {i}: a system message may only come first")
    if not any(m["role"] == "user" for m in conversation):
        raise ValueError(f"{where}: has no user turn")
    return conversation


def _supports_system(tokenizer: PreTrainedTokenizerBase) -> bool:
    template = tokenizer.chat_template
    if template not in _SYSTEM_SUPPORT:
        probe = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": "hi"}]
        try:
            supported = _PROBE_SYSTEM in tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:  # templates signal "no system role" with raise_exception
            supported = False
        _SYSTEM_SUPPORT[template] = supported
        if not supported:
            warnings.warn(
                f"{type(tokenizer).__name__} ({tokenizer.name_or_path or 'unnamed'}): the chat template has no "
                "system role; system text is folded into the first user turn.",
                stacklevel=3,
            )
    return _SYSTEM_SUPPORT[template]


def _fold_system(conversation: Conversation) -> Conversation:
    system, rest = conversation[0]["content"], [dict(m) for m in conversation[1:]]
    first_user = next(i for i, m in enumerate(rest) if m["role"] == "user")
    rest[first_user]["content"] = f"{system}\n\n{rest[first_user]['content']}"
    return rest


def _render_text(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, generation_prompt: bool
) -> str:
    return tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=generation_prompt
    )


def _response_chars(tokenizer: PreTrainedTokenizerBase, conversation: Conversation, full: str, index: int):
    """Character span of the final assistant message inside the rendered text."""
    content = conversation[-1]["content"]
    prompt = _render_text(tokenizer, conversation[:-1], generation_prompt=True)
    for needle in (content, content.strip()):
        # The prompt rendering is normally a prefix of the full one; search after it so that a
        # response repeating the question is not found inside the question.
        start = full.find(needle, len(prompt)) if full.startswith(prompt) else full.rfind(needle)
        if start >= 0 and needle:
            return start, start + len(needle)
    raise ValueError(
        f"conversation {index}: the chat template changes the final assistant message beyond trimming, so "
        "its tokens cannot be located"
    )


def render_chats(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Conversation]
) -> list[RenderedChat]:
    """Tokenise conversations with the chat template.

    A conversation ending with an assistant message is rendered whole and its response span is
    marked; one ending with a user message gets the generation prompt and an empty response.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer (offsets are needed)")
    texts, spans = [], []
    for index, conversation in enumerate(conversations):
        conversation = validate_conversation(conversation, index)
        if conversation[0]["role"] == "system" and not _supports_system(tokenizer):
            conversation = _fold_system(conversation)
        has_response = conversation[-1]["role"] == "assistant"
        text = _render_text(tokenizer, conversation, generation_prompt=not has_response)
        texts.append(text)
        spans.append(_response_chars(tokenizer, conversation, text, index) if has_response else None)

    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    rendered = []
    for index, (ids, offsets, span) in enumerate(zip(encoded["input_ids"], encoded["offset_mapping"], spans)):
        if span is None:
            rendered.append(RenderedChat(list(ids), len(ids) - 1, len(ids), len(ids)))
            continue
        lo, hi = span
        inside = [t for t, (s, e) in enumerate(offsets) if e > s and s < hi and e > lo]
        if not inside:
            raise ValueError(f"conversation {index}: the assistant message renders to no tokens")
        start, end = inside[0], inside[-1] + 1
        if start == 0:
            raise ValueError(
                f"conversation {index}: the response starts at the first token, so there is no prompt"
            )
        rendered.append(RenderedChat(list(ids), start - 1, start, end))
    return rendered


def render_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[RenderedChat]:
    """Plain texts, no chat template: the text after its first token counts as the "response" (so
    `response_mean` pools over it; the first position is an attention sink whose huge activations
    would swamp the mean) and its last token as the prompt's last."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for index, ids in enumerate(encoded):
        if len(ids) < 2:
            raise ValueError(f"text {index} has fewer than 2 tokens: {texts[index]!r}")
    return [RenderedChat(list(ids), len(ids) - 1, 1, len(ids)) for ids in encoded]


def pad_chats(rendered: Sequence[RenderedChat], pad_token_id: int, side: PaddingSide = "right") -> ChatBatch:
    """Pad rendered chats into one batch; masks follow the padding side."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(r) for r in rendered)
    shape = (len(rendered), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.bool)
    prompt_last = torch.zeros(shape, dtype=torch.bool)
    response = torch.zeros(shape, dtype=torch.bool)
    for row, r in enumerate(rendered):
        shift = width - len(r) if side == "left" else 0
        input_ids[row, shift : shift + len(r)] = torch.tensor(r.input_ids)
        attention[row, shift : shift + len(r)] = True
        prompt_last[row, shift + r.prompt_last] = True
        response[row, shift + r.response_start : shift + r.response_end] = True
    return ChatBatch(input_ids, attention.long(), prompt_last, response)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad token, else EOS (many chat models ship without a pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def render_batch(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Conversation], side: PaddingSide = "right"
) -> ChatBatch:
    """`render_chats` then `pad_chats`, padding with the tokenizer's pad (else EOS) token."""
    return pad_chats(render_chats(tokenizer, conversations), pad_token_id(tokenizer), side)
