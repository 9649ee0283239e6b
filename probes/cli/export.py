"""Export a finished track_drift.py run's directions for other tools: the persona and misalignment
directions (and the assistant axis when the run read one), each as a Persona Vectors `.pt`
([n_layers + 1, d_model], row 0 the embeddings), a safetensors file keyed by TransformerLens hook
names, a llama.cpp control vector (`.gguf`, for `llama-cli --control-vector`) and a card
(`<name>.card.json`: model, layers, rows with data, how it was read, the run's config, norms).
The run's activation stores go out as parquet, one file per entry, under `activations/`.

    python scripts/export.py --run runs/sycophancy-default-insecure-s0
    python scripts/export.py --run RUN --out vectors/ --no-activations
    python scripts/export.py --run RUN --persona-method pca --n-layers 28 --model-hint qwen2

The model's depth and architecture come from its config (no weights load); pass --n-layers and
--model-hint where it cannot be read (offline, hub model not cached). Outputs (default <run>/export/)
are written atomically, so a rerun replaces them whole.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from anchor.inputs import InputError, check_output_dir
from anchor.runlock import RunLocked, run_lock
from probes.directions import METHODS
from probes.export import (
    activation_bytes,
    check_layers,
    export_run,
    model_facts,
    read_run_config,
    run_directions,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a finished track_drift.py run directory")
    parser.add_argument("--out", help="output folder (default: <run>/export)")
    parser.add_argument(
        "--no-activations",
        action="store_true",
        help="skip the activation stores (by default every finished stage's store is written as parquet; "
        "as large as the stores themselves, which the command prints before writing)",
    )
    parser.add_argument(
        "--persona-method",
        choices=METHODS,
        default="diff_in_means",
        help="which persona direction to export (default: diff_in_means, the unnormalised persona vector)",
    )
    parser.add_argument(
        "--n-layers",
        type=int,
        help="the model's number of blocks (default: read from the run model's config)",
    )
    parser.add_argument(
        "--model-hint",
        help="the GGUF's controlvector.model_hint (default: the run model's architecture, e.g. llama, qwen2)",
    )
    return parser


def resolve_model(config: dict, n_layers: int | None, model_hint: str | None) -> tuple[int, str]:
    """The depth and hint, from the flags or else the run model's config."""
    if n_layers is not None and model_hint is not None:
        return n_layers, model_hint
    model = config["model"]
    try:
        depth, architecture = model_facts(model)
    except Exception as err:  # a hub name offline, a model folder since moved, ...
        raise InputError(
            f"cannot read the config of the run's model {model!r} ({err}); pass --n-layers and --model-hint"
        ) from None
    return (depth if n_layers is None else n_layers), (architecture if model_hint is None else model_hint)


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "export"
    try:  # every input, before anything is written
        config = read_run_config(run)
        directions = run_directions(run, args.persona_method)
        check_output_dir(out)
        n_layers, model_hint = resolve_model(config, args.n_layers, args.model_hint)
        for direction in directions:
            check_layers(direction, n_layers)
    except InputError as err:
        parser.error(str(err))
    if not args.no_activations:
        size = activation_bytes(run)
        print(f"activations: {size / 2**30:.2f} GiB of float32 to write (--no-activations skips them)")
    start = time.perf_counter()
    try:
        with run_lock(run):
            written = export_run(
                run,
                out,
                n_layers,
                model_hint,
                activations=not args.no_activations,
                persona_method=args.persona_method,
            )
    except (RunLocked, InputError) as err:  # another process writing the run; a file changed meanwhile
        parser.error(str(err))
    print(f"model: {config['model']} ({model_hint}, {n_layers} layers)")
    for name, paths in written.items():
        if name == "activations":
            print(f"activations: {paths.parent}/ (index: {paths})")
            continue
        print(f"{name}:")
        for kind, path in paths.items():
            print(f"  {kind:<12} {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return written


if __name__ == "__main__":
    main()
