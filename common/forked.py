"""Zero-argument tasks run in other processes: forked ones, one per core, that inherit the caller's memory (trained
models, data) instead of receiving it pickled, so that only the tasks' results travel back; and one spawned task
beside the caller's work, for training, which a forked child of a process that has trained cannot do."""

from __future__ import annotations

import ctypes
import multiprocessing
import queue
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch

from udacisense.common.threads import torch_threads

T = TypeVar("T")

# How often the parent checks that its children are still alive while it waits for their results.
POLL_SECONDS = 1.0


class ForkedTaskError(RuntimeError):
    """A task raised in its child process (the child's traceback is the message), or a child died."""


def map_forked(tasks: Sequence[Callable[[], T]], processes: int, before_fork: Callable[[], None] | None = None) -> list[T]:
    """Run ``tasks`` on ``processes`` forked children, each taking the next task when it finishes one; the results
    in the tasks' order. With one process or one task they run here, in order. ``before_fork`` runs here first when
    children are forked: what it leaves in memory (a warmed cache) every child inherits instead of building its own.

    Children train and run nothing in parallel themselves (one torch thread each): ``processes`` is meant to be
    the cores the caller may use, and tasks run here use no more threads than that (a search's opening trials, run
    here on 2 cores beside a distillation on one, took 1.1-1.3 cores with torch's default of 2 threads). A child's
    exception is raised here with its traceback, after every child ends.
    """
    if processes <= 1 or len(tasks) <= 1:
        with torch_threads(min(torch.get_num_threads(), max(1, processes))):
            return [task() for task in tasks]
    if before_fork is not None:
        before_fork()
    context = multiprocessing.get_context("fork")
    next_task = context.Value("i", 0)
    results: multiprocessing.Queue = context.Queue()

    def work() -> None:
        _as_child()
        while True:
            with next_task.get_lock():
                index = next_task.value
                next_task.value += 1
            if index >= len(tasks):
                return
            _put_result(results, index, tasks[index])

    children = [context.Process(target=work, daemon=True) for _ in range(min(processes, len(tasks)))]
    for child in children:
        child.start()
    return _gather(results, children, len(tasks))


class Beside(Generic[T]):
    """One task running in a fresh process while the caller goes on with its own work; ``result()`` waits for it.

    Spawned, not forked: a process whose autograd engine has run (it trained a baseline) forks children that raise
    on their first backward pass, so a task that trains cannot inherit the caller's memory; it travels pickled (a
    module-level function and its arguments) and rebuilds what it needs. The child trains on one torch thread and
    dies with the caller: a search killed while its child distils leaves no orphan finishing the work behind it.
    Synchronisation objects for the task come from ``SPAWNED``.
    """

    def __init__(self, task: Callable[[], T]) -> None:
        self._results: multiprocessing.Queue = SPAWNED.Queue()
        self._child = SPAWNED.Process(target=_run_beside, args=(task, self._results), daemon=True)
        self._child.start()

    def result(self) -> T:
        """The task's result, once it has one; raises ``ForkedTaskError`` when the task raised or its child died."""
        return _gather(self._results, [self._child], 1)[0]


SPAWNED = multiprocessing.get_context("spawn")


def _run_beside(task: Callable[[], T], results: multiprocessing.Queue) -> None:
    _as_child()
    failure = _put_result(results, 0, task)
    if failure is not None:  # said here too: the caller may have stopped waiting for the result
        print(f"A task beside the caller failed:\n{failure}", file=sys.stderr, flush=True)


def _as_child() -> None:
    torch.set_num_threads(1)
    if sys.platform == "linux":  # ask the kernel to end this child with its parent, however the parent ends
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _put_result(results: multiprocessing.Queue, index: int, task: Callable[[], T]) -> str | None:
    """Put the task's result, or its traceback, which is also returned."""
    try:
        results.put((index, True, task()))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        failure = traceback.format_exc()
        results.put((index, False, failure))
        return failure
    return None


def _gather(results: multiprocessing.Queue, children: Sequence[multiprocessing.process.BaseProcess], count: int) -> list[T]:
    """The ``count`` results ``children`` put in ``results``, in their tasks' order, once every child has ended."""
    done: dict[int, T] = {}
    failures: list[str] = []
    try:
        while len(done) + len(failures) < count:
            try:
                index, ok, value = results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not any(child.is_alive() for child in children):
                    dead = [c.exitcode for c in children if c.exitcode]
                    raise ForkedTaskError(f"{count - len(done) - len(failures)} task(s) got no result: their "
                                          f"process(es) ended with exit code(s) {dead or [0]}") from None
                continue
            if ok:
                done[index] = value
            else:
                failures.append(value)
    finally:
        for child in children:
            child.join(timeout=POLL_SECONDS)
            if child.is_alive():
                child.kill()
                child.join()
    if failures:
        raise ForkedTaskError(f"{len(failures)} of {count} task(s) failed; the first:\n{failures[0]}")
    return [done[index] for index in range(count)]
