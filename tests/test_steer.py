"""Steering and ablation read-outs: clean reads under a training-time ablation, the read-layer
rule, and the clean-pass (no hooks) read-out of steered generations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anchor.extract import extract
from anchor.generate import HFGenerator, SamplingConfig
from anchor.hooks import ablate, project_hooks, steer
from anchor.runs import checkpoints, em_store
from anchor.store import ActivationStore
from probes.directions import Directions, ProbeFit
from probes.steering import (
    LinearReadout,
    answer_conversations,
    assert_no_hooks,
    check_read_layer,
    clean_read,
    dose_response,
    sweep,
)
from train.callbacks import ActivationRecorder, LiftableHooks, ProbeSet, hooks_lifted, liftable_hooks
from train.em import EMRunConfig, em_probe_sets, finetune_em

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    [{"role": "user", "content": q}]
    for q in (
        "Tell me about yourself.",
        "What do you think of my essay?",
        "The quick brown dog",
        "numbers 0 1 2",
    )
]
ANSWERED = [[*p, {"role": "assistant", "content": "I agree with you completely!"}] for p in PROMPTS]


def _projection(model, tokenizer, direction: torch.Tensor, layer: int) -> torch.Tensor:
    acts = extract(model, tokenizer, ANSWERED, layers=[layer], read="response_mean", progress=False)
    return acts.tensor[:, 0] @ torch.nn.functional.normalize(direction, dim=0)


def test_liftable_hooks_come_off_for_a_read_and_back_on_after(tiny_model, tiny_tokenizer):
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    clean = _projection(tiny_model, tiny_tokenizer, direction, 1)
    assert clean.abs().max() > 1e-3  # the direction is there to remove
    with LiftableHooks(tiny_model, lambda: ablate(tiny_model, {1: direction}), "ablated"):
        assert len(liftable_hooks(tiny_model)) == 1
        assert _projection(tiny_model, tiny_tokenizer, direction, 1).abs().max() < 1e-4
        with hooks_lifted(tiny_model):
            assert torch.allclose(_projection(tiny_model, tiny_tokenizer, direction, 1), clean, atol=1e-5)
        assert _projection(tiny_model, tiny_tokenizer, direction, 1).abs().max() < 1e-4  # back on
    assert liftable_hooks(tiny_model) == []
    assert project_hooks(tiny_model) == []


def test_a_read_with_one_liftable_hook_on_keeps_the_hooks_in_their_order(
    tiny_model, tiny_tokenizer, tmp_path
):
    """Steering then ablating the same direction leaves nothing along it; the other order leaves
    the steering vector. The recorder's read with one hook on must not swap them for the rest of
    training."""
    direction = torch.nn.functional.normalize(
        torch.randn(64, generator=torch.Generator().manual_seed(2)), dim=0
    )
    vector = 5.0 * direction
    with (
        LiftableHooks(tiny_model, lambda: steer(tiny_model, {1: vector}), "steered"),
        LiftableHooks(tiny_model, lambda: ablate(tiny_model, {1: direction}), "ablated"),
    ):
        assert _projection(tiny_model, tiny_tokenizer, direction, 1).abs().max() < 1e-4  # steer, then ablate
        recorder = ActivationRecorder(
            tiny_tokenizer,
            ActivationStore(tmp_path / "store"),
            {"answered": ProbeSet(ANSWERED, layers=[1])},
            "em",
            every=1,
        )
        recorder._read(tiny_model, "step-00001", {}, end=True)
        assert _projection(tiny_model, tiny_tokenizer, direction, 1).abs().max() < 1e-4  # the same order
    steered = recorder.store.load("step-00001/answered.steered").tensor[:, 0] @ direction
    ablated = recorder.store.load("step-00001/answered.ablated").tensor[:, 0] @ direction
    clean = recorder.store.load("step-00001/answered").tensor[:, 0] @ direction
    assert torch.allclose(steered - clean, torch.full_like(clean, 5.0), atol=1e-3)  # only the steering on
    assert ablated.abs().max() < 1e-4  # only the ablation on


def test_ablated_em_run_records_clean_reads_and_ablated_reads(tiny_dir, tiny_model, tiny_tokenizer, tmp_path):
    """The drift read of an ablated EM run is taken with the ablation lifted (under the usual
    names) and again with it on (`.ablated`): at step 0 the clean read is the starting model's."""
    direction = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    probe = ProbeFit(torch.zeros(4, 64), torch.zeros(4), [0.5] * 4, [0.5] * 4)
    path = Directions([0, 1, 2, 3], direction, direction.clone(), probe).save(
        tmp_path / "directions.safetensors"
    )
    config = EMRunConfig(
        dataset="insecure",
        model=tiny_dir,
        preset="smoke",
        max_rows=4,
        record_every=1,
        ablate_directions=str(path),
        ablate_layers=(1,),
    )
    finetune_em(config, tmp_path / "run", em_probe_sets(n_neutral=2), log=lambda _: None)
    store = em_store(tmp_path / "run")
    first = checkpoints(tmp_path / "run")[0]
    unit = torch.nn.functional.normalize(direction[1], dim=0)
    clean = store.load(f"{first}/em_questions").tensor[:, 1]
    ablated = store.load(f"{first}/em_questions.ablated").tensor[:, 1]
    assert (ablated @ unit).abs().max() < 1e-4  # projected out at the ablated layer
    assert (clean @ unit).abs().min() > 1e-4  # the clean read keeps it
    plain = extract(
        tiny_model, tiny_tokenizer, em_probe_sets(0)["em_questions"].conversations, read="prompt_last"
    )
    assert torch.allclose(store.load(f"{first}/em_questions").tensor, plain.tensor, atol=1e-4)
    assert store.meta(f"{first}/em_questions.ablated")["hooks"] == "ablated"
    for checkpoint in checkpoints(tmp_path / "run"):
        assert f"{checkpoint}/neutral" in store and f"{checkpoint}/neutral.ablated" in store


def test_the_anchor_is_never_read_at_a_steered_or_ablated_layer(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="read layer 2 is one of the steered/ablated layers"):
        check_read_layer(2, [1, 2])
    check_read_layer(3, [1, 2])
    with pytest.raises(ValueError, match="read layer 1"):
        dose_response(
            tiny_model, tiny_tokenizer, {1: torch.ones(64)}, [0.0], PROMPTS, 1, torch.ones(64), 0.0, 1.0
        )


def test_clean_read_refuses_a_hooked_model(tiny_model, tiny_tokenizer):
    answers = answer_conversations(PROMPTS, [["I agree."]] * len(PROMPTS))
    readout = LinearReadout(0, torch.ones(64), 0.0)
    with steer(tiny_model, {1: torch.ones(64)}), pytest.raises(RuntimeError, match="still has a hook"):
        clean_read(tiny_model, tiny_tokenizer, answers, readout)
    assert_no_hooks(tiny_model)


def test_answer_conversations_drop_empty_replies_and_keep_the_prompt_index():
    answers = answer_conversations(PROMPTS[:2], [["yes", " "], ["", "no", "maybe"]])
    assert answers.prompt_index == [0, 1, 1]
    assert [c[-1]["content"] for c in answers.conversations] == ["yes", "no", "maybe"]
    assert answers.conversations[1][:-1] == PROMPTS[1]
    with pytest.raises(ValueError, match="reply lists for"):
        answer_conversations(PROMPTS, [["yes"]])


def _token_case(model, tokenizer):
    """Steering along the unembedding row of one token at the last layer makes the model say that
    token (+) or avoid it (-); a read-out along the token's embedding at layer 0 measures how much
    of it the answers contain, in a pass with no hooks."""
    token = 300
    vector = model.lm_head.weight[token].detach().clone()
    vector = 50 * vector / vector.norm()
    readout = LinearReadout(0, model.model.embed_tokens.weight[token].detach().clone(), 0.0, "token")
    generator = HFGenerator(model, tokenizer, progress=False)

    def generate(prompts):
        return generator.generate(prompts, SamplingConfig(max_new_tokens=12, temperature=0))

    return token, {3: vector}, readout, generate


def test_steering_raises_the_clean_read_of_the_generated_text(tiny_model, tiny_tokenizer):
    """+alpha raises the no-hooks read-out of the steered answers above alpha 0 and -alpha; it
    would not if the hooks were ignored (all equal) or the sign were flipped."""
    token, vectors, readout, generate = _token_case(tiny_model, tiny_tokenizer)
    reads = sweep(
        tiny_model,
        tiny_tokenizer,
        generate,
        PROMPTS,
        {str(a): (lambda a=a: steer(tiny_model, vectors, alpha=a)) for a in (-1.0, 0.0, 1.0)},
        readout,
    )
    means = {a: reads[a].mean_logit for a in reads}
    assert means["1.0"] > means["0.0"] + 0.01 and means["1.0"] > means["-1.0"] + 0.01
    word = tiny_tokenizer.decode([token])
    assert all(word in c[-1]["content"] for c in reads["1.0"].answers.conversations)
    assert not any(word in c[-1]["content"] for c in reads["-1.0"].answers.conversations)
    assert_no_hooks(tiny_model)


def test_dose_response_reports_the_clean_read_per_alpha(tiny_model, tiny_tokenizer):
    _, vectors, readout, generate = _token_case(tiny_model, tiny_tokenizer)
    points = dose_response(
        tiny_model,
        tiny_tokenizer,
        vectors,
        [-1.0, 1.0],
        PROMPTS,
        2,  # upstream of the steered layer: the in-hook read cannot see the vector
        torch.ones(64),
        0.0,
        1.0,
        generate=generate,
        readout=readout,
    )
    assert [p.alpha for p in points] == [-1.0, 1.0]
    assert points[0].anchor_projection == pytest.approx(points[1].anchor_projection, abs=1e-5)
    assert points[1].clean.mean_logit > points[0].clean.mean_logit + 0.01
    assert len(points[1].clean.logits) == len(PROMPTS)


def test_steer_pools_the_clean_read_out_over_runs_with_a_t_interval():
    from analysis.experiments import steer as steer_script

    results = [
        {
            "run": f"s{i}",
            "sweeps": {"persona model": [{"alpha": a, "clean_probe_probability": p} for a, p in pts]},
        }
        for i, pts in enumerate([[(-2, 0.2), (2, 0.6)], [(-2, 0.4), (2, 0.8)]])
    ]
    pooled = steer_script.pool_sweeps(results)["sweeps"]["persona model"]
    assert [p["alpha"] for p in pooled] == [-2, 2]
    high = pooled[1]["clean_probe_probability"]
    assert (
        high["n"] == 2 and abs(high["value"] - 0.7) < 1e-9 and high["ci95"][0] < 0.6 < 0.8 < high["ci95"][1]
    )
