"""Fixtures for every test: where started processes keep their files, and the ports they were given."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import helpers


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
