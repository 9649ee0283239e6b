"""`python scripts/bench_generate.py --help`: the command is `anchor.cli.bench_generate` (also installed as `anchor-bench-generate`)."""

from anchor.cli.bench_generate import main

if __name__ == "__main__":
    main()
