"""Subcommands of `corea` (see corea_engine/cli.py)."""
