"""config/edgeproxy-stack.yml is accepted by a real ``docker stack deploy`` and means what it says:
a global service on the edge=true managers, 80/443 published in host mode, the config mounted.

Swapped for the test swarm only: the image (no registry here: the test image and its httpd),
the published ports (free ones on 127.0.0.1), the network (the engine's bridge, whose published
ports dockerd binds on 127.0.0.1 only) and the socket mount's source (the test engine's socket
instead of /var/run/docker.sock).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tests.helpers import ROOT, free_port
from tests.swarm.conftest import IMAGE, Swarm


def test_stack_file_deploys_a_global_host_mode_service_on_edge_nodes(swarm: Swarm, tmp_path: Path) -> None:
    stack = yaml.safe_load((ROOT / "config" / "edgeproxy-stack.yml").read_text())
    svc = stack["services"]["edgeproxy"]
    assert [(p["target"], p["mode"]) for p in svc["ports"]] == [(80, "host"), (443, "host")]
    ports = {p["target"]: free_port() for p in svc["ports"]}
    for p in svc["ports"]:
        p["published"] = ports[p["target"]]
    svc["image"] = IMAGE
    svc["command"] = ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]
    svc["volumes"] = [v.replace("/var/run/docker.sock:", f"{swarm.sock}:", 1) for v in svc["volumes"]]
    # The engine's default bridge rather than a stack overlay network: ports on an overlay task's
    # gateway are published on 0.0.0.0 whatever dockerd's --ip says; on the bridge, 127.0.0.1.
    svc["networks"] = ["local"]
    stack["networks"] = {"local": {"external": True, "name": "bridge"}}
    (tmp_path / "stack.yml").write_text(yaml.safe_dump(stack))
    config_name = stack["configs"]["edgeproxy"]["name"]
    (tmp_path / "edgeproxy.yaml").write_text("# the edgeproxy config\n")
    swarm.docker("config", "create", config_name, str(tmp_path / "edgeproxy.yaml"))
    swarm.docker("node", "update", "--label-add", "edge=true", swarm.node_id)
    try:
        swarm.docker("stack", "deploy", "-c", str(tmp_path / "stack.yml"), "edgetest")
        spec = json.loads(swarm.docker("service", "inspect", "edgetest_edgeproxy"))[0]["Spec"]
        assert "Global" in spec["Mode"]
        assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.edge == true", "node.role == manager"]
        assert sorted((p["TargetPort"], p["PublishMode"]) for p in spec["EndpointSpec"]["Ports"]) == [
            (80, "host"),
            (443, "host"),
        ]
        container = spec["TaskTemplate"]["ContainerSpec"]
        assert [c["File"]["Name"] for c in container["Configs"]] == ["/etc/edgeproxy/edgeproxy.yaml"]
        assert spec["UpdateConfig"]["Order"] == "stop-first"
        # One task on the (only, edge-labelled manager) node, answering on its host-mode port.
        try:
            swarm.wait_task_answers(ports[80])
        except AssertionError:
            raise AssertionError(swarm.docker("service", "ps", "--no-trunc", "edgetest_edgeproxy")) from None
        running = ["service", "ps", "-q", "--filter", "desired-state=running", "edgetest_edgeproxy"]
        assert len(swarm.docker(*running).split()) == 1
    finally:
        swarm.docker("node", "update", "--label-rm", "edge", swarm.node_id, check=False)
        swarm.docker("stack", "rm", "edgetest", check=False)
        deadline = time.monotonic() + 20
        while swarm.docker("service", "ls", "-q", "--filter", "name=edgetest_", check=False).strip():
            assert time.monotonic() < deadline, "stack not removed"
            time.sleep(0.2)
        while swarm.docker("config", "rm", config_name, check=False) == "" and time.monotonic() < deadline:
            time.sleep(0.2)  # in use until the task is gone
