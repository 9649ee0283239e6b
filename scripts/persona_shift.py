"""`python scripts/persona_shift.py --help`: the command is `analysis.cli.persona_shift` (also installed as `anchor-persona-shift`)."""

from analysis.cli.persona_shift import main

if __name__ == "__main__":
    main()
