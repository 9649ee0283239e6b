"""`python scripts/steer.py --help`: the command is `analysis.experiments.cli.steer` (also installed as `anchor-steer`)."""

from analysis.experiments.cli.steer import main

if __name__ == "__main__":
    main()
