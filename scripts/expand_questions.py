"""`python scripts/expand_questions.py --help`: the command is `anchor.cli.expand_questions` (also installed as `anchor-expand-questions`)."""

from anchor.cli.expand_questions import main

if __name__ == "__main__":
    main()
