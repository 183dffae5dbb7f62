"""Optuna wiring, in four rooms that only point down, and the CLI on top:

- ``study``: what a study is and what it stores (study file, storage, records, workspace, budget);
- ``trial``: one trial and the policies that decide its compute (feasibility, early stopping, halving,
  screening, portfolio);
- ``workers``: the processes that run trials (probes, the search loop, students on demand, requeues, replays);
- ``results``: what is read from a finished study (front and picks, hypervolume, export and verify);
- ``report``: the technical report, from stored measurements only.
"""
