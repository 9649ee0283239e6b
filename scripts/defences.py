"""`python scripts/defences.py --help`: the command is `analysis.experiments.cli.defences` (also installed as `anchor-defences`)."""

from analysis.experiments.cli.defences import main

if __name__ == "__main__":
    main()
