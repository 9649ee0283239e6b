"""`python scripts/train_judge.py --help`: the command is `analysis.cli.train_judge` (also installed as `anchor-train-judge`)."""

from analysis.cli.train_judge import main

if __name__ == "__main__":
    main()
