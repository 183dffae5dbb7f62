"""Optuna wiring: study files, trials, early stopping, Pareto front, export, dashboard and the CLI."""
