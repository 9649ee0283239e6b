"""`python scripts/export.py --help`: the command is `probes.cli.export` (also installed as `anchor-export`)."""

from probes.cli.export import main

if __name__ == "__main__":
    main()
