"""Character training (DPO distillation, introspection SFT) and EM fine-tuning, resumable.

from train import PersonaRunConfig, train_persona, EMRunConfig, finetune_em
"""

from anchor.lazy import lazy_exports

_EXPORTS = {
    "PersonaRunConfig": "train.persona",
    "train_persona": "train.persona",
    "EMRunConfig": "train.em",
    "finetune_em": "train.em",
    "load_em_model": "anchor.runs",
    "load_em_dataset": "train.data",
    "load_chat_jsonl": "train.data",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
