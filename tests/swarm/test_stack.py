"""config/edgeproxy-stack.yml is accepted by a real ``docker stack deploy`` and means what it says:
a global service on edge=true nodes, 80/443 published in host mode, config and secrets mounted.

The image is swapped for the test image (no registry here) and the published ports for free
ones (dockerd publishes on 127.0.0.1 only in the tests); everything else is the shipped file.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import yaml

from edgeproxy.config import load_config
from tests.helpers import ROOT, free_port
from tests.swarm.engine import IMAGE, Engine, wait_for, wait_http


def test_stack_file_deploys_a_global_host_mode_service(engine: Engine, tmp_path: Path) -> None:
    src = ROOT / "config" / "edgeproxy-stack.yml"
    stack = yaml.safe_load(src.read_text())
    svc = stack["services"]["edgeproxy"]
    assert [(p["target"], p["mode"]) for p in svc["ports"]][:2] == [(80, "host"), (443, "host")]
    # The config it mounts is valid.
    cfg = load_config(str(src.parent / stack["configs"]["edgeproxy_yaml"]["file"]))
    assert cfg.swarm is not None and cfg.swarm.labels
    ports = {p["target"]: free_port() for p in svc["ports"]}
    for p in svc["ports"]:
        p["published"] = ports[p["target"]]
    svc["image"] = IMAGE
    svc["command"] = ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]
    (tmp_path / "stack.yml").write_text(yaml.safe_dump(stack))
    shutil.copy(src.parent / "edgeproxy-swarm.yaml", tmp_path)
    (tmp_path / "docker-tls").mkdir()
    for name in ("ca", "cert", "key"):
        (tmp_path / "docker-tls" / f"{name}.pem").write_text("test\n")
    engine.docker("node", "update", "--label-add", "edge=true", engine.node_id)
    try:
        engine.docker("stack", "deploy", "-c", str(tmp_path / "stack.yml"), "edgetest")
        spec = engine.api("/services", {"name": ["edgetest_edgeproxy"]})[0]["Spec"]
        assert "Global" in spec["Mode"]
        assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.edge == true"]
        assert {(p["TargetPort"], p["PublishMode"]) for p in spec["EndpointSpec"]["Ports"]} == {
            (80, "host"),
            (443, "host"),
            (9901, "host"),
        }
        container = spec["TaskTemplate"]["ContainerSpec"]
        assert container["CapabilityAdd"] == ["CAP_NET_BIND_SERVICE"]
        assert [c["File"]["Name"] for c in container["Configs"]] == ["/etc/edgeproxy/edgeproxy.yaml"]
        assert sorted(s["File"]["Name"] for s in container["Secrets"]) == [
            "docker-ca.pem",
            "docker-cert.pem",
            "docker-key.pem",
        ]
        assert spec["UpdateConfig"]["Order"] == "stop-first"
        # One task on the (only, edge-labelled) node, answering on its host-mode port.
        wait_http(ports[80])
        # Without the label, the global service has nowhere to run.
        engine.docker("node", "update", "--label-rm", "edge", engine.node_id)
        wait_for(lambda: not engine.running_tasks("edgetest_edgeproxy"), 20, what="task gone from a non-edge node")
    finally:
        with contextlib.suppress(RuntimeError):
            engine.docker("node", "update", "--label-rm", "edge", engine.node_id)
        engine.docker("stack", "rm", "edgetest")
        wait_for(lambda: not engine.api("/services", {"name": ["edgetest_edgeproxy"]}), 20, what="stack removed")
