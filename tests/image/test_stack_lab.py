"""config/edgeproxy-stack.yml deployed with the built image on the 3-manager lab swarm: edgeproxy
runs as a global service on the two edge-labelled nodes, each instance discovers the host-mode
``web`` service through its node's engine socket and serves it, and a client in its own network
namespace reaching either edge node is seen by ``web`` with its own address.

Swapped for the lab only: the socket mount's source (each lab node's engine socket is at
``lab.engine_sock``, not /var/run/docker.sock). The image (edgeproxy:latest), the user it runs
as (the image's: root, for the supervisor), the ports, the placement, the config target are the
file's own.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import process_probe
from tests.helpers import ROOT, recv_all
from tests.image.netns import connect_from
from tests.swarm.lab import Lab

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(600)]
WEB_PORT = 18090
EDGE = (1, 2)

CONFIG = """
user: edgeproxy
admin: {bind: "127.0.0.1:9901"}
timeouts: {connect: 2s, drain: 5s}
listeners:
  - {name: http, bind: "0.0.0.0:80", mode: http, backend: web}
  - {name: tcp, bind: "0.0.0.0:443", mode: tcp, backend: web}
backends:
  web:
    swarm: {service: web, port: 80}
    health: {type: http, path: /cgi-bin/ip, interval: 1s}
swarm: {managers: ["unix:///var/run/docker.sock"], refresh: 2s}
"""


def get(lab: Lab, node: int, port: int) -> bytes:
    with connect_from(lab.client_netns, lab.addr(node), port, timeout=5) as c:
        c.sendall(b"GET /cgi-bin/ip HTTP/1.0\r\nHost: web\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        return recv_all(c)


def test_stack_file_serves_web_from_both_edge_nodes_with_client_addresses(image_lab: Lab, tmp_path: Path) -> None:
    lab = image_lab
    stack = yaml.safe_load((ROOT / "config" / "edgeproxy-stack.yml").read_text())
    svc = stack["services"]["edgeproxy"]
    svc["volumes"] = [v.replace("/var/run/docker.sock:", f"{lab.engine_sock}:", 1) for v in svc["volumes"]]
    assert any(v.startswith(f"{lab.engine_sock}:") for v in svc["volumes"])
    (tmp_path / "stack.yml").write_text(yaml.safe_dump(stack))
    (tmp_path / "edgeproxy.yaml").write_text(CONFIG)

    lab.docker(
        1, "service", "create", "--detach", "--name", "web", "--mode", "global", "--no-resolve-image",
        "--stop-grace-period", "1s", "--publish", f"mode=host,target=80,published={WEB_PORT}",
        "local/bb:2", "/bin/httpd", "-f", "-p", "80", "-h", "/www",
    )  # fmt: skip
    for n in EDGE:
        lab.docker(1, "node", "update", "--label-add", "edge=true", f"node{n}")
    lab.docker(1, "config", "create", stack["configs"]["edgeproxy"]["name"], str(tmp_path / "edgeproxy.yaml"))
    t0 = time.monotonic()
    lab.docker(1, "stack", "deploy", "-c", str(tmp_path / "stack.yml"), "edge")

    answers: dict[tuple[int, int], bytes] = {}
    deadline = time.monotonic() + 120
    while len(answers) < 2 * len(EDGE):
        for n in EDGE:
            for port in (80, 443):
                try:
                    body = get(lab, n, port)
                except OSError:
                    continue
                if b"200 OK" in body:
                    answers[n, port] = body
        if time.monotonic() > deadline:
            ps = lab.docker(1, "service", "ps", "--no-trunc", "edge_edgeproxy")
            logs = subprocess.run(
                ["docker", "-H", lab.url(1), "service", "logs", "--raw", "edge_edgeproxy"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            raise AssertionError(f"answered: {sorted(answers)}\n{ps}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.5)
    print(f"\nstack deployed: both edge nodes serve web {time.monotonic() - t0:.1f}s after 'docker stack deploy'")

    for n in EDGE:
        # http: web sees the client's own address in X-Forwarded-For (the forged one dropped),
        # not docker-proxy's or a gateway's: the host-mode port kept it, edgeproxy handed it on.
        assert f"xff={lab.client_addr}\n".encode() in answers[n, 80], answers[n, 80]
        # tcp (no PROXY header: busybox httpd would not parse it): the bytes go through as they are.
        assert b"xff=6.6.6.6\n" in answers[n, 443], answers[n, 443]
    # One task per edge node, none on node3.
    nodes = lab.docker(
        1, "service", "ps", "-q", "--filter", "desired-state=running", "--format", "{{.Node}}", "edge_edgeproxy"
    )
    assert sorted(nodes.split()) == [f"node{n}" for n in EDGE]
    with pytest.raises(OSError):
        get(lab, 3, 80)
    # In each task the supervisor is root, the worker edgeproxy with nothing else.
    for n in EDGE:
        (cid,) = lab.docker(n, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=edge_edgeproxy").split()
        supervisor = int(lab.docker(n, "inspect", "-f", "{{.State.Pid}}", cid))
        workers = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        assert process_probe.status(supervisor)["Uid"] == ["0"] * 4
        assert [process_probe.credentials(int(w)) for w in workers] == [process_probe.dropped(10001, 10001)]
