"""The distributed training path on CPU: two gloo ranks under `accelerate launch` against one
process, on the tiny model."""

import json

import pytest

from anchor.runs import em_store
from anchor.stages import run_stage
from train.distributed import split_batch
from train.em import EMRunConfig, em_probe_sets, finetune_em, start_reads_stage
from train.launch import accelerate_command, launch


def _listing(run):
    store = em_store(run)
    adapters = sorted(p.name for p in (run / "em" / "checkpoints").iterdir())
    return sorted(store.list()), adapters


def test_two_processes_match_one(tiny_dir, tmp_path):
    probes = em_probe_sets(n_neutral=2, questions="main")
    config = EMRunConfig(dataset="insecure", model=tiny_dir, preset="smoke", max_rows=8, record_every=1)
    start = tmp_path / "start"  # the starting model read once; both runs copy it as step 0
    run_stage(start_reads_stage(config, start, probes, tmp_path), lambda _: None)
    single = finetune_em(config, tmp_path / "single", probes, log=lambda _: None, start_reads=start)

    launch("em", config, tmp_path / "ddp", 2, probes, log=lambda _: None, start_reads=start)
    run = tmp_path / "ddp"
    done = json.loads((run / "em" / "done.json").read_text())
    assert done["world_size"] == 2  # a lone process fails here
    assert done["key"] == single["key"]  # the same stage, however many processes ran it
    assert done["steps"] == single["steps"] == 2 and done["recorded"] == single["recorded"] == [0, 1, 2]
    assert _listing(run) == _listing(tmp_path / "single")
    store = em_store(run)
    writers = {store.meta(entry)["rank"] for entry in store.list()}
    assert writers == {0}  # rank 0 alone wrote the activation store
    assert store.meta("em/step-00000/neutral")["copied_from"] == f"{start / 'activations'}:start/neutral"
    assert not list(tmp_path.glob(".*job.json"))  # the job file is removed after success
    # Resume under accelerate: a finished stage is skipped by every rank.
    launch("em", config, run, num_processes=2, probe_sets=probes, log=lambda _: None, start_reads=start)
    assert json.loads((run / "em" / "done.json").read_text())["seconds"] == done["seconds"]


def test_split_batch_keeps_the_global_batch():
    assert split_batch(16, 2, 1) == (2, 8)
    assert split_batch(16, 2, 4) == (2, 2)
    assert split_batch(4, 4, 2) == (2, 1)  # smoke: batch 4 over 2 ranks
    assert split_batch(12, 4, 3) == (4, 1)
    for effective, per_device, processes in [(16, 2, 8), (32, 4, 2), (6, 4, 2)]:
        b, accumulation = split_batch(effective, per_device, processes)
        assert b * accumulation * processes == effective and b <= per_device
    with pytest.raises(ValueError, match="cannot be split over 3 processes"):
        split_batch(16, 2, 3)


def test_accelerate_command_starts_several_ranks_without_gpus(tmp_path):
    command = accelerate_command(2)
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    assert "--multi_gpu" not in accelerate_command(1) and "--cpu" not in command
    port = int(command[command.index("--main_process_port") + 1])
    assert 0 < port < 65536 and port != 29500  # its own port, so two launches at once do not collide
    zero3 = accelerate_command(8, "train/accelerate/zero3.yaml")
    assert zero3[zero3.index("--config_file") + 1].endswith("zero3.yaml") and "--main_process_port" in zero3
    own = tmp_path / "two_machines.yaml"  # a config that names its rendezvous port keeps it
    own.write_text("num_machines: 2\nmain_process_ip: 10.0.0.1\nmain_process_port: 6000\n")
    assert "--main_process_port" not in accelerate_command(16, own)
    with pytest.raises(ValueError, match="num_processes"):
        accelerate_command(0)
