"""The tests' own fixtures (issue 10, defect 12): no directory left in /tmp by each proxy started,
and no race between choosing a port and edgeproxy binding it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import EdgeProxy, free_port


def test_a_proxy_keeps_its_files_under_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    proxy = EdgeProxy(helpers.proxy_config(port, ["127.0.0.1:9"]))
    try:
        assert proxy.dir.is_relative_to(tmp_path_factory.getbasetemp()), proxy.dir
    finally:
        proxy.stop()
    assert "edgeproxy started" in proxy.log()  # still readable after the process exited


def test_outside_pytest_the_directory_is_removed_at_exit() -> None:
    code = "import sys; sys.path.insert(0, '.'); from tests.helpers import test_dir; print(test_dir('edgeproxy-test-'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=helpers.ROOT)
    path = Path(out.stdout.strip())
    assert path.name.startswith("edgeproxy-test-") and not path.exists()


def test_free_ports_are_outside_the_ephemeral_range_and_reserved_until_released() -> None:
    """bind(0)-then-close handed out ports the kernel may give anyone next; these it never does."""
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)} | {free_port("::1"), free_port(kind=socket.SOCK_DGRAM)}
    assert len(ports) == 22 and all(helpers.PORT_FLOOR <= p < ephemeral for p in ports), ports
    for port in ports:
        with socket.socket() as s:  # free: edgeproxy can bind it
            s.bind(("127.0.0.1", port))
        other = socket.socket(socket.AF_UNIX)
        with pytest.raises(OSError):  # another test process's free_port() skips it
            other.bind(f"\0edgeproxy-test-port-{port}")
        other.close()
    helpers.release_ports()
    for port in ports:
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(f"\0edgeproxy-test-port-{port}")
