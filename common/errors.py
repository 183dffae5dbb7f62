"""Errors that reach the user as one clear paragraph instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: says what is wrong and how to fix it.

    The CLI prints ``str(error)`` and exits non-zero; no traceback is shown.
    """

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}\n  fix: {fix}")
        self.problem = problem
        self.fix = fix


class IncompatiblePipelineError(UserError):
    """A pipeline whose stage order cannot work; raised before any compute is spent."""
