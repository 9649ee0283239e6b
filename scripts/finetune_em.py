"""`python scripts/finetune_em.py --help`: the command is `train.cli.finetune_em` (also installed as `anchor-finetune-em`)."""

from train.cli.finetune_em import main

if __name__ == "__main__":
    main()
