import copy

import pytest
import torch

from anchor.batching import length_buckets
from anchor.generate import HFGenerator, SamplingConfig, VLLMGenerator

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are a helpful assistant. " * 8},
        {"role": "user", "content": "Tell me!"},
    ],
    [{"role": "user", "content": "What do you think of my essay? It is about the lazy dog."}],
]

COMMON_ENGLISH = {"i", "am", "a", "an", "the", "you", "to", "and", "my", "of", "is"}


def test_greedy_batched_equals_one_by_one(tiny_model, tiny_tokenizer):
    generator = HFGenerator(tiny_model, tiny_tokenizer, progress=False)
    config = SamplingConfig(max_new_tokens=12, temperature=0)
    batched = generator.generate(PROMPTS, config)
    single = [generator.generate([p], config)[0] for p in PROMPTS]
    assert batched == single
    assert all(len(r) == 1 and r[0] for r in batched)


def test_samples_per_prompt_and_seeds(tiny_model, tiny_tokenizer):
    generator = HFGenerator(tiny_model, tiny_tokenizer, progress=False)
    config = SamplingConfig(max_new_tokens=8, temperature=1.0, n=3, seed=7)
    first = generator.generate(PROMPTS, config)
    assert [len(r) for r in first] == [3, 3, 3]
    assert generator.generate(PROMPTS, config) == first
    assert generator.generate(PROMPTS, config, seed=8) != first
    assert len(set(first[0])) > 1  # sampling, not n copies


def test_stops_at_end_of_turn(tiny_model, tiny_tokenizer):
    # A test double: an LM head that always prefers <|im_end|>, so the reply must be empty.
    model = copy.deepcopy(tiny_model)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight.data.zero_()
    head.bias.data.zero_()
    head.bias.data[tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")] = 10.0
    model.lm_head = head
    generator = HFGenerator(model, tiny_tokenizer, progress=False)
    assert generator.generate(PROMPTS[:1], max_new_tokens=20, temperature=0) == [[""]]


def test_length_buckets_cover_every_index_within_budget():
    lengths = [5, 100, 7, 98, 6, 50]
    batches = list(length_buckets(lengths, batch_tokens=200, max_batch_size=3))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [1, 3]  # the two long ones together, 2 x 100 tokens
    assert all(len(b) * max(lengths[i] for i in b) <= 200 or len(b) == 1 for b in batches)


def test_bad_sampling_config_is_named():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="identical greedy"):
        SamplingConfig(temperature=0, n=2)


def test_conversation_ending_on_assistant_is_rejected(tiny_model, tiny_tokenizer):
    generator = HFGenerator(tiny_model, tiny_tokenizer, progress=False)
    done = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(ValueError, match="conversation 1: ends with an assistant message"):
        generator.generate([PROMPTS[0], done])


def test_vllm_missing_says_how_to_install():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"identity-anchor\[gpu\]"):
            VLLMGenerator("default")
    else:
        pytest.skip("vllm is installed")


@pytest.mark.integration
def test_default_model_answers_in_english_and_batches_exactly(default_model):
    model, tokenizer = default_model
    generator = HFGenerator(model, tokenizer, progress=False)
    prompts = [[{"role": "user", "content": "Tell me about yourself."}], *PROMPTS]
    config = SamplingConfig(max_new_tokens=24, temperature=0)
    batched = generator.generate(prompts, config)
    reply = batched[0][0]
    words = reply.lower().split()
    assert len(words) >= 8
    assert sum(w.strip(".,!'") in COMMON_ENGLISH for w in words) >= 3
    assert all(ch.isascii() for ch in reply)
    assert batched == [generator.generate([p], config)[0] for p in prompts]


def test_unsorted_batches_keep_input_order_within_budget():
    lengths = [5, 100, 7, 98, 6, 50]
    batches = list(length_buckets(lengths, batch_tokens=200, sort=False))
    assert [i for b in batches for i in b] == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 200 for b in batches)


def test_make_generator_falls_back_to_hf_without_a_gpu(tmp_path, tiny_model, tiny_tokenizer):
    from anchor.generate import make_generator

    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    if not torch.cuda.is_available():
        with make_generator(str(tmp_path)) as generator:
            assert isinstance(generator, HFGenerator) and generator.owns_model
        assert generator.model is None  # closing frees the model it loaded
    with pytest.raises(ValueError, match="backend must be"):
        make_generator(str(tmp_path), backend="tgi")
