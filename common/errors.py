"""Errors that reach the user as one clear paragraph instead of a traceback."""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user can fix: says what is wrong and how to fix it.

    The CLI prints ``str(error)`` and exits non-zero; no traceback is shown.
    """

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}\n  fix: {fix}")
        self.problem = problem
        self.fix = fix

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Worker processes (joblib) send their errors back pickled: rebuild from both parts.
        return type(self), (self.problem, self.fix)


class IncompatiblePipelineError(UserError):
    """A pipeline whose stage order cannot work; raised before any compute is spent."""


def os_problem(error: BaseException) -> UserError | None:
    """The problem and fix for an OS error that a user meets and fixes (a full disk, no permission); None otherwise."""
    if not isinstance(error, OSError):
        return None
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"The disk is full: could not write {error.filename or 'a file'}.",
                         "free some space, or set `runs_dir` in the study file (or `--out`) to a disk with room, "
                         "then run the same command again (finished trials are kept).")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and error.filename:
        return UserError(f"No permission to write {error.filename} ({error.strerror}).",
                         "make it writable by you, or set `runs_dir` in the study file (or `--out`) to a folder you can write.")
    return None


# Optuna's refusal of a parameter whose choices or kind differ from those its stored trials have.
_CHANGED_DISTRIBUTION = ("does not support dynamic value space", "Cannot set different distribution kind")


def changed_space_problem(error: BaseException) -> UserError | None:
    """The study file's ``[space]`` changed under a study that did not record its settings (made before they were)."""
    if not (isinstance(error, ValueError) and any(text in str(error) for text in _CHANGED_DISTRIBUTION)):
        return None
    return UserError(f"The study file's `[space]` gives a parameter other choices than the study's stored trials "
                     f"were sampled with (Optuna: {error}).",
                     "give the changed study a new `name` in its TOML file to start a new study, or restore the "
                     "previous `[space]` to continue this one.")


def trial_problem(error: BaseException) -> UserError | None:
    """A trial failure that the user must fix and that would fail every further trial alike; None otherwise."""
    return os_problem(error) or changed_space_problem(error)
