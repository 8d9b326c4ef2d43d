"""Dataset commands (exporting synthetic data in the public layouts arrives with the dataset readers)."""

from __future__ import annotations

from evtp_cli.cli import app  # noqa: F401
