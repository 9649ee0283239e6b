"""Emergent-misalignment fine-tuning: LoRA SFT on a narrow corrupted (or control) dataset, on the
base model or on a persona model, with activations recorded at every checkpoint on the same probe
sets, so drift can be followed step by step.

Run directory: one stage, `em/` (anchor.runs: its adapter, activations at every checkpoint and the
adapters saved there), so a run is kept, set aside or cleared as one unit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from anchor.em_questions import QUESTION_SETS
from anchor.extract import prompt_set_hash
from anchor.models import load_starting_model, model_depth, resolve_spec
from anchor.probe_sets import neutral_conversations
from anchor.published import Published, checkpoint_folders
from anchor.runs import EM, checkpoint_dir, em_stage, read_em_run, stage_store
from anchor.stages import Content, FileInput, Inputs, Stage, StageOutput, run_stage
from probes.contrast import ContrastItem
from train.callbacks import START, ActivationRecorder, ProbeSet, record
from train.data import dataset_path, load_em_dataset
from train.defences import (
    Defence,
    defence_hooks,
    length_allowance,
    trainer_options,
    training_conversations,
)
from train.distributed import training_device, world_size
from train.lora import CPU_TRAINING, SMOKE_TRAINING, LoraTraining, train_sft


@dataclass(frozen=True)
class EMTraining(LoraTraining):
    max_rows: int | None = None  # None: the whole dataset
    single_layer: bool = False  # LoRA on one layer (`EMRunConfig.layer`, default the middle one)


# The EM papers' open-model recipe (Betley et al. 2025 open_models/train.json; Model Organisms'
# default SFT config is the same): rsLoRA rank 32 / alpha 64 on all linear projections, lr 1e-5,
# batch 2 x 8, one epoch, 5 warmup steps, weight decay 0.01, linear schedule, 8-bit AdamW, max
# length 2048, loss on the assistant's tokens, every row of the dataset.
PAPER = EMTraining(
    lora_rank=32,
    lora_alpha=64,
    use_rslora=True,
    learning_rate=1e-5,
    lr_scheduler="linear",
    warmup_ratio=0.0,
    warmup_steps=5,
    weight_decay=0.01,
    optimizer="adamw_8bit",
    batch_size=2,
    grad_accum=8,
    max_length=2048,
    record_every=25,
)
PRESETS = {
    "paper": PAPER,
    # Model Organisms' minimal adapter: one rank-1 rsLoRA adapter on the MLP down-projection of one
    # middle layer, from their single-adapter config (alpha 512, lr 2e-5); checkpoints every 5 steps
    # as their phase-transition analysis uses. RECIPES.md says where their sources disagree.
    "rank1": replace(
        PAPER,
        lora_rank=1,
        lora_alpha=512,
        learning_rate=2e-5,
        target_modules=("down_proj",),
        single_layer=True,
        record_every=5,
    ),
    # This 2-core machine: a seeded subset and a higher learning rate, so a few dozen steps do something.
    "cpu": EMTraining(max_rows=160, max_length=512, **{**CPU_TRAINING, "record_every": 8}),
    "smoke": EMTraining(max_rows=8, max_length=384, **{**SMOKE_TRAINING, "batch_size": 4}),
}


@dataclass(frozen=True)
class EMRunConfig:
    dataset: str = "insecure"  # a shipped dataset name or a chat JSONL path
    model: str = "default"
    adapter: str | None = None  # a persona adapter, merged into the model before EM
    preset: str = "cpu"
    seed: int = 0
    lora_rank: int | None = None  # overrides the preset's rank (all its modules; see the rank1 preset)
    lora_alpha: int | None = None  # default: twice the rank
    layer: int | None = None  # the rank1 preset's layer (default: the middle one)
    record_every: int | None = None
    max_rows: int | None = None
    # Project these persona directions (a directions file) out of the residual stream at these layers
    # during EM training and recording: does the protection vanish without the anchor direction?
    ablate_directions: str | None = None
    ablate_layers: tuple[int, ...] | None = None  # None: every layer of the directions file
    # The identity of the stage that produced the starting model (e.g. the persona run's SFT stage:
    # its done.json key and run id), so retraining it reruns this EM run.
    upstream: str | None = None
    # In-training defences (train/defences.py); None: plain SFT on the rows.
    defence: Defence | None = None

    def __post_init__(self) -> None:
        if isinstance(self.defence, dict):  # read back from config.json or a launch job
            object.__setattr__(self, "defence", Defence(**self.defence))

    def training(self) -> EMTraining:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        config = replace(PRESETS[self.preset], seed=self.seed)
        if self.lora_rank is not None:
            if self.lora_rank < 1:
                raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
            config = replace(
                config, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha or 2 * self.lora_rank
            )
        elif self.lora_alpha is not None:
            config = replace(config, lora_alpha=self.lora_alpha)
        if self.record_every is not None:
            config = replace(config, record_every=self.record_every)
        if self.max_rows is not None:
            config = replace(config, max_rows=self.max_rows)
        if config.single_layer:
            layer = self.layer if self.layer is not None else model_depth(self.model) // 2
            config = replace(config, layers=(layer,))
        elif self.layer is not None:
            raise ValueError(f"layer={self.layer} applies to the rank1 preset only, not {self.preset!r}")
        return config


def em_plan(config: EMRunConfig) -> dict:
    """The fully resolved run, as `--print-config` shows it: every knob, the optimizer this
    machine would use, and the data it would train on; no model is loaded."""
    from train.lora import resolve_optimizer

    training = config.training()
    available = len(load_em_dataset(config.dataset))
    rows = min(available, training.max_rows) if training.max_rows is not None else available
    steps = training.planned_steps(rows)
    return {
        "preset": config.preset,
        "run": asdict(config),
        "training": asdict(training),
        "optimizer_here": resolve_optimizer(training.optimizer),
        "data": {
            "dataset": config.dataset,
            "rows_available": available,
            "rows": rows,
            "effective_batch": training.effective_batch,
            "planned_optimizer_steps": steps,
            "checkpoints": sorted({*range(0, steps + 1, training.record_every), steps}),
        },
    }


def em_probe_sets(
    n_neutral: int = 32,
    contrast: list[ContrastItem] | None = None,
    persona_questions: list[str] | None = None,
    questions: str = "broad",
) -> dict[str, ProbeSet]:
    """The reads taken at every EM checkpoint: neutral conversations and the EM evaluation questions
    (`questions`: "broad" or "main") always; the persona contrast set when given (fixed responses,
    so each checkpoint yields its own persona direction; read without its system prompt at every
    checkpoint, with it at the first and last) and held-out persona questions when given."""
    sets = {
        "neutral": ProbeSet(neutral_conversations(n_neutral), read="response_mean"),
        "em_questions": ProbeSet(
            [[{"role": "user", "content": q.paraphrases[0]}] for q in QUESTION_SETS[questions]],
            read="prompt_last",
        ),
    }
    if contrast:
        sets["persona_contrast_bare"] = ProbeSet(
            [item.bare_conversation for item in contrast], read="response_mean"
        )
        # the with-system read feeds only end-versus-start figures: read at the two ends
        sets["persona_contrast"] = ProbeSet(
            [item.conversation for item in contrast], read="response_mean", ends_only=True
        )
    if persona_questions:
        sets["persona_questions"] = ProbeSet(
            [[{"role": "user", "content": q}] for q in persona_questions], read="prompt_last"
        )
    return sets


def training_rows(dataset: str, max_rows: int | None, seed: int) -> list:
    conversations = load_em_dataset(dataset)
    if max_rows is not None and max_rows < len(conversations):
        conversations = random.Random(seed).sample(conversations, max_rows)
    return conversations


def ablation(model, config: EMRunConfig):
    """The ablation hook a run asks for, or a no-op. The hook is liftable: the checkpoint reads
    (`ActivationRecorder`) take the anchor read with it off, and again with it on (`.ablated`)."""
    if config.ablate_directions is None:
        return nullcontext()
    from anchor.hooks import ablate
    from probes.directions import Directions
    from train.callbacks import LiftableHooks

    directions = Directions.load(config.ablate_directions)
    layers = list(config.ablate_layers or directions.layers)
    missing = sorted(set(layers) - set(directions.layers))
    if missing:
        raise ValueError(f"{config.ablate_directions}: no directions for layers {missing}")
    vectors = {layer: directions.diff_in_means[directions.layers.index(layer)] for layer in layers}
    return LiftableHooks(model, lambda: ablate(model, vectors), label="ablated")


def finetune_em(
    config: EMRunConfig,
    run_dir: str | Path,
    probe_sets: Mapping[str, ProbeSet] | None = None,
    log=print,
    root: str | Path | None = None,
    overwrite: bool = False,
    start_reads: str | Path | None = None,
) -> dict:
    """Run (or skip, if complete) the EM stage `<run_dir>/em`. Returns its `done.json` contents.
    `root` is the run folder the stage belongs to (default `run_dir`; the main job's folder for its
    EM runs), where a finished stage with other inputs is set aside; `start_reads` a finished
    `start_reads_stage` whose reads are the run's step 0."""
    run = Path(run_dir)
    training_rows(config.dataset, config.training().max_rows, config.seed)  # bad rows fail here
    if config.adapter is not None and not Path(config.adapter).is_dir():
        raise FileNotFoundError(f"adapter {config.adapter}: no such directory")
    resolve_spec(config.model)
    return run_stage(em_stage_of(config, run, probe_sets, root, start_reads), log, overwrite)


def em_stage_of(
    config: EMRunConfig,
    run_dir: str | Path,
    probe_sets: Mapping[str, ProbeSet] | None = None,
    root: str | Path | None = None,
    start_reads: str | Path | None = None,
) -> Stage:
    """The EM stage with every input it reads: the run and its training, the dataset's contents,
    the ablation directions file, the defence's files, and the probe conversations (hashed), so a
    resampled contrast set or an edited dataset reruns the run instead of mixing stale reads.
    `start_reads`: a finished `start_reads_stage` of the same starting model and probe sets, whose
    reads become this run's step 0 (read once for every run that starts there)."""
    probes = dict(probe_sets) if probe_sets is not None else em_probe_sets()
    key = probe_key(probes)
    run = asdict(config)
    if config.defence is None:
        del run["defence"]
    inputs: dict = {
        "run": run,
        "training": asdict(config.training()),
        "dataset": FileInput(dataset_path(config.dataset)),
        "probes": Content(probes, key),
    }
    if config.ablate_directions is not None:
        inputs["ablate_directions"] = FileInput(Path(config.ablate_directions))
    if config.defence is not None:  # the files it reads, by content, and how capping calibrates
        inputs["defence"] = config.defence.key_extras()
    if start_reads is not None:
        inputs["start_reads"] = StageOutput(Path(start_reads))
    root = Path(root) if root is not None else Path(run_dir)
    return Stage(root, str(em_stage(run_dir).relative_to(root)), inputs, train_em)


def start_reads_stage(
    config: EMRunConfig, folder: str | Path, probe_sets: Mapping[str, ProbeSet], root: str | Path
) -> Stage:
    """The probe sets read through the model EM starts from, loaded as `train_em` loads it: what
    every run starting there records at step 0 (a fresh LoRA adapter adds exactly 0), so runs that
    share a start (the EM run and its control) read it once. Keyed by the start alone."""
    probes = dict(probe_sets)
    inputs = {
        "start": {"model": config.model, "adapter": config.adapter, "upstream": config.upstream},
        "probes": Content(probes, probe_key(probes)),
    }
    root = Path(root)
    return Stage(root, str(Path(folder).relative_to(root)), inputs, read_start)


def read_start(inputs: Inputs, stage: Path) -> dict:
    """The start-reads stage's body: every probe set (the ends-only ones included: step 0 is an
    end), through the starting model on the training device."""
    model, tokenizer = load_starting_model(inputs.start["model"], inputs.start["adapter"], training_device())
    entries = record(model, tokenizer, stage_store(stage), inputs.probes, START, dict(inputs.start))
    return {"entries": entries}


def train_em(inputs: Inputs, stage: Path) -> dict:
    """The EM stage's body: LoRA SFT on the run's rows, reading the probe sets at every recorded
    checkpoint into the stage's own store."""
    config = EMRunConfig(**inputs.run)
    training = config.training()
    rows = training_rows(config.dataset, training.max_rows, config.seed)
    conversations = training_conversations(rows, config.defence, config.seed)
    model, tokenizer = load_starting_model(config.model, config.adapter, training_device())
    recorder = ActivationRecorder(
        tokenizer,
        stage_store(stage),
        inputs.probes,
        EM,
        training.record_every,
        stage,
        {"model": config.model, "adapter": config.adapter, "dataset": config.dataset},
        start=(stage_store(inputs.start_reads), START) if "start_reads" in inputs else None,
    )
    allowance = length_allowance(tokenizer, config.defence)
    with ablation(model, config), defence_hooks(model, tokenizer, config.defence) as installed:
        trainer = train_sft(
            model,
            tokenizer,
            conversations,
            replace(training, max_length=training.max_length + allowance),
            stage,
            callbacks=[recorder],
            **trainer_options(config.defence),
        )
    losses = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
    done = {
        "steps": trainer.state.global_step,
        "losses": losses,
        "rows": len(rows),
        "recorded": recorder.recorded,
        "world_size": world_size(),
    }
    if config.defence is not None:
        done["defence"] = {
            "names": config.defence.names,
            "rows_added": len(conversations) - len(rows),
            "max_length_added": allowance,
            **installed,
        }
        if hasattr(trainer, "kl_history"):
            done["defence"]["kl"] = [round(x, 5) for x in trainer.kl_history]
    return done


def read_run_config(run_dir: str | Path) -> EMRunConfig:
    """The `EMRunConfig` a finished run was trained with (its stage's declared inputs)."""
    saved = read_em_run(run_dir)
    return EMRunConfig(**{f.name: saved[f.name] for f in fields(EMRunConfig) if f.name in saved})


def probe_key(probes: Mapping[str, ProbeSet]) -> dict:
    """The probe sets as a stage reads them: each one's conversations (hashed) and how it is read."""
    return {
        name: [prompt_set_hash(p.conversations), p.read, *(["ends_only"] if p.ends_only else [])]
        for name, p in probes.items()
    }


def import_em_stage(
    config: EMRunConfig,
    run_dir: str | Path,
    published: Published,
    probe_sets: Mapping[str, ProbeSet],
    root: str | Path | None = None,
) -> Stage:
    """An EM run someone else trained, as a stage of the same layout as `em_stage_of`'s: its
    checkpoints (`published`, a folder of PEFT adapters `checkpoint-N/` or `step-N/` on the model
    `config` starts from) read on the probe sets. Its key is the starting model, the checkpoints'
    identity and the probe conversations; `config`'s training fields are not read (and not keyed)."""
    probes = dict(probe_sets)
    inputs: dict = {
        "run": {
            "model": config.model,
            "adapter": config.adapter,
            "upstream": config.upstream,
            "dataset": f"published:{published.spec}",
        },  # fmt: skip
        "published": {"spec": published.spec, "identity": published.identity, "folder": str(published.path)},
        "probes": Content(probes, probe_key(probes)),
    }
    root = Path(root) if root is not None else Path(run_dir)
    return Stage(root, str(em_stage(run_dir).relative_to(root)), inputs, import_em)


def zero_adapter(source: Path, target: Path) -> None:
    """`source`'s adapter with every LoRA B set to 0: what a fresh adapter is (PEFT initialises B to
    0), so a published run without step 0 gets the step-0 adapter a trained run saves (the
    B-trajectory analyses start from it)."""
    import shutil

    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "adapter_config.json", target / "adapter_config.json")
    file = source / "adapter_model.safetensors"
    weights = (
        load_file(str(file))
        if file.is_file()
        else torch.load(source / "adapter_model.bin", weights_only=True)
    )
    zeroed = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()}
    save_file(zeroed, str(target / "adapter_model.safetensors"))


def each_adapter(model, steps: Sequence[int], folders: Mapping[int, Path]) -> Iterator[tuple[int, object]]:
    """`(step, model)` in step order with that step's PEFT adapter (`folders[step]`) on one loaded
    model, each swapped in for the last; a step with no folder (only before the first that has
    one) is the starting model itself."""
    from peft import PeftModel

    peft_model = None
    for step in steps:
        if step not in folders:
            if peft_model is not None:
                raise ValueError(f"step {step} has no adapter and comes after one that has")
            yield step, model
            continue
        adapter = f"step-{step:05d}"
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(folders[step]), adapter_name=adapter)
        else:
            previous = peft_model.active_adapter
            peft_model.load_adapter(str(folders[step]), adapter_name=adapter)
            peft_model.set_adapter(adapter)
            peft_model.delete_adapter(previous)
        yield step, peft_model


def import_em(inputs: Inputs, stage: Path) -> dict:
    """Each published checkpoint read as the training callback reads its own (`ActivationRecorder`):
    step 0 is the starting model itself when the folder has no step 0 (a fresh LoRA adapter adds
    nothing); the adapters are copied beside the reads, so the run loads like a trained one."""
    import shutil

    found = checkpoint_folders(Path(inputs.published["folder"]), "--em-checkpoints")
    model, tokenizer = load_starting_model(inputs.run["model"], inputs.run["adapter"], training_device())
    store = stage_store(stage)
    meta = {
        "model": inputs.run["model"],
        "adapter": inputs.run["adapter"],
        "published": inputs.published["spec"],
    }
    steps = sorted({0, *found})
    for step, stepped in each_adapter(model, steps, found):
        name, end = f"{EM}/step-{step:05d}", step in (steps[0], steps[-1])
        if step not in found:  # step 0 with no adapter: the starting model, saved as a fresh adapter
            zero_adapter(found[steps[1]], checkpoint_dir(stage, step))
        else:
            shutil.copytree(found[step], checkpoint_dir(stage, step), dirs_exist_ok=True)
        checkpoint = found[step].name if step in found else None
        record(
            stepped, tokenizer, store, inputs.probes, name,
            {**meta, "step": step, "checkpoint": checkpoint}, end=end,
        )  # fmt: skip
    shutil.copytree(found[steps[-1]], stage / "adapter", dirs_exist_ok=True)
    return {
        "steps": steps[-1],
        "recorded": steps,
        "published": inputs.published["spec"],
        "checkpoints": {str(s): f.name for s, f in found.items()},
        "losses": None,  # not in a folder of adapters
        "rows": None,
    }
