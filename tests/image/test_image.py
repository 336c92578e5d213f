"""The image as built from the Dockerfile, run with ``docker run --network host`` on a lab node
(its own network namespace, so the container's "host" ports are that node's): a client in another
namespace goes through it on ports 80 and 443, SIGHUP reloads, ``docker stop`` drains, the
HEALTHCHECK answers, and the data plane runs as ``edgeproxy`` with no way to the Docker socket.

Backends run in this test process on the lab bridge (``lab.gateway``) and parse PROXY headers
with the independent ``proxyprotocol`` package (tests/helpers.py).
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import process_probe
from tests.helpers import NO_CHECKS, Backend, HttpBackend, recv_all, whoami_handler
from tests.image.conftest import TAG, BuiltImage
from tests.image.container import NODE, container
from tests.image.netns import connect_from
from tests.swarm.lab import Lab

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(600)]  # the first test waits for build and lab
HTTP_PORT, TCP_PORT = 80, 443  # below 1024: bound by the supervisor (root), served by the workers


@pytest.fixture
def backends(image_lab: Lab) -> Iterator[tuple[HttpBackend, Backend]]:
    http = HttpBackend(host=image_lab.gateway)
    tcp = Backend(whoami_handler, host=image_lab.gateway, expect_proxy=True)
    try:
        yield http, tcp
    finally:
        http.close()
        tcp.close()


def config(
    http: HttpBackend, tcp: Backend, *, ports: tuple[int, int] = (HTTP_PORT, TCP_PORT), drain: str = "5s"
) -> dict[str, Any]:
    return {
        "user": "edgeproxy",
        "admin": {"bind": "127.0.0.1:9901"},
        "timeouts": {"connect": "2s", "drain": drain},
        "listeners": [
            {"name": "web", "bind": f"0.0.0.0:{ports[0]}", "mode": "http", "backend": "web"},
            {"name": "db", "bind": f"0.0.0.0:{ports[1]}", "mode": "tcp", "backend": "db"},
        ],
        "backends": {
            "web": {"servers": [http.address], "health": NO_CHECKS},
            "db": {"send_proxy": "v2", "servers": [tcp.address], "health": NO_CHECKS},
        },
    }


def http_get(lab: Lab, port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET from the client namespace, with a forged X-Forwarded-For; (status, backend's JSON)."""
    with connect_from(lab.client_netns, lab.addr(NODE), port) as c:
        c.sendall(
            f"GET {path} HTTP/1.1\r\nHost: edge\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n".encode()
        )
        head, _, body = recv_all(c).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body.startswith(b"{") else {}


def tcp_whoami(lab: Lab, port: int) -> tuple[str, int]:
    """(what the backend's PROXY v2 header said, this client's own port)."""
    with connect_from(lab.client_netns, lab.addr(NODE), port) as c:
        said = c.makefile("rb").readline().decode().strip()
        return said, c.getsockname()[1]


def test_image_is_built_from_the_pins_with_its_metadata(built_image: BuiltImage, image_lab: Lab) -> None:
    print(f"\n{built_image.summary()}")
    cfg = built_image.inspect["Config"]
    labels = cfg["Labels"]
    for key in ("title", "description", "licenses", "version", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert cfg["StopSignal"] == "SIGTERM"
    assert cfg["Healthcheck"]["Test"] == ["CMD", "edgeproxy", "healthcheck"]
    assert cfg["Entrypoint"] == ["edgeproxy"]
    # .dockerignore: the checkout (.git, .venv: hundreds of MB here) is not sent to the daemon.
    # (What is sent, the sources and tar's headers, is ~1 MB and grows with the code.)
    assert built_image.context_bytes < 5_000_000, built_image.context_bytes
    # What the image runs is exactly requirements/image.txt.
    from tests.unit.test_image_files import pins

    listing = (
        "import importlib.metadata as m, re\n"
        "for d in m.distributions(): print(re.sub(r'[-_.]+', '-', d.name).lower() + '==' + d.version)"
    )
    run = ["docker", "-H", image_lab.url(NODE), "run", "--rm", "--network", "host", "--entrypoint", "python", TAG]
    r = subprocess.run([*run, "-c", listing], capture_output=True, text=True, timeout=60, check=True)
    installed = dict(line.split("==") for line in r.stdout.split())
    assert installed.pop("edgeproxy") == labels["org.opencontainers.image.version"]
    assert installed == {name: str(spec) for name, spec in pins("image").items()}
    # The build stage compiled the hot path (issue 15): a fallback to pure Python would be silent.
    r = subprocess.run([*run[:-3], TAG, "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert "compiled: mypyc" in r.stdout, r.stdout


def test_client_in_its_own_namespace_through_ports_80_and_443(
    image_lab: Lab, backends: tuple[HttpBackend, Backend]
) -> None:
    lab, (http, tcp) = image_lab, backends
    with container(lab, config(http, tcp)) as c:
        c.wait_started()
        status, seen = http_get(lab, HTTP_PORT, "/who")
        assert status == 200
        assert seen["xff"] == [lab.client_addr]  # the client, not the forged 6.6.6.6
        assert seen["peer"] == lab.addr(NODE)  # the connection itself comes from the proxy
        said, client_port = tcp_whoami(lab, TCP_PORT)
        assert said == f"src={lab.client_addr}:{client_port} dst={lab.addr(NODE)}:{TCP_PORT}"
        assert tcp.seen[-1].peer[0] == lab.addr(NODE)
        # The HEALTHCHECK (`edgeproxy healthcheck` against /healthz) reports healthy.
        r = c.docker("exec", c.name, "edgeproxy", "healthcheck")
        assert r.stdout.startswith("healthy: HTTP/1.1 200"), r


def test_sighup_reloads_and_an_invalid_file_keeps_the_running_config(
    image_lab: Lab, backends: tuple[HttpBackend, Backend]
) -> None:
    lab, (http, tcp) = image_lab, backends
    other = HttpBackend(host=lab.gateway)
    try:
        cfg = config(http, tcp)
        with container(lab, cfg) as c:
            c.wait_started()
            assert http_get(lab, HTTP_PORT, "/before")[0] == 200
            cfg["backends"]["web"]["servers"] = [other.address]
            c.write(cfg)
            c.docker("kill", "-s", "HUP", c.name)
            c.wait_log(lambda r: r.get("msg") == "configuration reloaded")
            assert http_get(lab, HTTP_PORT, "/after")[0] == 200
            assert [r.target for r in other.requests] == ["/after"]

            c.write(json.dumps(cfg).replace('"send_proxy"', '"sendproxy"'))
            c.docker("kill", "-s", "HUP", c.name)
            failed = c.wait_log(lambda r: r.get("msg") == "reload failed: keeping the running configuration")
            assert any("sendproxy" in e for e in failed["errors"]), failed
            assert http_get(lab, HTTP_PORT, "/still")[0] == 200
            assert [r.target for r in other.requests] == ["/after", "/still"]
            said, _ = tcp_whoami(lab, TCP_PORT)  # send_proxy still v2
            assert said.startswith(f"src={lab.client_addr}:")
            assert c.state()["Running"]
    finally:
        other.close()


def test_docker_stop_drains_an_open_connection_then_exits_0(
    image_lab: Lab, backends: tuple[HttpBackend, Backend]
) -> None:
    lab, (http, tcp) = image_lab, backends
    drain, grace = 20, 30  # seconds: the grace longer than the drain, as the README and the stack file say
    with container(lab, config(http, tcp, drain=f"{drain}s"), "--stop-timeout", str(grace)) as c:
        c.wait_started()
        client = connect_from(lab.client_netns, lab.addr(NODE), TCP_PORT)
        with client:
            reader = client.makefile("rb")
            assert reader.readline().startswith(f"src={lab.client_addr}:".encode())
            stopped: dict[str, float] = {}

            def stop() -> None:
                t0 = time.monotonic()
                c.docker("stop", c.name, timeout=grace + 30)
                stopped["after"] = time.monotonic() - t0

            stopper = threading.Thread(target=stop)
            stopper.start()
            c.wait_log(lambda r: r.get("msg") == "draining: no new connections")
            # Draining: /healthz answers 503 (the HEALTHCHECK turns unhealthy), new clients are
            # refused, and the open connection is still served.
            r = c.docker("exec", c.name, "edgeproxy", "healthcheck", check=False)
            assert r.returncode == 1 and "503" in r.stderr, r
            with pytest.raises(ConnectionRefusedError):
                connect_from(lab.client_netns, lab.addr(NODE), TCP_PORT, timeout=2)
            client.sendall(b"still there\n")
            assert reader.readline() == b"still there\n"
            time.sleep(1)
            assert stopper.is_alive()  # waiting for the open connection
            client.shutdown(socket.SHUT_WR)
            assert reader.read() == b""
        stopper.join()
        state = c.state()
        assert state["ExitCode"] == 0 and not state["OOMKilled"], state
        assert stopped["after"] < drain, stopped  # ended when the connection did, not at the drain timeout
        assert c.wait_log(lambda r: r.get("msg") == "stopped")["cut_at_drain_timeout"] == 0


def test_the_data_plane_is_not_root_and_cannot_reach_the_socket(image_lab: Lab) -> None:
    """The image's own config (user: edgeproxy), the node's engine socket mounted as the stack
    file mounts it: the supervisor is root and can connect to it; the worker, asked itself
    (gdb makes it issue the call), is uid 10001 with no groups and no capabilities, and gets
    EACCES."""
    lab = image_lab
    socket_mount = f"{lab.engine_sock}:/var/run/docker.sock"
    with container(lab, None, "-v", socket_mount) as c:
        c.wait_started()
        r = c.docker("exec", c.name, "edgeproxy", "check")
        assert "user: edgeproxy (uid 10001, gid 10001)" in r.stdout, r
        supervisor, workers = c.pids()
        assert len(workers) == 1  # workers: 1, and still a separate process: user is set
        assert process_probe.status(supervisor)["Uid"] == ["0"] * 4
        assert process_probe.credentials(workers[0]) == process_probe.dropped(10001, 10001)
        assert process_probe.connect_errno(workers[0], "/var/run/docker.sock") == errno.EACCES
        assert process_probe.connect_errno(supervisor, "/var/run/docker.sock") == 0
        assert c.docker("exec", c.name, "edgeproxy", "healthcheck").returncode == 0
