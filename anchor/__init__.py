"""identity-anchor core: models, chat rendering, generation (no training code here)."""

from anchor.chat import ChatBatch, Conversation, RenderedChat, pad_chats, render_batch, render_chats
from anchor.generate import Generator, HFGenerator, SamplingConfig, VLLMGenerator
from anchor.models import load_model

__all__ = [
    "ChatBatch",
    "Conversation",
    "Generator",
    "HFGenerator",
    "RenderedChat",
    "SamplingConfig",
    "VLLMGenerator",
    "load_model",
    "pad_chats",
    "render_batch",
    "render_chats",
]
