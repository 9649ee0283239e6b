"""`python scripts/bench_extract_gpu.py --help`: the command is `anchor.cli.bench_extract_gpu` (also installed as `anchor-bench-extract-gpu`)."""

from anchor.cli.bench_extract_gpu import main

if __name__ == "__main__":
    main()
