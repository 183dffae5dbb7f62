"""Tasks on forked children: results in order from state the children inherit, a task's error raised here with its
traceback, a child that dies reported instead of waited for; a task beside the caller that trains, even after the caller has."""

from __future__ import annotations

import os
import signal
from functools import partial

import pytest
import torch

from udacisense.common.forked import Beside, ForkedTaskError, map_forked
from udacisense.common.threads import torch_threads


def _norm_and_pid(weights: torch.Tensor, row: int) -> tuple[float, int]:
    return float(weights[row].norm()), os.getpid()


def test_children_compute_from_inherited_tensors_and_return_in_task_order() -> None:
    weights = torch.randn(9, 64, generator=torch.Generator().manual_seed(0))  # never pickled: inherited by fork
    results = map_forked([partial(_norm_and_pid, weights, row) for row in range(9)], processes=2)
    assert [norm for norm, _ in results] == pytest.approx([float(r.norm()) for r in weights])
    assert os.getpid() not in {pid for _, pid in results}  # computed in the children, not here


def _pid_and_threads() -> tuple[int, int]:
    return os.getpid(), torch.get_num_threads()


def test_one_process_runs_the_tasks_here_on_one_thread_and_children_on_one_each() -> None:
    # One process: the caller may use one core, so its tasks get one thread, whatever the caller had.
    with torch_threads(2):
        here = map_forked([_pid_and_threads] * 3, processes=1)
        assert torch.get_num_threads() == 2
    assert here == [(os.getpid(), 1)] * 3
    assert {threads for _, threads in map_forked([_pid_and_threads] * 2, processes=2)} == {1}


def _warmed(cache: dict[str, int]) -> tuple[int, int]:
    return cache.get("warmed", 0), os.getpid()


def test_before_fork_runs_once_here_and_its_state_reaches_every_child_only_when_children_fork() -> None:
    cache: dict[str, int] = {}

    def warm() -> None:  # as warming a lowering cache does: state left in this process's memory
        cache["warmed"] = cache.get("warmed", 0) + 1

    forked = map_forked([partial(_warmed, cache)] * 4, processes=2, before_fork=warm)
    assert cache == {"warmed": 1} and {warmed for warmed, _ in forked} == {1}
    assert os.getpid() not in {pid for _, pid in forked}
    cache.clear()
    # Tasks run here warm whatever they need themselves (their first lowering): nothing runs before them.
    assert map_forked([partial(_warmed, cache)] * 2, processes=1, before_fork=warm) == [(0, os.getpid())] * 2
    assert map_forked([partial(_warmed, cache)], processes=2, before_fork=warm) == [(0, os.getpid())]
    assert not cache


def _fails_on(bad: int, index: int) -> int:
    if index == bad:
        raise ValueError(f"task {index} cannot be lowered")
    return index


def test_a_task_error_is_raised_with_the_childs_traceback() -> None:
    with pytest.raises(ForkedTaskError, match=r"(?s)1 of 4 task\(s\) failed.*ValueError: task 2 cannot be lowered"):
        map_forked([partial(_fails_on, 2, i) for i in range(4)], processes=2)


def _dies(index: int) -> int:
    if index == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return index


def test_a_child_killed_mid_task_is_reported_not_waited_for() -> None:
    with pytest.raises(ForkedTaskError, match="got no result"):
        map_forked([partial(_dies, i) for i in range(3)], processes=2)


def _trained_loss(seed: int) -> float:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    inputs = torch.randn(32, 4, generator=torch.Generator().manual_seed(seed))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        optimiser.zero_grad()
        loss = (model(inputs) - inputs.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        optimiser.step()
    return float(loss.detach())


def test_a_process_that_has_trained_runs_a_training_task_beside_its_work() -> None:
    here = _trained_loss(0)  # autograd has run here: a forked child's first backward pass would raise
    beside = Beside(partial(_trained_loss, 0))
    assert beside.result() == pytest.approx(here)


def test_a_task_error_beside_is_raised_here_and_said_there(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ForkedTaskError, match="ValueError: task 2 cannot be lowered"):
        Beside(partial(_fails_on, 2, 2)).result()
    # Said by the child too, for a caller that stopped waiting for the result.
    assert "ValueError: task 2 cannot be lowered" in capfd.readouterr().err
