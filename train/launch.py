"""Training stages under `accelerate launch`, started from a single-process orchestrator.

track_drift.py generates and evaluates in one process (never holding N ranks at a barrier for
hours of generation) and hands each training stage to N processes: it writes the stage's job (the
run config and the probe sets) to JSON and launches this module under accelerate, so every rank
rebuilds exactly the same inputs and stage keys as a single-process run would.

    python -m train.launch JOB.json        # what each rank runs (see `launch`)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import yaml

from anchor.store import atomic_write_json
from train.callbacks import ProbeSet

ROOT = Path(__file__).resolve().parents[1]
ZERO3_CONFIG = Path(__file__).parent / "accelerate" / "zero3.yaml"


def free_port() -> int:
    """A TCP port free on this machine now, for one launch's rendezvous: two jobs launched at once
    (two runs, or two test workers) would otherwise both claim accelerate's default 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config_keys(config_file: str | os.PathLike) -> set[str]:
    try:
        return set(yaml.safe_load(Path(config_file).read_text()) or {})
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{config_file}: not a readable accelerate config ({err})") from None


def accelerate_command(num_processes: int, config_file: str | os.PathLike | None = None) -> list[str]:
    """`accelerate launch` for `num_processes` ranks on this machine. `--multi_gpu` also starts
    N ranks on a machine without GPUs, where they fall back to gloo (accelerate's `--cpu` would
    start one). A config file (e.g. `ZERO3_CONFIG`) replaces these defaults. The ranks meet on a
    port free at launch, unless the config file names its own (a multi-machine rendezvous)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is None or "main_process_port" not in _config_keys(config_file):
        command += ["--main_process_port", str(free_port())]
    if config_file is not None:
        return [*command, "--config_file", str(config_file), "--num_processes", str(num_processes)]
    command += ["--num_processes", str(num_processes), "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no"]  # the trainer's bf16 flag decides
    return [*command, "--multi_gpu"] if num_processes > 1 else command


def _probes_json(probe_sets: Mapping[str, ProbeSet]) -> dict:
    return {
        name: {
            "conversations": [list(c) for c in p.conversations],
            "read": p.read,
            "layers": None if p.layers is None else list(p.layers),
            "ends_only": p.ends_only,  # part of the EM stage's key: the ranks must rebuild it exactly
        }
        for name, p in probe_sets.items()
    }


def launch(
    kind: str,
    config,
    run_dir: str | os.PathLike,
    num_processes: int,
    probe_sets: Mapping[str, ProbeSet] | None = None,
    stages: Sequence[str] | None = None,
    accelerate_config: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    log=print,
    start_reads: str | os.PathLike | None = None,
) -> None:
    """Run one training job ("em": `finetune_em`, "persona": `train_persona` with `stages`) on
    `num_processes` ranks and wait for it. Its outputs land in `run_dir` as in one process."""
    if kind not in ("em", "persona"):
        raise ValueError(f"kind must be 'em' or 'persona', got {kind!r}")
    run = Path(run_dir)
    job = {
        "kind": kind,
        "config": asdict(config),
        "run_dir": str(run.resolve()),
        "probes": None if probe_sets is None else _probes_json(probe_sets),
        "stages": None if stages is None else list(stages),
        "root": None if root is None else str(Path(root).resolve()),  # the run folder an EM stage belongs to
        "start_reads": None if start_reads is None else str(Path(start_reads).resolve()),
    }
    job_path = run.resolve().parent / f".{run.name}.{kind}-job.json"
    atomic_write_json(job_path, job)
    command = [*accelerate_command(num_processes, accelerate_config), "-m", "train.launch", str(job_path)]
    log(f"launching {kind} training on {num_processes} processes: {' '.join(command)}")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(command, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(
            f"{kind} training under accelerate ({num_processes} processes) exited with status "
            f"{result.returncode}; its output is above. Job file: {job_path}"
        )
    job_path.unlink(missing_ok=True)


def run_job(job_path: str | os.PathLike) -> dict:
    """What each rank does: rebuild the job's inputs and run it."""
    import json

    from train.em import EMRunConfig, finetune_em
    from train.persona import STAGES, PersonaRunConfig, train_persona

    job = json.loads(Path(job_path).read_text())
    probes = None
    if job["probes"] is not None:
        probes = {name: ProbeSet(**p) for name, p in job["probes"].items()}
    if job["kind"] == "em":
        return finetune_em(
            EMRunConfig(**job["config"]),
            job["run_dir"],
            probes,
            root=job.get("root"),
            start_reads=job.get("start_reads"),
        )
    return train_persona(
        PersonaRunConfig(**job["config"]), job["run_dir"], stages=tuple(job["stages"] or STAGES)
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    run_job(args[0])


if __name__ == "__main__":
    main()
