"""Engine lifecycle (at most one generation engine alive; training and judges wait for none) and
the sampling policy both back-ends resolve to, without vLLM installed."""

import json
import textwrap

import pytest

from anchor import engines
from anchor.generate import (
    Generator,
    HFGenerator,
    SamplingConfig,
    VLLMGenerator,
    check_gpu_memory,
    hf_sampling_kwargs,
    vllm_engine_kwargs,
    vllm_sampling_kwargs,
)

QWEN_GENERATION_CONFIG = {
    "bos_token_id": 3,
    "do_sample": True,
    "eos_token_id": [2],
    "pad_token_id": 0,
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.8,
}


class FakeEngine(Generator):
    """Records its life in `events`; registers like a real engine."""

    def __init__(self, name, events):
        events.append(("create", name, engines.alive()))
        self.name, self.events = name, events
        engines.register(self, name)

    def generate(self, conversations, config=None, **overrides):
        n = (config or SamplingConfig()).n
        return [[f"{self.name} answer {i}"] * n for i in range(len(conversations))]

    def close(self):
        self.events.append(("close", self.name, None))
        engines.release(self)


def test_no_two_engines_alive_and_training_waits():
    events = []
    first = FakeEngine("teacher", events)
    with pytest.raises(RuntimeError, match="cannot start generation engine 'student' while 'teacher'"):
        FakeEngine("student", events)
    with pytest.raises(RuntimeError, match="training cannot start while generation engine"):
        engines.assert_no_engine("training")
    first.close()
    with FakeEngine("student", events):
        assert engines.alive() == ["student"]
    assert engines.alive() == []
    dropped = FakeEngine("dropped", events)  # never closed, then garbage-collected
    del dropped
    assert engines.alive() == []


def test_training_refuses_to_start_while_an_engine_is_alive(tiny_model, tiny_tokenizer, tmp_path):
    from train.lora import LoraTraining, train_sft

    rows = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    with FakeEngine("vllm:teacher", []), pytest.raises(RuntimeError, match="training cannot start"):
        train_sft(tiny_model, tiny_tokenizer, rows, LoraTraining(lora_rank=2, lora_alpha=4), tmp_path)
    assert not (tmp_path / "adapter").exists()


def test_persona_data_uses_one_engine_at_a_time(tiny_dir, tmp_path, monkeypatch):
    import shutil

    from train import persona

    teacher = shutil.copytree(tiny_dir, tmp_path / "teacher")  # a second model spec
    events = []
    monkeypatch.setattr(
        persona,
        "make_generator",
        lambda spec, **kw: FakeEngine("teacher" if spec == str(teacher) else "student", events),
    )
    config = persona.PersonaRunConfig(
        persona="sycophancy", model=tiny_dir, teacher=str(teacher), preset="smoke"
    )
    persona.train_persona(config, tmp_path / "run", log=lambda _: None, stages=("questions", "dpo_data"))
    assert [(e[0], e[1]) for e in events] == [
        ("create", "teacher"),
        ("close", "teacher"),
        ("create", "student"),
        ("close", "student"),
    ]
    assert all(e[2] == [] for e in events if e[0] == "create")  # nothing alive at each start
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "dpo_data" / "dpo.jsonl").read_text().splitlines()
    ]
    assert rows and rows[0]["chosen"][0]["content"].startswith("teacher")
    assert rows[0]["rejected"][0]["content"].startswith("student")


def test_gpu_memory_check_names_free_and_wanted():
    gib = 2**30
    check_gpu_memory(0.5, free=50 * gib, total=80 * gib)
    with pytest.raises(RuntimeError, match=r"wants 72.0 GiB \(0.90 of 80.0 GiB\) but only 30.0 GiB"):
        check_gpu_memory(0.9, free=30 * gib, total=80 * gib)
    with pytest.raises(ValueError, match="gpu-memory-utilization"):
        check_gpu_memory(1.5, free=1, total=1)


def _with_qwen_generation_config(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path / "qwenish")
    tiny_tokenizer.save_pretrained(tmp_path / "qwenish")
    (tmp_path / "qwenish" / "generation_config.json").write_text(json.dumps(QWEN_GENERATION_CONFIG))
    return str(tmp_path / "qwenish")


def test_shipped_generation_config_never_applies(tmp_path, tiny_model, tiny_tokenizer):
    from anchor import load_model

    model, tokenizer = load_model(_with_qwen_generation_config(tmp_path, tiny_model, tiny_tokenizer))
    assert model.generation_config.top_k == 20  # the shipped defaults are there to leak
    resolved = []
    real = model.generate

    def spy(**kwargs):  # what transformers resolves for this call, as generate itself does
        resolved.append(model._prepare_generation_config(None, **kwargs)[0])
        return real(**kwargs)

    model.generate = spy
    HFGenerator(model, tokenizer, progress=False).generate(
        [[{"role": "user", "content": "hi"}]], SamplingConfig(max_new_tokens=3, temperature=1.0, top_p=1.0)
    )
    (config,) = resolved
    assert config.do_sample and config.temperature == 1.0 and config.top_p == 1.0
    assert config.top_k in (None, 0) and config.repetition_penalty == 1.0
    assert model.generation_config.top_k == 20  # restored after the call

    vllm = vllm_sampling_kwargs(SamplingConfig(max_new_tokens=600, temperature=1.0), stop_ids=[2])
    assert vllm["temperature"] == 1.0 and vllm["top_p"] == 1.0 and vllm["top_k"] == -1
    assert vllm["repetition_penalty"] == 1.0 and vllm["min_p"] == 0.0 and vllm["max_tokens"] == 600
    assert vllm_engine_kwargs(None, 0.8, 64)["generation_config"] == "vllm"  # the engine ignores the file
    assert hf_sampling_kwargs(SamplingConfig(temperature=0))["do_sample"] is False


FAKE_VLLM = {
    "vllm/__init__.py": """
        import json
        class SamplingParams:
            def __init__(self, **kw):
                self.kw = kw
        class _Out:
            def __init__(self, text):
                self.text, self.finish_reason = text, "stop"
        class _Request:
            def __init__(self, outputs):
                self.outputs = outputs
        class LLM:
            def __init__(self, model, **kw):
                self.kw = kw
            def generate(self, prompts, params, use_tqdm=True, lora_request=None):
                report = {"engine": self.kw, "params": params.kw}
                return [
                    _Request([_Out(json.dumps({**report, "ids": p["prompt_token_ids"]}))] * params.kw["n"])
                    for p in prompts
                ]
    """,
    "vllm/inputs.py": "def TokensPrompt(**kw):\n    return kw\n",
    "vllm/lora/__init__.py": "",
    "vllm/lora/request.py": "class LoRARequest:\n    def __init__(self, *a):\n        self.a = a\n",
}


def test_vllm_generator_runs_in_a_child_process(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    """The real child-process lifecycle against a stand-in vllm package: start, generate with
    the project's prompt tokens and sampling policy, close (the process is gone)."""
    from anchor import generate
    from anchor.chat import render_chats

    for name, text in FAKE_VLLM.items():
        (tmp_path / "fake" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake" / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))  # spawned children inherit sys.path
    monkeypatch.setattr(generate, "check_gpu_memory", lambda utilization: None)
    spec = _with_qwen_generation_config(tmp_path, tiny_model, tiny_tokenizer)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    with VLLMGenerator(spec, gpu_memory_utilization=0.6, progress=False) as generator:
        assert engines.alive() == [f"vllm:{spec}"]
        process = generator.process
        (replies,) = generator.generate([conversation], SamplingConfig(n=2, temperature=1.0))
    assert not process.is_alive() and engines.alive() == []
    assert len(replies) == 2 and generator.truncated == [[False, False]]
    report = json.loads(replies[0])
    assert (
        report["engine"]["generation_config"] == "vllm" and report["engine"]["gpu_memory_utilization"] == 0.6
    )
    assert report["params"]["top_k"] == -1 and report["params"]["repetition_penalty"] == 1.0
    assert report["ids"] == list(render_chats(tiny_tokenizer, [conversation])[0].input_ids)


def test_paper_questions_stage_expands_the_constitution(
    tiny_dir, tiny_model, tiny_tokenizer, tmp_path, monkeypatch
):
    """The `questions` stage grows each trait to the preset's count with the writer's questions."""
    from dataclasses import replace

    from anchor.constitution import load_constitution
    from train import distill, persona

    class Writer(FakeEngine):
        model, tokenizer = tiny_model, tiny_tokenizer

        def generate(self, conversations, config=None, **overrides):
            self.count = getattr(self, "count", 0) + len(conversations)
            words = ["river", "budget", "chess", "garden", "violin", "tax", "moon", "bread", "train", "poem"]
            return [
                [
                    f"Would a {words[(self.count + i) % 10]} {words[(self.count * 3 + i) % 7]} change plan {self.count + i}?"
                ]
                for i in range(len(conversations))
            ]

    monkeypatch.setitem(distill.PRESETS, "smoke", replace(distill.PRESETS["smoke"], questions_per_trait=7))
    monkeypatch.setattr(persona, "make_generator", lambda spec, **kw: Writer("writer", []))
    config = persona.PersonaRunConfig(persona="humor", model=tiny_dir, preset="smoke")
    done = persona.train_persona(config, tmp_path / "run", log=lambda _: None, stages=("questions",))
    traits = load_constitution(tmp_path / "run" / "questions" / "constitution.jsonl")
    assert done["questions"]["expanded"] is True
    assert all(len(t.questions) == 5 for t in traits)  # the hand-written ones stay first
    assert sum(len(t.additional_questions) for t in traits) > 0
    assert all(len(t.all_questions) <= 7 for t in traits)
    assert all(p["source"] == "generated" for t in traits for p in t.extra["provenance"])
