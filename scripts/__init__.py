"""Command-line tools, run from the repository root as `python -m scripts.NAME --help`; shared code is in lib/."""
