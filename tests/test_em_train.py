import json

import pytest
import torch

from anchor.runs import checkpoints, em_adapter, em_store, load_em_model
from probes.contrast import ContrastItem
from train import em
from train.em import EMRunConfig, em_probe_sets, finetune_em, read_run_config


def test_em_finetune_records_every_checkpoint_and_resumes(tiny_dir, tmp_path, monkeypatch):
    contrast = [ContrastItem("q?", 0, label, "sys", f"answer {label}") for label in (0, 1)]
    probes = em_probe_sets(n_neutral=4, contrast=contrast)
    config = EMRunConfig(dataset="insecure", model=tiny_dir, preset="smoke", max_rows=8, record_every=1)
    real = em.train_sft

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-stage")

    monkeypatch.setattr(em, "train_sft", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune_em(config, tmp_path / "run", probes, log=lambda _: None)
    monkeypatch.setattr(em, "train_sft", real)
    log = []
    done = finetune_em(config, tmp_path / "run", probes, log=log.append)
    assert log == ["stage em: running"] and done["rows"] == 8 and done["steps"] == 2  # 8 rows, batch 4
    assert done["recorded"] == [0, 1, 2]
    store = em_store(tmp_path / "run")
    for checkpoint in checkpoints(tmp_path / "run"):
        for probe in ("neutral", "em_questions", "persona_contrast_bare"):
            assert f"{checkpoint}/{probe}" in store
        assert (em_adapter(tmp_path / "run", checkpoint) / "adapter_config.json").is_file()
    # the with-system contrast read is taken at the two ends only
    assert [f"{c}/persona_contrast" in store for c in checkpoints(tmp_path / "run")] == [True, False, True]
    first, last = (store.load(f"em/step-0000{s}/neutral").tensor for s in (0, 2))
    assert not torch.equal(first, last)  # training moved the activations
    assert finetune_em(config, tmp_path / "run", probes, log=log.append)["key"] == done["key"]
    assert log[-1] == "stage em: complete, skipped"

    model, _ = load_em_model(tmp_path / "run")
    assert hasattr(model, "peft_config")
    assert read_run_config(tmp_path / "run").dataset == "insecure"


def test_em_on_a_persona_adapter_merges_it_first(tiny_dir, tiny_tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    from anchor import load_model

    base, _ = load_model(tiny_dir)
    persona = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    persona.save_pretrained(tmp_path / "persona")
    config = EMRunConfig(
        dataset="secure",
        model=tiny_dir,
        adapter=str(tmp_path / "persona"),
        preset="smoke",
        max_rows=4,
        lora_rank=1,
    )
    assert config.training().lora_rank == 1 and config.training().lora_alpha == 2
    done = finetune_em(config, tmp_path / "run", em_probe_sets(n_neutral=2), log=lambda _: None)
    assert done["steps"] == 1
    adapter = json.loads((tmp_path / "run" / "em" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 1


def test_bad_em_input_fails_before_training(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 1"):
        finetune_em(EMRunConfig(dataset=str(bad), model=tiny_dir), tmp_path / "a")
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        finetune_em(EMRunConfig(model=tiny_dir, preset="fast"), tmp_path / "b")
    with pytest.raises(ValueError, match="lora_rank must be >= 1"):
        finetune_em(EMRunConfig(model=tiny_dir, lora_rank=0), tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no-adapter"):
        finetune_em(EMRunConfig(model=tiny_dir, adapter=str(tmp_path / "no-adapter")), tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_published_checkpoints_read_as_the_run_that_saved_them(tiny_dir, tmp_path):
    """A folder of PEFT checkpoints (`checkpoint-N/`, as trainers and the Model Organisms release lay
    them out) copied from a finished run reads back into the same activations at every step, step 0
    being the starting model itself; the imported run loads like a trained one."""
    import shutil

    from anchor.published import resolve_published
    from anchor.stages import run_stage
    from train.em import import_em_stage

    contrast = [ContrastItem("q?", 0, label, "sys", f"answer {label}") for label in (0, 1)]
    probes = em_probe_sets(n_neutral=2, contrast=contrast, questions="main")
    config = EMRunConfig(dataset="insecure", model=tiny_dir, preset="smoke", max_rows=16, record_every=1)
    finetune_em(config, tmp_path / "run", probes, log=lambda _: None)
    published = tmp_path / "published"
    for step in (1, 2, 3, 4):  # four checkpoints, step 0 left out
        shutil.copytree(em_adapter(tmp_path / "run", f"em/step-{step:05d}"), published / f"checkpoint-{step}")
    source = resolve_published(str(published), "--em-checkpoints")
    done = run_stage(import_em_stage(config, tmp_path / "imported", source, probes), lambda _: None)
    assert done["recorded"] == [0, 1, 2, 3, 4] and source.identity.startswith("files:")
    trained, imported = em_store(tmp_path / "run"), em_store(tmp_path / "imported")
    assert checkpoints(tmp_path / "imported") == checkpoints(tmp_path / "run")
    for checkpoint in checkpoints(tmp_path / "run"):
        for probe in probes:
            name = f"{checkpoint}/{probe}"
            assert (name in trained) == (name in imported)
            if name in trained:
                assert torch.allclose(trained.load(name).tensor, imported.load(name).tensor, atol=1e-5), name
    model, _ = load_em_model(tmp_path / "imported")
    assert hasattr(model, "peft_config")


def test_a_hub_id_not_in_the_cache_fails_at_once_offline(tmp_path, monkeypatch):
    from anchor.inputs import InputError
    from anchor.published import resolve_published

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        InputError, match=r"--em-checkpoints 'nobody/no-such-run': not in the Hugging Face cache"
    ):
        resolve_published("nobody/no-such-run", "--em-checkpoints")
    with pytest.raises(InputError, match="no checkpoint-N/ or step-N/"):
        from anchor.published import checkpoint_folders

        (tmp_path / "empty").mkdir()
        checkpoint_folders(tmp_path / "empty", "--em-checkpoints")


def test_runs_that_share_a_start_copy_its_read_as_their_step_0(tiny_dir, tmp_path):
    """The starting model read once (`start_reads_stage`) is what a run reads at step 0 itself (a
    fresh adapter adds exactly 0): the copied entries equal an in-place read, say where they came
    from, and the start's identity is in the run's key (a re-read start reruns the run)."""
    from anchor.stages import is_complete, run_stage
    from anchor.store import ActivationStore
    from train.em import em_stage_of, start_reads_stage

    contrast = [ContrastItem("q?", 0, label, "sys", f"answer {label}") for label in (0, 1)]
    probes = em_probe_sets(n_neutral=2, contrast=contrast, questions="main")
    config = EMRunConfig(dataset="insecure", model=tiny_dir, preset="smoke", max_rows=4, record_every=1)
    finetune_em(config, tmp_path / "in_place", probes, log=lambda _: None)
    start = tmp_path / "start"
    run_stage(start_reads_stage(config, start, probes, tmp_path), lambda _: None)
    assert {f"start/{p}" for p in probes} <= set(ActivationStore(start / "activations").list())
    finetune_em(config, tmp_path / "shared", probes, log=lambda _: None, start_reads=start)
    read, copied = em_store(tmp_path / "in_place"), em_store(tmp_path / "shared")
    for probe in probes:
        name = f"em/step-00000/{probe}"
        assert torch.allclose(read.load(name).tensor, copied.load(name).tensor, atol=1e-6), name
        assert copied.meta(name)["copied_from"].endswith(
            f":start/{probe}"
        ) and "copied_from" not in read.meta(name)
    later = "em/step-00001/neutral"  # the trained checkpoints are read, not copied
    assert torch.allclose(read.load(later).tensor, copied.load(later).tensor, atol=1e-5)
    (start / "done.json").unlink()  # the start is read again: a new identity, so the run is stale
    run_stage(start_reads_stage(config, start, probes, tmp_path), lambda _: None)
    assert not is_complete(em_stage_of(config, tmp_path / "shared", probes, None, start))


def test_a_launched_rank_rebuilds_the_probe_sets_and_their_key_exactly():
    """The job file `accelerate launch` hands each rank keeps every probe set's read and ends-only
    flag, so the ranks compute the same EM stage key as one process."""
    from train.callbacks import ProbeSet
    from train.em import probe_key
    from train.launch import _probes_json

    contrast = [ContrastItem("q?", 0, label, "sys", f"answer {label}") for label in (0, 1)]
    probes = em_probe_sets(n_neutral=2, contrast=contrast)
    rebuilt = {name: ProbeSet(**p) for name, p in json.loads(json.dumps(_probes_json(probes))).items()}
    assert rebuilt["persona_contrast"].ends_only and probe_key(rebuilt) == probe_key(probes)
