"""`python scripts/bench_lanes.py --help`: the command is `train.cli.bench_lanes` (also installed as `anchor-bench-lanes`)."""

from train.cli.bench_lanes import main

if __name__ == "__main__":
    main()
