"""`python scripts/diversity_sweep.py --help`: the command is `analysis.experiments.cli.diversity_sweep` (also installed as `anchor-diversity-sweep`)."""

from analysis.experiments.cli.diversity_sweep import main

if __name__ == "__main__":
    main()
