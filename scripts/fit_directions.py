"""`python scripts/fit_directions.py --help`: the command is `probes.cli.fit_directions` (also installed as `anchor-fit-directions`)."""

from probes.cli.fit_directions import main

if __name__ == "__main__":
    main()
