"""The processes that run a study's trials: ``runner`` (the search loop, its workers, requeues and the summary),
``probes`` (one program per structural option, lowered and timed before any training) and ``probe_decisions``
(the options dropped, the students ranked, the starting trials), ``students`` (distilled on demand, the most
promising first) and ``false_stops`` (stopped trials replayed to the end)."""

from udacisense.search.workers.false_stops import measure_false_stops
from udacisense.search.workers.runner import run_search, run_worker, search_summary

__all__ = ["measure_false_stops", "run_search", "run_worker", "search_summary"]
