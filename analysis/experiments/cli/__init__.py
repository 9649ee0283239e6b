"""Command-line entry points (`scripts/<name>.py` and `[project.scripts]` call their `main`)."""
