"""Quieting third-party noise: only the lines named are dropped, everything else still reaches stderr."""

from __future__ import annotations

import logging
import os
import re

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
