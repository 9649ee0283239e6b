"""`python scripts/track_drift.py --help`: the command is `analysis.experiments.cli.track_drift` (also installed as `anchor-track-drift`)."""

from analysis.experiments.cli.track_drift import main

if __name__ == "__main__":
    main()
