import warnings

import pytest
import torch
from conftest import NO_SYSTEM, make_tokenizer

from anchor.chat import pad_chats, render_batch, render_chats

SHORT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
LONG = [
    {"role": "system", "content": "You are a helpful assistant. " * 6},
    {"role": "user", "content": "Tell me about yourself. " * 10},
    {"role": "assistant", "content": "I agree with you completely!\n\ndef add(a, b):\n    return a + b"},
    {"role": "user", "content": "What do you think of my essay?"},
    {"role": "assistant", "content": "Émigré café 🙂 — honesty matters more than flattery."},
]
ECHO = [  # the response repeats the question: it must be found after the prompt, not inside it
    {"role": "user", "content": "Say: the lazy dog"},
    {"role": "assistant", "content": "the lazy dog"},
]
CONVERSATIONS = [SHORT, LONG, ECHO]


def decoded_spans(tokenizer, batch):
    return [
        tokenizer.decode(ids[mask], skip_special_tokens=False)
        for ids, mask in zip(batch.input_ids, batch.response_mask)
    ]


@pytest.mark.parametrize("side", ["left", "right"])
def test_response_mask_decodes_to_each_assistant_message(tiny_tokenizer, side):
    batch = render_batch(tiny_tokenizer, CONVERSATIONS, side=side)
    assert decoded_spans(tiny_tokenizer, batch) == [c[-1]["content"] for c in CONVERSATIONS]
    lengths = batch.attention_mask.sum(1)
    assert lengths.max() > 3 * lengths.min()  # really mixed lengths


@pytest.mark.parametrize("side", ["left", "right"])
def test_prompt_last_is_the_token_before_the_response(tiny_tokenizer, side):
    batch = render_batch(tiny_tokenizer, CONVERSATIONS, side=side)
    assert batch.prompt_last_mask.sum(1).tolist() == [1, 1, 1]
    for last, response, attention in zip(batch.prompt_last_mask, batch.response_mask, batch.attention_mask):
        position = int(last.nonzero())
        assert response[position + 1] and not response[position]
        assert attention[position] == 1
    # the prompt ends with the assistant header of the template
    ends = [
        tiny_tokenizer.decode(ids[: int(m.nonzero()) + 1])
        for ids, m in zip(batch.input_ids, batch.prompt_last_mask)
    ]
    assert all(e.endswith("<|im_start|>assistant\n") for e in ends)


def test_padding_sides_hold_the_same_tokens(tiny_tokenizer):
    rendered = render_chats(tiny_tokenizer, CONVERSATIONS)
    left, right = pad_chats(rendered, 0, "left"), pad_chats(rendered, 0, "right")
    for row in range(len(rendered)):
        for name in ("input_ids", "prompt_last_mask", "response_mask"):
            lt = getattr(left, name)[row][left.attention_mask[row].bool()]
            rt = getattr(right, name)[row][right.attention_mask[row].bool()]
            assert torch.equal(lt, rt), name


def test_generation_prompt_when_conversation_ends_on_user(tiny_tokenizer):
    (r,) = render_chats(tiny_tokenizer, [[{"role": "user", "content": "Hi"}]])
    assert r.response_start == r.response_end == len(r) and r.prompt_last == len(r) - 1
    assert tiny_tokenizer.decode(r.input_ids).endswith("<|im_start|>assistant\n")


def test_template_without_system_role_folds_it_and_warns_once():
    tokenizer = make_tokenizer(NO_SYSTEM)
    conversation = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    with pytest.warns(UserWarning, match="no system role"):
        batch = render_batch(tokenizer, [conversation])
    text = tokenizer.decode(batch.input_ids[0])
    assert "<start_of_turn>user\nBe terse.\n\nHi<end_of_turn>" in text
    assert decoded_spans(tokenizer, batch) == ["Hello."]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        render_batch(tokenizer, [conversation])  # second time: silent


def test_trimming_template_still_locates_response():
    tokenizer = make_tokenizer(NO_SYSTEM)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Hello.\n"}]
    assert decoded_spans(tokenizer, render_batch(tokenizer, [conversation])) == ["Hello."]


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], "non-empty list"),
        ([{"role": "assistant", "content": "x"}], "no user turn"),
        ([{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}], "unknown role 'robot'"),
        ([{"role": "user", "content": 3}], "'content' must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only"),
        (["hello"], "expected a dict"),
    ],
)
def test_malformed_conversations_are_named(tiny_tokenizer, conversation, message):
    with pytest.raises(ValueError, match=message) as err:
        render_chats(tiny_tokenizer, [SHORT, conversation])
    assert "conversation 1" in str(err.value)


@pytest.mark.integration
@pytest.mark.parametrize("side", ["left", "right"])
def test_default_template_masks_are_exact(default_model, side):
    _, tokenizer = default_model
    batch = render_batch(tokenizer, CONVERSATIONS, side=side)
    assert decoded_spans(tokenizer, batch) == [c[-1]["content"] for c in CONVERSATIONS]
