"""One trial (``objective.TrialRunner``: build, judge, measure, store; ``measuring``: the yardstick it is
measured against) and the policies that decide how much compute a trial gets: ``feasibility`` (before
training), ``early_stopping`` and ``halving`` (during it), ``screening`` (before lowering) and
``portfolio`` (what runs first, and promotions)."""

from udacisense.search.trial.measuring import Candidate, Yardstick
from udacisense.search.trial.objective import TrialRunner, trial_seed
from udacisense.search.trial.screening import Estimate, ScreeningRule

__all__ = ["Candidate", "Estimate", "ScreeningRule", "TrialRunner", "Yardstick", "trial_seed"]
