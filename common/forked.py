"""Zero-argument tasks run in forked processes, one per core: each child inherits the caller's memory (trained
models, data) instead of receiving it pickled, and only the tasks' results travel back."""

from __future__ import annotations

import multiprocessing
import queue
import traceback
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")

# How often the parent checks that its children are still alive while it waits for their results.
POLL_SECONDS = 1.0


class ForkedTaskError(RuntimeError):
    """A task raised in its child process (the child's traceback is the message), or a child died."""


def map_forked(tasks: Sequence[Callable[[], T]], processes: int) -> list[T]:
    """Run ``tasks`` on ``processes`` forked children, each taking the next task when it finishes one; the results
    in the tasks' order. With one process or one task they run here, in order.

    Children train and run nothing in parallel themselves (one torch thread each): ``processes`` is meant to be
    the cores the caller may use. A child's exception is raised here with its traceback, after every child ends.
    """
    if processes <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    context = multiprocessing.get_context("fork")
    next_task = context.Value("i", 0)
    results: multiprocessing.Queue = context.Queue()

    def work() -> None:
        torch.set_num_threads(1)
        while True:
            with next_task.get_lock():
                index = next_task.value
                next_task.value += 1
            if index >= len(tasks):
                return
            try:
                results.put((index, True, tasks[index]()))
            except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
                results.put((index, False, traceback.format_exc()))

    children = [context.Process(target=work, daemon=True) for _ in range(min(processes, len(tasks)))]
    for child in children:
        child.start()
    done: dict[int, T] = {}
    failures: list[str] = []
    try:
        while len(done) + len(failures) < len(tasks):
            try:
                index, ok, value = results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not any(child.is_alive() for child in children):
                    dead = [c.exitcode for c in children if c.exitcode]
                    raise ForkedTaskError(f"{len(tasks) - len(done) - len(failures)} task(s) got no result: their "
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
        raise ForkedTaskError(f"{len(failures)} of {len(tasks)} task(s) failed; the first:\n{failures[0]}")
    return [done[index] for index in range(len(tasks))]
