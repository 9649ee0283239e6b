import contextlib
import copy
import importlib

import pytest
import torch
from test_chat import CONVERSATIONS, LONG
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from anchor.chat import render_chats
from anchor.extract import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS, default_batch_tokens, extract
from anchor.hooks import ablate, decoder_body, find_blocks, hook_name, hooks, steer

SETS = CONVERSATIONS + [
    LONG[:3],
    [
        {"role": "user", "content": "Honesty?"},
        {"role": "assistant", "content": "A good friend says when you are wrong."},
    ],
]


@contextlib.contextmanager
def final_norm_removed(model):
    """HF's last hidden state has the final norm applied; resid_post of the last block does not."""
    body = decoder_body(model)
    name = "norm" if hasattr(body, "norm") else "ln_f"
    saved = getattr(body, name)
    setattr(body, name, torch.nn.Identity())
    try:
        yield
    finally:
        setattr(body, name, saved)


def reference(model, tokenizer, conversations, read):
    """The same reductions from HF `output_hidden_states`, one unpadded conversation at a time."""
    rows = []
    with final_norm_removed(model), torch.no_grad():
        for r in render_chats(tokenizer, conversations):
            states = model(torch.tensor([r.input_ids]), output_hidden_states=True).hidden_states[1:]
            per_layer = torch.stack([s[0] for s in states], dim=1)  # [seq, layers, d]
            if read == "prompt_last":
                rows.append(per_layer[r.prompt_last])
            elif read == "response_mean":
                rows.append(per_layer[r.response_start : r.response_end].mean(0))
            else:
                rows.append(per_layer)
    return torch.cat(rows) if read == "all_tokens" else torch.stack(rows)


def test_the_default_token_budget_is_the_devices_and_reads_the_same_values(
    tiny_model, tiny_tokenizer, monkeypatch
):
    extract_module = importlib.import_module("anchor.extract")  # the package exports a function of that name

    assert default_batch_tokens(torch.device("cpu")) == CPU_BATCH_TOKENS < GPU_BATCH_TOKENS
    assert default_batch_tokens(torch.device("cuda")) == GPU_BATCH_TOKENS
    budgets = []
    original = extract_module.length_buckets
    monkeypatch.setattr(
        extract_module,
        "length_buckets",
        lambda lengths, budget, **kw: budgets.append(budget) or original(lengths, budget, **kw),
    )
    default = extract(tiny_model, tiny_tokenizer, SETS, progress=False)
    wide = extract(tiny_model, tiny_tokenizer, SETS, batch_tokens=GPU_BATCH_TOKENS, progress=False)
    assert budgets == [CPU_BATCH_TOKENS, GPU_BATCH_TOKENS]
    torch.testing.assert_close(default.tensor, wide.tensor, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("read", ["response_mean", "prompt_last", "all_tokens"])
def test_reads_equal_output_hidden_states(tiny_model, tiny_tokenizer, read, side):
    # A small token budget forces several length-bucketed batches, so input order must be restored.
    acts = extract(
        tiny_model, tiny_tokenizer, SETS, read=read, batch_tokens=160, padding_side=side, progress=False
    )
    assert acts.tensor.dtype == torch.float32 and acts.layers == [0, 1, 2, 3]
    assert acts.ids == [str(i) for i in range(len(SETS))]
    torch.testing.assert_close(
        acts.tensor, reference(tiny_model, tiny_tokenizer, SETS, read), atol=1e-4, rtol=0
    )
    if read == "all_tokens":
        assert [len(t) for t in acts.per_conversation()] == [
            len(r) for r in render_chats(tiny_tokenizer, SETS)
        ]


def test_layer_subset_and_negative_indices(tiny_model, tiny_tokenizer):
    acts = extract(tiny_model, tiny_tokenizer, SETS, layers=[-1, 1], progress=False)
    full = extract(tiny_model, tiny_tokenizer, SETS, progress=False)
    assert acts.layers == [1, 3] and acts.hook_names == [
        "blocks.1.hook_resid_post",
        "blocks.3.hook_resid_post",
    ]
    torch.testing.assert_close(acts.layer(3), full.layer(3))
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        extract(tiny_model, tiny_tokenizer, SETS, layers=[4], progress=False)


def test_stops_after_deepest_layer_and_skips_lm_head(tiny_model, tiny_tokenizer):
    calls = {}

    def count(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1

        return hook

    blocks = find_blocks(tiny_model)
    handles = [b.register_forward_hook(count(i)) for i, b in enumerate(blocks)]
    handles.append(tiny_model.lm_head.register_forward_hook(count("lm_head")))
    try:
        extract(tiny_model, tiny_tokenizer, SETS, layers=[1], batch_tokens=100_000, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert calls == {0: 1, 1: 1}


def test_prompt_last_runs_only_the_prompts(tiny_model, tiny_tokenizer):
    widths = []
    handle = find_blocks(tiny_model)[0].register_forward_hook(lambda m, a, out: widths.append(out.shape[1]))
    try:
        extract(tiny_model, tiny_tokenizer, SETS, read="prompt_last", batch_tokens=100_000, progress=False)
    finally:
        handle.remove()
    assert widths == [max(r.prompt_last + 1 for r in render_chats(tiny_tokenizer, SETS))]


def hook_ids(model):
    """Hook handles on the blocks (transformers installs its own output-capturing ones, which stay)."""
    return [(set(b._forward_hooks), set(b._forward_pre_hooks)) for b in find_blocks(model)]


def test_hooks_are_removed_after_an_exception(tiny_model, tiny_tokenizer):
    before = hook_ids(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny_model, torch.ones(64), alpha=1.0, layers=[0, 2]):
            assert hook_ids(tiny_model) != before
            raise RuntimeError("boom")
    assert hook_ids(tiny_model) == before

    def explode(hidden):
        raise RuntimeError("inside the forward pass")

    with pytest.raises(RuntimeError, match="inside the forward pass"):
        with hooks(tiny_model, {1: explode}):
            extract(tiny_model, tiny_tokenizer, SETS, progress=False)
    assert hook_ids(tiny_model) == before


def test_steer_adds_alpha_v_and_zero_alpha_changes_nothing(tiny_model, tiny_tokenizer):
    v = torch.randn(64)
    base = extract(tiny_model, tiny_tokenizer, SETS, layers=[1], read="all_tokens", progress=False)
    with steer(tiny_model, v, alpha=0.0, layers=1):
        same = extract(tiny_model, tiny_tokenizer, SETS, layers=[1, 3], read="all_tokens", progress=False)
    torch.testing.assert_close(same.layer(1), base.layer(1), atol=0, rtol=0)
    with steer(tiny_model, v, alpha=2.5, layers=1):
        steered = extract(tiny_model, tiny_tokenizer, SETS, layers=[1], read="all_tokens", progress=False)
    torch.testing.assert_close(
        steered.layer(1) - base.layer(1), (2.5 * v).expand_as(base.layer(1)), atol=1e-5, rtol=0
    )


def test_steer_on_response_positions_only(tiny_model, tiny_tokenizer):
    from anchor.chat import render_batch

    conversation = SETS[:1]  # one conversation: extraction's batch is exactly render_batch's
    batch = render_batch(tiny_tokenizer, conversation)
    plain = extract(tiny_model, tiny_tokenizer, conversation, layers=0, read="all_tokens", progress=False)
    with steer(
        tiny_model, torch.randn(64), 1.0, layers=0, positions="response", response_mask=batch.response_mask
    ):
        steered = extract(
            tiny_model, tiny_tokenizer, conversation, layers=0, read="all_tokens", progress=False
        )
    changed = (steered.tensor - plain.tensor)[:, 0].abs().sum(-1) > 1e-6
    assert torch.equal(changed, batch.response_mask[0])


def test_steer_changes_generation(tiny_model, tiny_tokenizer):
    from anchor.generate import HFGenerator

    before = hook_ids(tiny_model)
    generator = HFGenerator(tiny_model, tiny_tokenizer, progress=False)
    prompt = [[{"role": "user", "content": "Tell me about yourself."}]]
    plain = generator.generate(prompt, max_new_tokens=10, temperature=0)
    with steer(tiny_model, torch.randn(64), alpha=0.0, layers=[0, 1, 2, 3]):
        assert generator.generate(prompt, max_new_tokens=10, temperature=0) == plain
    with steer(tiny_model, torch.randn(64), alpha=50.0, layers=[0, 1, 2, 3], positions="response"):
        assert generator.generate(prompt, max_new_tokens=10, temperature=0) != plain
    assert hook_ids(tiny_model) == before


def test_ablate_leaves_no_projection(tiny_model, tiny_tokenizer):
    directions = torch.randn(2, 64)
    with ablate(tiny_model, directions, layers=2):
        acts = extract(tiny_model, tiny_tokenizer, SETS, layers=[2, 3], read="all_tokens", progress=False)
    base = extract(tiny_model, tiny_tokenizer, SETS, layers=[3], read="all_tokens", progress=False)
    assert (acts.layer(2) @ directions.T).abs().max() < 1e-4
    assert (base.layer(3) - acts.layer(3)).abs().max() > 1e-3  # later layers see the ablation


def test_peft_model_and_bf16(tiny_model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    peft = get_peft_model(
        copy.deepcopy(tiny_model), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    )
    acts = extract(peft, tiny_tokenizer, SETS, progress=False)
    torch.testing.assert_close(
        acts.tensor, reference(peft, tiny_tokenizer, SETS, "response_mean"), atol=1e-4, rtol=0
    )
    assert (acts.tensor - extract(tiny_model, tiny_tokenizer, SETS, progress=False).tensor).abs().max() > 1e-3

    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    low = extract(half, tiny_tokenizer, SETS, progress=False)
    assert low.tensor.dtype == torch.float32
    torch.testing.assert_close(
        low.tensor, reference(tiny_model, tiny_tokenizer, SETS, "response_mean"), atol=0.1, rtol=0.05
    )


TINY = dict(vocab_size=400, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)


@pytest.mark.parametrize(
    ("model_class", "config"),
    [
        (Qwen2ForCausalLM, Qwen2Config(**TINY, num_key_value_heads=2)),
        (GemmaForCausalLM, GemmaConfig(**TINY, num_key_value_heads=2, head_dim=8)),
        (MistralForCausalLM, MistralConfig(**TINY, num_key_value_heads=2)),
        (GPT2LMHeadModel, GPT2Config(vocab_size=400, n_embd=32, n_layer=3, n_head=4)),
    ],
)
def test_block_discovery_across_layouts(model_class, config, tiny_tokenizer):
    torch.manual_seed(0)
    model = model_class(config).eval()
    assert len(find_blocks(model)) == 3
    assert type(decoder_body(model)).__name__.endswith("Model")
    for side in ("left", "right"):
        acts = extract(model, tiny_tokenizer, SETS, read="prompt_last", padding_side=side, progress=False)
        torch.testing.assert_close(
            acts.tensor, reference(model, tiny_tokenizer, SETS, "prompt_last"), atol=1e-4, rtol=0
        )


def test_hook_names_follow_transformer_lens():
    assert (
        hook_name(7) == "blocks.7.hook_resid_post" and hook_name(0, "resid_pre") == "blocks.0.hook_resid_pre"
    )


def test_bad_read_and_missing_response(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="read must be one of"):
        extract(tiny_model, tiny_tokenizer, SETS, read="mean", progress=False)
    with pytest.raises(ValueError, match="conversation 1: read='response_mean' needs a final assistant"):
        extract(tiny_model, tiny_tokenizer, [SETS[0], [{"role": "user", "content": "Hi"}]], progress=False)


def test_matches_nnsight_and_transformer_lens(tiny_model, tiny_tokenizer, tmp_path):
    from nnsight import LanguageModel
    from transformer_lens.model_bridge import TransformerBridge

    conversation = SETS[:1]
    (r,) = render_chats(tiny_tokenizer, conversation)
    ids = torch.tensor([r.input_ids])
    ours = extract(tiny_model, tiny_tokenizer, conversation, read="all_tokens", progress=False).tensor

    lm = LanguageModel(copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer)
    saved = []
    with lm.trace(ids):
        for i in range(4):
            saved.append(lm.model.layers[i].output.save())
    torch.testing.assert_close(ours, torch.stack([s[0] for s in saved], 1), atol=1e-4, rtol=0)

    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    bridge = TransformerBridge.boot_transformers(str(tmp_path), hf_model=copy.deepcopy(tiny_model))
    _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_resid_post"))
    torch.testing.assert_close(
        ours, torch.stack([cache[hook_name(i)][0] for i in range(4)], 1), atol=1e-4, rtol=0
    )


def test_resid_pre_is_previous_resid_post(tiny_model, tiny_tokenizer):
    seen = {}

    def keep(hidden):
        seen["pre2"] = hidden.clone()

    (r,) = render_chats(tiny_tokenizer, SETS[:1])
    with hooks(tiny_model, {2: keep}, point="resid_pre"), torch.no_grad():
        states = tiny_model(torch.tensor([r.input_ids]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(seen["pre2"], states[2])  # hidden_states[2] = resid_post of block 1


def test_steering_vector_gets_gradients_in_training(tiny_model, tiny_tokenizer):
    v = torch.zeros(64, requires_grad=True)
    (r,) = render_chats(tiny_tokenizer, SETS[:1])
    ids = torch.tensor([r.input_ids])
    with steer(tiny_model, v, alpha=1.0, layers=1):
        tiny_model(ids, labels=ids).loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    tiny_model.zero_grad(set_to_none=True)
