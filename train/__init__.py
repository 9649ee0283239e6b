"""Character training (DPO distillation, introspection SFT) and EM fine-tuning, resumable.

from train import PersonaRunConfig, train_persona, EMRunConfig, finetune_em
"""

import importlib

_EXPORTS = {
    "PersonaRunConfig": "train.persona",
    "train_persona": "train.persona",
    "EMRunConfig": "train.em",
    "finetune_em": "train.em",
    "load_em_model": "train.em",
    "load_em_dataset": "train.data",
    "load_chat_jsonl": "train.data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import an entry point on first use: `train.em` imports `analysis`, which imports
    back into this package, so eager imports here would make the import order matter."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
