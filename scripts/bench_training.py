"""`python scripts/bench_training.py --help`: the command is `train.cli.bench_training` (also installed as `anchor-bench-training`)."""

from train.cli.bench_training import main

if __name__ == "__main__":
    main()
