"""Quieting third-party noise: only the lines named are dropped, everything else still reaches stderr."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

from udacisense.common.logs import native_stderr_without, quiet_libraries


def test_native_stderr_drops_only_the_matching_lines(capfd) -> None:
    with native_stderr_without(re.compile(r"^\[cpuinfo_utils\.cpp:\d+\] ")):
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\n")
        os.write(2, b"E 00:00:00.000 method.cpp:100] Missing operator: aten::foo\n")
    assert capfd.readouterr().err == "E 00:00:00.000 method.cpp:100] Missing operator: aten::foo\n"


def test_the_pytree_enum_notice_is_dropped_and_other_pytree_warnings_kept(caplog) -> None:
    quiet_libraries()
    quiet_libraries()  # idempotent: one filter however often a process calls it
    pytree = logging.getLogger("torch.utils._pytree")
    assert len(pytree.filters) == 1
    with caplog.at_level(logging.WARNING, logger="torch.utils._pytree"):
        pytree.warning("%s is an Enum subclass and is now natively supported by torch.compile", "<enum 'KernelPreference'>")
        pytree.warning("something else about pytrees")
    assert [r.getMessage() for r in caplog.records] == ["something else about pytrees"]


def test_loading_a_pte_on_a_resized_pool_prints_nothing_about_the_machine(tmp_path) -> None:
    # A fresh process: the pool is resized before its first program, where ExecuTorch logs the machine.
    script = tmp_path / "load.py"
    script.write_text(
        "import torch\n"
        "from udacisense.runtime import executorch_bytes, load_runner, request_executorch_threads\n"
        "request_executorch_threads(1)\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten()).eval()\n"
        "run = load_runner(executorch_bytes(model, torch.zeros(1, 3, 8, 8)), 'executorch')\n"
        "print(tuple(run(torch.zeros(2, 3, 8, 8)).shape))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 288)"
    assert "[cpuinfo_utils.cpp" not in done.stderr and "[threadpool.cpp" not in done.stderr, done.stderr
