"""The processes that run a study's trials: ``runner`` (the search loop, its workers, students on demand,
requeues and the summary) and ``false_stops`` (stopped trials replayed to the end)."""

from udacisense.search.workers.false_stops import measure_false_stops
from udacisense.search.workers.runner import run_search, run_worker, search_summary

__all__ = ["measure_false_stops", "run_search", "run_worker", "search_summary"]
