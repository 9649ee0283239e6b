"""`python scripts/eval_em.py --help`: the command is `analysis.cli.eval_em` (also installed as `anchor-eval-em`)."""

from analysis.cli.eval_em import main

if __name__ == "__main__":
    main()
