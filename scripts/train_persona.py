"""`python scripts/train_persona.py --help`: the command is `train.cli.train_persona` (also installed as `anchor-train-persona`)."""

from train.cli.train_persona import main

if __name__ == "__main__":
    main()
