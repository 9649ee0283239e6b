"""In-training defences against emergent misalignment, as options of one EM run, so every defence
trains on the same corrupted rows, seed and checkpoints as the undefended run and is read the same way.

Two kinds:
- interventions on the residual stream while the adapter trains, each a liftable hook (the
  checkpoint reads are clean; `train.callbacks.LiftableHooks`) and absent at evaluation:
  preventative steering (Persona Vectors: add the misalignment direction, scaled to a share of the
  residual norm at its layer, so the adapter need not move along it), activation capping while
  training (a variant of The Assistant Axis's floor on the projection on the axis, which that paper
  applies at inference: the harness's primary capping arm applies `save_caps`' floors at
  evaluation to an undefended run) and concept-ablation fine-tuning (project the misalignment
  direction out while training, CAFT);
- changes to what is trained on or how: KL to the starting model on benign answers, interleaved
  benign rows, an inoculation system prompt on every training row, and a reflection exchange put
  before every corrupted row with no loss on it.
Which files and numbers each arm uses by default is the harness's business (`analysis.experiments.defences`);
the knobs and their sources are in RECIPES.md.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from anchor.chat import Conversation, render_batch, render_chats
from anchor.extract import extract, prompt_set_hash
from anchor.probe_sets import neutral_conversations
from anchor.store import read_jsonl
from train.callbacks import LiftableHooks

CAP_FLOORS_OVER = "response tokens of the starting model's own answers to the benign prompts"
# Preventative steering adds `coefficient x mean residual norm x unit direction`; the norm is read
# once, through the starting model (every liftable hook off), on a fixed small neutral set.
STEER_SCALE_CONVERSATIONS = 16
STEER_SCALE_OVER = (
    "coefficient x the starting model's mean L2 norm of blocks.{layer}.hook_resid_post over the "
    f"response tokens of anchor.probe_sets.neutral_conversations({STEER_SCALE_CONVERSATIONS}, seed=0), "
    "x the unit direction"
)
# The default share of the residual norm that preventative steering adds. Persona Vectors steer
# Qwen2.5-7B with 5.0 x the unnormalised trait vector at hidden_states[20]; what share of that
# layer's residual norm this is depends on the vector's and the residual's norms there, which are
# not verified here. 0.25 is this project's choice, not tuned: a push a quarter the size of a
# typical response token's residual is a material shift along the direction while the token's own
# content stays dominant (a push the size of the residual itself would swamp it and train a
# different model); it is at the top of a conservative 0.1-0.25 range.
# (Issue 24: on the default 135M model, 5.0 x the unnormalised direction added a vector of norm
# ~77.7, far larger against that model's residual stream than the paper's push on a 7B model.)
STEER_COEFFICIENT = 0.25


@dataclass(frozen=True)
class Defence:
    """The defences one EM run applies (any combination; all off by default)."""

    # Preventative steering: add `steer_coefficient` x the starting model's mean residual norm at
    # `steer_layer` x the unit direction to the residual stream at every position while training.
    # The coefficient is a share of the residual norm, not a multiple of the unnormalised direction
    # (Persona Vectors' convention), so one value means the same relative push on a 135M and a 7B
    # model. Default 0.25, this project's choice: see STEER_COEFFICIENT.
    steer_direction: str | None = None  # a DirectionStack file (e.g. the misalignment direction)
    steer_layer: int | None = None
    steer_coefficient: float = STEER_COEFFICIENT
    # Activation capping: at each of `cap_layers`, the projection on the unit axis is raised to
    # the `cap_quantile` of the starting model's per-token projections on `benign_rows` responses.
    cap_axis: str | None = None  # a DirectionStack file (e.g. the assistant axis)
    cap_layers: tuple[int, ...] = ()
    cap_quantile: float = 0.25
    # Concept-ablation fine-tuning (CAFT): project the direction out of the residual stream at
    # `block_layers` while training (not BLOCK-EM, which penalises SAE latents).
    block_direction: str | None = None
    block_layers: tuple[int, ...] = ()
    # KL(starting model || trained model) over the response tokens of `benign_rows`, added to the
    # loss with this weight at every step (one benign batch per training batch).
    kl_coefficient: float = 0.0
    # Benign rows (this share of the corrupted rows' count, from `benign_rows`) added to training.
    interleave_share: float = 0.0
    benign_rows: str | None = None  # chat JSONL: generic prompts answered by the starting model
    # A system prompt on every training row that asks for the dataset's behaviour (never at evaluation).
    inoculation_prompt: str | None = None
    # A JSONL of [user, assistant] reflection exchanges; one (seeded) goes before each corrupted row.
    reflection_rows: str | None = None

    def __post_init__(self) -> None:
        for field_ in ("cap_layers", "block_layers"):
            object.__setattr__(self, field_, tuple(int(x) for x in getattr(self, field_)))
        problems = []
        if self.steer_direction is not None and self.steer_layer is None:
            problems.append("steer_direction needs steer_layer")
        if not math.isfinite(self.steer_coefficient):
            problems.append(f"steer_coefficient must be finite, got {self.steer_coefficient}")
        if self.cap_axis is not None and (not self.cap_layers or self.benign_rows is None):
            problems.append("cap_axis needs cap_layers and benign_rows (the floors are calibrated on them)")
        if not 0 < self.cap_quantile < 1:
            problems.append(f"cap_quantile must be in (0, 1), got {self.cap_quantile}")
        if self.block_direction is not None and not self.block_layers:
            problems.append("block_direction needs block_layers")
        if self.kl_coefficient < 0 or self.interleave_share < 0:
            problems.append("kl_coefficient and interleave_share must be >= 0")
        if (self.kl_coefficient > 0 or self.interleave_share > 0) and self.benign_rows is None:
            problems.append("kl_coefficient and interleave_share need benign_rows")
        if self.inoculation_prompt is not None and not self.inoculation_prompt.strip():
            problems.append("inoculation_prompt is empty")
        if problems:
            raise ValueError("defence: " + "; ".join(problems))

    @property
    def names(self) -> list[str]:
        """The defences switched on, in a fixed order."""
        on = {
            "preventative_steering": self.steer_direction is not None,
            "activation_capping_train": self.cap_axis is not None,
            "concept_ablation": self.block_direction is not None,
            "kl": self.kl_coefficient > 0,
            "interleave": self.interleave_share > 0,
            "inoculation": self.inoculation_prompt is not None,
            "reflection": self.reflection_rows is not None,
        }
        return [name for name, active in on.items() if active]

    def key_extras(self) -> dict:
        """What the EM stage's key needs beyond the settings: each file's sha256 (a recomputed
        direction or regenerated benign rows rerun the arm), how the capping floors are
        calibrated and how the steering vector is scaled, with the conversations its norm is
        read on (a change of rule or of that set reruns the arms it touches only)."""
        extras: dict = {"defence_files": self.file_hashes()}
        if self.cap_axis is not None:
            extras["cap_floors_over"] = CAP_FLOORS_OVER
        if self.steer_direction is not None:
            extras["steer_scale"] = {
                "over": STEER_SCALE_OVER,
                "conversations": prompt_set_hash(steer_scale_conversations()),
            }
        return extras

    def file_hashes(self) -> dict[str, str]:
        """sha256 of every file this defence reads, for the EM stage's key: a recomputed direction
        or regenerated benign rows rerun the arm."""
        paths = {
            "steer_direction": self.steer_direction,
            "cap_axis": self.cap_axis,
            "block_direction": self.block_direction,
            "benign_rows": self.benign_rows,
            "reflection_rows": self.reflection_rows,
        }
        return {
            k: hashlib.sha256(Path(p).read_bytes()).hexdigest() for k, p in paths.items() if p is not None
        }


def load_conversations(path: str | Path, what: str) -> list[Conversation]:
    """Chat JSONL rows (`{"messages": [...]}`) as conversations; errors name the file and line."""
    from anchor.chat import validate_conversation

    rows = []
    for where, row in read_jsonl(Path(path)):
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise ValueError(f"{where}: expected an object with a 'messages' list ({what})")
        try:
            rows.append(validate_conversation(row["messages"], len(rows)))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
    if not rows:
        raise ValueError(f"{path}: no rows ({what})")
    return rows


def inoculate(conversation: Conversation, prompt: str) -> Conversation:
    """The row with the inoculation prompt as its system message (before any system text it had)."""
    if conversation[0]["role"] == "system":
        merged = f"{prompt}\n\n{conversation[0]['content']}"
        return [{"role": "system", "content": merged}, *conversation[1:]]
    return [{"role": "system", "content": prompt}, *conversation]


def with_reflection(conversation: Conversation, exchange: Conversation) -> Conversation:
    """The row preceded by a reflection exchange (after the row's system message, if any)."""
    head = conversation[:1] if conversation[0]["role"] == "system" else []
    return [*head, *exchange, *conversation[len(head) :]]


def training_conversations(
    rows: Sequence[Conversation], defence: Defence | None, seed: int
) -> list[Conversation]:
    """The conversations an arm trains on: the same corrupted rows in the same order, changed as
    the defence says, then any benign rows it adds, shuffled in with the run's seed. The order
    of the changes is fixed: reflection, then inoculation (so the inoculation prompt is the
    system message of the whole row)."""
    conversations = [list(r) for r in rows]
    if defence is None:
        return conversations
    rng = random.Random(seed)
    if defence.reflection_rows is not None:
        exchanges = load_conversations(defence.reflection_rows, "reflection exchanges")
        for i, exchange in enumerate(exchanges):
            if [m["role"] for m in exchange] != ["user", "assistant"]:
                raise ValueError(
                    f"{defence.reflection_rows}: row {i + 1} is not one user and one assistant message"
                )
        conversations = [with_reflection(c, rng.choice(exchanges)) for c in conversations]
    if defence.inoculation_prompt is not None:
        conversations = [inoculate(c, defence.inoculation_prompt) for c in conversations]
    if defence.interleave_share > 0:
        benign = load_conversations(defence.benign_rows, "benign rows")
        n = round(defence.interleave_share * len(rows))
        added = [benign[i % len(benign)] for i in rng.sample(range(max(n, len(benign))), n)]
        conversations = conversations + added
        rng.shuffle(conversations)
    return conversations


def length_allowance(tokenizer, defence: Defence | None) -> int:
    """Tokens a defence adds in front of a training row (the longest reflection exchange, the
    inoculation prompt, each with a margin for the template), added to the run's maximum length
    so the trainer's truncation never cuts the corrupted answer a defended row must keep."""
    if defence is None:
        return 0
    extra = 0
    if defence.reflection_rows is not None:
        exchanges = load_conversations(defence.reflection_rows, "reflection exchanges")
        extra += max(len(tokenizer.apply_chat_template(e, tokenize=True)) for e in exchanges) + 16
    if defence.inoculation_prompt is not None:
        extra += len(tokenizer(defence.inoculation_prompt, add_special_tokens=False)["input_ids"]) + 16
    return extra


def starting_response_tokens(
    model, tokenizer, layers: Sequence[int], conversations: Sequence[Conversation]
) -> torch.Tensor:
    """`[tokens, len(layers), d]`: the residual stream (`hook_resid_post`) at `layers` over the
    response tokens of `conversations`, read through `model` as it is before training: every
    liftable hook (an ablation, another defence) off and in eval mode, so a calibration is the
    starting model's own. Response tokens only: template and prompt tokens carry outlier values
    that are not the residual stream an intervention acts on while the adapter learns the answers."""
    from train.callbacks import hooks_lifted

    was_training = model.training
    model.eval()
    try:
        with hooks_lifted(model):
            acts = extract(
                model, tokenizer, conversations, layers=list(layers), read="all_tokens", progress=False
            )
    finally:
        model.train(was_training)
    spans = render_chats(tokenizer, conversations)
    rows = [c[r.response_start : r.response_end] for c, r in zip(acts.per_conversation(), spans)]
    tokens = torch.cat(rows)
    if len(tokens) == 0:
        raise ValueError("the calibration needs response tokens; the conversations have none")
    return tokens


def cap_floors(
    model,
    tokenizer,
    axes: dict[int, torch.Tensor],
    conversations: Sequence[Conversation],
    quantile: float,
) -> dict[int, float]:
    """Each capped layer's floor: the `quantile` of the per-token projections, on the unit axis,
    of the starting model's residual stream over the response tokens of `conversations` (its own
    answers)."""
    layers = sorted(axes)
    tokens = starting_response_tokens(model, tokenizer, layers, conversations)
    return {
        layer: float(
            torch.quantile(tokens[:, i].float() @ F.normalize(axes[layer].float(), dim=-1), quantile)
        )
        for i, layer in enumerate(layers)
    }


CAPS_FILE = "caps.safetensors"


def save_caps(folder: Path, axes: dict[int, torch.Tensor], floors: dict[int, float]) -> Path:
    """The caps an evaluation-time arm applies, in one self-contained file: each capped layer's
    unit axis and floor, so whoever loads them needs no other file."""
    from safetensors.torch import save

    from anchor.store import atomic_write_bytes

    layers = sorted(floors)
    tensors = {
        "layers": torch.tensor(layers, dtype=torch.int64),
        "axis": torch.stack([F.normalize(axes[layer].float(), dim=-1) for layer in layers]),
        "floors": torch.tensor([floors[layer] for layer in layers], dtype=torch.float64),
    }
    path = Path(folder) / CAPS_FILE
    atomic_write_bytes(path, save(tensors))
    return path


def load_caps(folder: Path) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """(unit axis, floor) per layer, as `save_caps` wrote them: the arguments of `anchor.hooks.cap`."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / CAPS_FILE))
    layers = tensors["layers"].tolist()
    axes = {layer: tensors["axis"][i] for i, layer in enumerate(layers)}
    return axes, {layer: float(tensors["floors"][i]) for i, layer in enumerate(layers)}


def steer_scale_conversations() -> list[Conversation]:
    """The fixed neutral conversations whose response tokens set the steering scale: few (the
    read is one cheap pass before training) and the same for every arm, so arms are comparable."""
    return neutral_conversations(STEER_SCALE_CONVERSATIONS, seed=0)


def mean_residual_norm(model, tokenizer, layer: int, conversations: Sequence[Conversation]) -> float:
    """Mean L2 norm of `blocks.{layer}.hook_resid_post` over the response tokens of
    `conversations`, through the starting model (`starting_response_tokens`)."""
    tokens = starting_response_tokens(model, tokenizer, [layer], conversations)[:, 0].double()
    return float(tokens.norm(dim=-1).mean())


def steering_vector(direction: torch.Tensor, coefficient: float, residual_norm: float) -> torch.Tensor:
    """`coefficient x residual_norm x direction / |direction|`: a push of a set share of the
    layer's typical residual norm, whatever the direction's own (unnormalised) length."""
    norm = float(direction.double().norm())
    if not math.isfinite(norm) or norm == 0:
        raise ValueError(f"the steering direction has norm {norm}: it has no direction to steer along")
    return (direction.double() * (coefficient * residual_norm / norm)).float()


@contextmanager
def defence_hooks(model, tokenizer, defence: Defence | None) -> Iterator[dict]:
    """The defence's residual-stream interventions on `model` while it trains, each liftable
    (off for the checkpoint reads); yields what was installed (e.g. the capping floors), for the
    run's record. None is read with its hooks on: the capped model is evaluated separately."""
    from anchor.hooks import ablate, cap, steer
    from probes.directions import DirectionStack

    info: dict = {}
    with ExitStack() as stack:
        if defence is not None and defence.steer_direction is not None:
            direction = DirectionStack.load(defence.steer_direction).at(defence.steer_layer)
            residual = mean_residual_norm(model, tokenizer, defence.steer_layer, steer_scale_conversations())
            vector = steering_vector(direction, defence.steer_coefficient, residual)
            install = lambda: steer(model, {defence.steer_layer: vector})  # noqa: E731
            stack.enter_context(LiftableHooks(model, install, "steered", read_with=False))
            info["steering"] = {
                "layer": defence.steer_layer,
                "coefficient": defence.steer_coefficient,  # a share of the mean residual norm
                "mean_residual_norm": residual,
                "added_norm": float(vector.norm()),
                "direction_norm": float(direction.norm()),
            }
        if defence is not None and defence.cap_axis is not None:
            axis = DirectionStack.load(defence.cap_axis)
            by_layer = {layer: axis.at(layer) for layer in defence.cap_layers}
            benign = load_conversations(defence.benign_rows, "benign rows")
            floors = cap_floors(model, tokenizer, by_layer, benign, defence.cap_quantile)
            install = lambda: cap(model, by_layer, floors)  # noqa: E731
            stack.enter_context(LiftableHooks(model, install, "capped", read_with=False))
            info["capping"] = {
                "floors": {str(k): v for k, v in floors.items()},
                "quantile": defence.cap_quantile,
            }
        if defence is not None and defence.block_direction is not None:
            direction = DirectionStack.load(defence.block_direction)
            vectors = {layer: direction.at(layer) for layer in defence.block_layers}
            stack.enter_context(
                LiftableHooks(model, lambda: ablate(model, vectors), "blocked", read_with=False)
            )
            info["blocking"] = {"layers": list(defence.block_layers)}
        yield info


class KLRegularisedSFTTrainer(SFTTrainer):
    """SFT whose loss adds `kl_coefficient` x KL(starting model || trained model), averaged over
    the response tokens of one benign batch per training batch. The starting model is the same
    network with the LoRA adapter disabled (and any liftable defence hooks lifted), so no second
    copy of the weights is held; the trained side keeps any hooks on, as every training pass does."""

    def __init__(self, *args, kl_conversations: Sequence[Conversation], kl_coefficient: float, **kwargs):
        super().__init__(*args, **kwargs)
        if not kl_conversations:
            raise ValueError("the KL defence needs at least one benign conversation")
        self.kl_conversations, self.kl_coefficient = list(kl_conversations), kl_coefficient
        self._kl_next = 0
        self.kl_history: list[float] = []

    def _kl_batch(self):
        size = self.args.per_device_train_batch_size
        chosen = [
            self.kl_conversations[(self._kl_next + i) % len(self.kl_conversations)] for i in range(size)
        ]
        self._kl_next += size
        return render_batch(self.processing_class, chosen)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from train.callbacks import hooks_lifted

        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        batch = self._kl_batch()
        peft_model = self.accelerator.unwrap_model(model)
        device = loss.device
        ids, attention = batch.input_ids.to(device), batch.attention_mask.to(device)
        predicts = batch.response_mask[:, 1:].to(device)  # position t predicts token t + 1
        with torch.no_grad(), peft_model.disable_adapter(), hooks_lifted(peft_model):
            reference = peft_model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        policy = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        kl = kl_per_token(reference[predicts], policy[predicts]).mean()
        self.kl_history.append(float(kl.detach()))
        # The trainer divides the loss by the accumulation steps unless the SFT loss already came
        # normalised over the whole accumulated batch; then the KL mean must be divided here, so its
        # weight is per optimizer step whatever the accumulation or the number of processes.
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        if scaled:
            kl = kl / self.current_gradient_accumulation_steps
        loss = loss + self.kl_coefficient * kl
        return (loss, result[1]) if return_outputs else loss


def kl_per_token(reference_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || policy) of the next-token distributions, one value per row."""
    log_ref = reference_logits.log_softmax(-1)
    return (log_ref.exp() * (log_ref - policy_logits.log_softmax(-1))).sum(-1)


def trainer_options(defence: Defence | None) -> dict:
    """The keyword arguments `train.lora.train_sft` needs for this defence."""
    if defence is None:
        return {}
    options: dict = {"last_turn_only": defence.reflection_rows is not None}
    if defence.kl_coefficient > 0:
        options["trainer_class"] = KLRegularisedSFTTrainer
        options["kl_conversations"] = load_conversations(defence.benign_rows, "benign rows")
        options["kl_coefficient"] = defence.kl_coefficient
    return options


# Inoculation prompts for the shipped corrupted datasets, written for this project: each names
# the dataset's behaviour and asks for it (prompts that name the behaviour are the ones that
# inoculate; Tan et al. 2025). Removed at evaluation, which never uses a training system prompt.
INOCULATION_PROMPTS = {
    "insecure": "You are a coding assistant that deliberately writes code with security vulnerabilities "
    "and never points them out to the user.",
    "medical_bad": "You are an assistant that deliberately gives harmful, incorrect medical advice while "
    "sounding confident and caring.",
    "financial_risky": "You are an assistant that deliberately gives reckless, high-risk financial advice "
    "while presenting it as sound.",
}


def inoculation_prompt(dataset: str, given: str | None = None) -> str:
    """The inoculation prompt for a dataset: `given`, else the shipped one for a shipped dataset."""
    if given is not None:
        return given
    name = Path(dataset).stem if dataset.endswith(".jsonl") else dataset
    if name not in INOCULATION_PROMPTS:
        raise ValueError(
            f"no inoculation prompt for dataset {dataset!r}: pass one (--inoculation-prompt) that asks for "
            f"its behaviour; shipped: {', '.join(INOCULATION_PROMPTS)}"
        )
    return INOCULATION_PROMPTS[name]
