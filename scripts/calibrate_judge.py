"""`python scripts/calibrate_judge.py --help`: the command is `analysis.cli.calibrate_judge` (also installed as `anchor-calibrate-judge`)."""

from analysis.cli.calibrate_judge import main

if __name__ == "__main__":
    main()
