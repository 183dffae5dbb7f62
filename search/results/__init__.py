"""What is read from a study's trials: the Pareto front and its picks (``front``), the hypervolume, and the
exported artifact with its model card and ``verify`` (``export``)."""

from udacisense.search.results.export import export_trial, verify_artifact
from udacisense.search.results.front import front_tables, front_trials, pareto_trials, pick
from udacisense.search.results.hypervolume import hypervolume

__all__ = ["export_trial", "front_tables", "front_trials", "hypervolume", "pareto_trials", "pick", "verify_artifact"]
