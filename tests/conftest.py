"""Fixtures for every test: where started processes keep their files, and the ports they were given;
how the suite is spread over pytest-xdist's worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests import helpers

# Directories whose tests share an expensive package- or session-scoped fixture that must exist
# once per run, not once per xdist worker: tests/swarm's private dockerd in swarm mode (a second
# one would also pick its bridge subnets at random from the same 100), tests/image's image build
# and 3-manager lab (a second worker would wait for the first one's docker lock, then build again).
# Each runs whole in one worker, in file order; every other test is sent alone to the next free
# worker. (Not the `xdist_group` mark and `--dist loadgroup`: pytest-xdist 3.8 tags the node id in
# a way pytest 9.2 ignores, so the groups were split.)
XDIST_GROUPS = ("swarm", "image")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "load":  # another --dist asked for on the command line: that one
        return None
    from xdist.scheduler import LoadScopeScheduling

    class DirectoryGroups(LoadScopeScheduling):  # type: ignore[misc]
        """LoadScopeScheduling's work units are its scopes: a group directory, or a single test.
        The largest units are sent first (its default), so the two groups start at once."""

        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("/", 2)
            return parts[1] if len(parts) == 3 and parts[0] == "tests" and parts[1] in XDIST_GROUPS else nodeid

    return DirectoryGroups(config, log)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: twice the CPUs. Most tests wait on real processes, sockets and timers rather
    than compute, so two workers per core finish sooner than one (measured: see .ci/run)."""
    return 2 * (len(os.sched_getaffinity(0)) or 1)


@pytest.fixture(autouse=True, scope="session")
def _process_dirs_under_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """edgeproxy's config and log of each test go under pytest's own temporary directory (pruned by
    pytest, last 3 runs kept) instead of one /tmp/edgeproxy-test-* per proxy, left forever."""
    helpers._test_dirs = lambda: tmp_path_factory.mktemp("edgeproxy")
    yield
    helpers._test_dirs = None


@pytest.fixture(autouse=True)
def _release_ports() -> Iterator[None]:
    yield
    helpers.release_ports()


@pytest.fixture(autouse=True)
def _own_log_state() -> Iterator[None]:
    """Every test starts with edgeproxy.log as the first one did: the process-global logger
    keeps a buffer, a flush timer and its settings, and a test that ran a proxy in this process
    (a reload to a log file, a level, a format) or swapped its streams would otherwise leave them
    to whichever test this xdist worker runs next (a buffered access line once landed in the next
    test's capture: CI of stop 19). What it buffered is written where it was meant to go, a
    file it opened is closed, its timer (of a loop that may be gone) cancelled."""
    from edgeproxy.log import Logger, _close, log

    settings = ("level", "fmt", "events", "access", "_access_target", "worker")
    # every attribute of the logger is either one of those or what the lines below reset
    assert set(vars(Logger())) == {*settings, "_buffer", "_size", "_timer"}
    saved = {name: getattr(log, name) for name in settings}
    yield
    log.flush()  # also cancels the timer
    log._buffer.clear()  # (kept by flush() when the test left no access stream)
    log._size = 0
    if log.access is not saved["access"]:
        _close(log.access)
    for name, value in saved.items():
        setattr(log, name, value)
