"""identity-anchor core: models, chat rendering, generation, activation reads and storage (no training)."""

from anchor.chat import ChatBatch, Conversation, RenderedChat, pad_chats, render_batch, render_chats
from anchor.constitution import (
    ContrastPair,
    Persona,
    Trait,
    load_constitution,
    load_persona,
    save_constitution,
)
from anchor.contrast_pairs import derive_contrast, resolve_contrast
from anchor.extract import Activations, extract
from anchor.generate import Generator, HFGenerator, SamplingConfig, VLLMGenerator
from anchor.hooks import ablate, find_blocks, hook_name, steer
from anchor.inputs import InputError
from anchor.models import load_model
from anchor.store import ActivationStore

__all__ = [
    "Activations",
    "ActivationStore",
    "ablate",
    "extract",
    "find_blocks",
    "hook_name",
    "steer",
    "ChatBatch",
    "Conversation",
    "Generator",
    "HFGenerator",
    "RenderedChat",
    "SamplingConfig",
    "VLLMGenerator",
    "load_model",
    "load_constitution",
    "load_persona",
    "save_constitution",
    "ContrastPair",
    "InputError",
    "Persona",
    "Trait",
    "derive_contrast",
    "resolve_contrast",
    "pad_chats",
    "render_batch",
    "render_chats",
]
