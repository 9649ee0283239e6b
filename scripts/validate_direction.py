"""`python scripts/validate_direction.py --help`: the command is `analysis.experiments.cli.validate_direction` (also installed as `anchor-validate-direction`)."""

from analysis.experiments.cli.validate_direction import main

if __name__ == "__main__":
    main()
