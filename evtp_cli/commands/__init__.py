"""Typer command modules. Each imports `app` from evtp_cli.cli and registers its commands on it."""
