"""Evaluation loop, sweeps, result files and tables, regression compare, plots."""
