"""`python scripts/bench_extract.py --help`: the command is `anchor.cli.bench_extract` (also installed as `anchor-bench-extract`)."""

from anchor.cli.bench_extract import main

if __name__ == "__main__":
    main()
