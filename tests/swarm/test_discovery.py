"""Swarm discovery against a real dockerd in swarm mode (conftest.py): services with host-mode
ports, labels, node drain, a frozen manager, and ``edgeproxy swarm status``.

Node addresses are overridden to 127.0.0.1 (``node_addresses``) so client traffic stays on
loopback; clients connect from 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from edgeproxy.config import parse_config
from edgeproxy.discovery.swarm import SwarmDiscovery
from edgeproxy.runtime.control import OnDemand
from edgeproxy.runtime.main import build
from edgeproxy.runtime.single import SingleProcess
from tests.helpers import ROOT, admin_json, edgeproxy, free_port, metric, scrape
from tests.swarm.conftest import Swarm, http_get

pytestmark = pytest.mark.swarm


def swarm_section(sw: Swarm, managers: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "managers": [*(managers or []), sw.url],
        "refresh": "5s",
        "timeout": "1s",
        "node_addresses": {sw.hostname: "127.0.0.1"},
        **extra,
    }


@pytest.fixture
def not_a_manager(plain_engine: str) -> str:
    """A real engine that is not a swarm manager (conftest.py: a second dockerd, in no swarm)."""
    return plain_engine


def servers_logged(proxy: Any, backend: str, want: Callable[[list[str]], bool], timeout: float = 30) -> float:
    """Wait for a 'swarm: servers changed' line for ``backend`` whose list satisfies ``want``;
    return the time it was seen (monotonic)."""
    proxy.wait_log(
        lambda r: r.get("msg") == "swarm: servers changed" and r.get("backend") == backend and want(r["servers"]),
        timeout=timeout,
    )
    return time.monotonic()


def test_host_mode_service_discovered_dead_managers_skipped_and_served(swarm: Swarm, not_a_manager: str) -> None:
    published, port, admin = free_port(), free_port(), free_port()
    swarm.service("disc", published)
    dead = [f"unix://{swarm.dir}/nobody.sock", f"tcp://127.0.0.1:{free_port()}", not_a_manager]
    cfg = {
        "admin": {"bind": f"127.0.0.1:{admin}"},
        "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": "tcp", "backend": "app"}],
        "backends": {"app": {"health": {"type": "none"}, "swarm": {"service": "disc", "port": 80}}},
        "swarm": swarm_section(swarm, dead),
    }
    with edgeproxy(cfg) as proxy:
        servers_logged(proxy, "app", lambda s: s == [f"127.0.0.1:{published} up"])
        body = http_get("127.0.0.1", port, "/cgi-bin/ip", source="127.0.0.31")
        assert b"200 OK" in body and b"remote=" in body
        (server,) = next(b for b in admin_json(admin)["backends"] if b["name"] == "app")["servers"]
        assert (server["source"], server["service"], server["node"]) == ("swarm", "disc", swarm.hostname)
        samples = scrape(admin)
        assert metric(samples, "edgeproxy_swarm_up") == 1
        assert metric(samples, "edgeproxy_swarm_refreshes_total", result="success") >= 1
    swarm.docker("service", "rm", "disc")


def test_http_mode_task_sees_client_in_x_forwarded_for(swarm: Swarm) -> None:
    published, port = free_port(), free_port()
    cfg = {
        "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "backend": "app"}],
        "backends": {"app": {"health": {"type": "none"}, "swarm": {"service": "xff", "port": 80}}},
        "swarm": swarm_section(swarm),
    }
    try:
        proxy_cm = edgeproxy(cfg)
        proxy = proxy_cm.__enter__()
    except RuntimeError as e:
        if "not available in this build" in str(e):
            pytest.skip("http mode is not in this build (issue 3)")
        raise
    try:
        swarm.service("xff", published)
        servers_logged(proxy, "app", lambda s: s == [f"127.0.0.1:{published} up"])
        swarm.wait_task_answers(published)
        body = http_get("127.0.0.1", port, "/cgi-bin/ip", source="127.0.0.32")
        assert b"xff=127.0.0.32" in body, proxy.log()[-3000:]
    finally:
        proxy_cm.__exit__(None, None, None)
        swarm.docker("service", "rm", "xff", check=False)


async def _until(cond: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def test_labels_backend_route_scale_and_removal(swarm: Swarm) -> None:
    """In process (built by the composition root), so the published Route objects and the
    component's counters are visible."""
    published, port = free_port(), free_port()
    text = f"""
listeners:
  - {{name: front, bind: "127.0.0.1:{port}", mode: tcp, backend: lab}}
backends: {{}}
swarm:
  managers: ["{swarm.url}"]
  refresh: 30s
  timeout: 1s
  labels: true
  node_addresses: {{{swarm.hostname}: 127.0.0.1}}
"""
    config = parse_config(text.encode(), "inline.yaml")
    labels = {"edgeproxy.enable": "true", "edgeproxy.listener": "front", "edgeproxy.host": "app.test"}

    def get() -> bytes:
        try:
            return http_get("127.0.0.1", port, "/cgi-bin/ip", source="127.0.0.33")
        except OSError as e:
            return repr(e).encode()

    async def scenario() -> dict[str, float]:
        proxy = build(config)
        assert isinstance(proxy, SingleProcess)
        await proxy.start()
        # (made on demand: the config has a swarm: section, runtime/control.py OnDemand)
        disc = next(
            c.component
            for c in proxy.control.components
            if isinstance(c, OnDemand) and isinstance(c.component, SwarmDiscovery)
        )
        assert isinstance(disc, SwarmDiscovery)
        ctx = proxy.dataplane.contexts["front"]
        pools = proxy.registry.pools
        times: dict[str, float] = {}
        try:
            await asyncio.to_thread(swarm.service, "lab", published, labels=labels)
            await _until(lambda: "lab" in pools and any(s.state == "up" for s in pools["lab"].servers))
            assert [(r.backend, r.host) for r in ctx.extra_routes] == [("lab", "app.test")]
            assert b"remote=" in await asyncio.to_thread(get)
            # scale to 0: no server, the tcp listener closes; back to 1: served again
            await asyncio.to_thread(swarm.docker, "service", "scale", "--detach", "lab=0")
            await _until(lambda: not any(s.state == "up" for s in pools["lab"].servers))
            assert b"remote=" not in await asyncio.to_thread(get)
            t0 = time.monotonic()
            await asyncio.to_thread(swarm.docker, "service", "scale", "--detach", "lab=1")
            times["scale_up"] = await _until(lambda: any(s.state == "up" for s in pools["lab"].servers))
            times["scale_up_cmd"] = time.monotonic() - t0
            assert b"remote=" in await asyncio.to_thread(get)
            # node drain: the node's servers stop taking connections
            t0 = time.monotonic()
            await asyncio.to_thread(swarm.docker, "node", "update", "--availability", "drain", swarm.node_id)
            times["drain"] = await _until(lambda: not any(s.state == "up" for s in pools["lab"].servers))
            times["drain_cmd"] = time.monotonic() - t0
            await asyncio.to_thread(swarm.docker, "node", "update", "--availability", "active", swarm.node_id)
            await _until(lambda: any(s.state == "up" for s in pools["lab"].servers))
            # removing the label removes backend and route (events: well before the 30 s refresh)
            t0 = time.monotonic()
            await asyncio.to_thread(
                swarm.docker, "service", "update", "--detach", "--label-rm", "edgeproxy.enable", "lab"
            )
            times["label_rm"] = await _until(lambda: "lab" not in pools, timeout=10)
            assert ctx.extra_routes == ()
            assert b"remote=" not in await asyncio.to_thread(get)
            await asyncio.to_thread(
                swarm.docker, "service", "update", "--detach", "--label-add", "edgeproxy.enable=true", "lab"
            )
            await _until(lambda: "lab" in pools, timeout=10)
            await asyncio.to_thread(swarm.docker, "service", "rm", "lab")
            times["service_rm"] = await _until(lambda: "lab" not in pools, timeout=10)
            assert disc.events > 0 and disc.swarm_up == 1 and disc.errors == 0
        finally:
            await proxy.shutdown()
        return times

    times = asyncio.run(scenario())
    print("swarm discovery timings (s):", json.dumps({k: round(v, 2) for k, v in times.items()}))
    assert times["label_rm"] < 5 and times["service_rm"] < 5


def test_frozen_manager_keeps_last_servers_reports_down_and_recovers(swarm: Swarm) -> None:
    published, port, admin = free_port(), free_port(), free_port()
    swarm.service("frz", published)
    cfg = {
        "admin": {"bind": f"127.0.0.1:{admin}"},
        "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": "tcp", "backend": "app"}],
        "backends": {"app": {"health": {"type": "none"}, "swarm": {"service": "frz", "port": 80}}},
        "swarm": swarm_section(swarm, refresh="2s"),
    }
    with edgeproxy(cfg) as proxy:
        servers_logged(proxy, "app", lambda s: s == [f"127.0.0.1:{published} up"])
        swarm.wait_task_answers(published)
        swarm.pause()  # the API stops answering; the task (its own processes) keeps serving
        try:
            proxy.wait_log(lambda r: r.get("msg", "").startswith("swarm: no manager answered"), timeout=20)
            assert metric(scrape(admin), "edgeproxy_swarm_up") == 0
            st = admin_json(admin)["swarm"]
            assert st["up"] is False and "no answer within 1s" in st["last_error"] and st["errors"] >= 1
            body = http_get("127.0.0.1", port, "/cgi-bin/ip", source="127.0.0.34")
            assert b"remote=" in body  # last known servers still serve
        finally:
            swarm.resume()
        proxy.wait_log(lambda r: r.get("msg") == "swarm: managers answer again", timeout=30)
        assert metric(scrape(admin), "edgeproxy_swarm_up") == 1
        st = admin_json(admin)["swarm"]
        assert (st["up"], st["manager"], st["last_error"]) == (True, swarm.url, None) and st["refreshes"] >= 2
    swarm.docker("service", "rm", "frz")


def test_swarm_status_command_on_the_real_cluster(swarm: Swarm, tmp_path: Any) -> None:
    published, ingress = free_port(), free_port()
    swarm.service("st-host", published)
    swarm.service("st-ing", ingress, mode="ingress")
    path = tmp_path / "edgeproxy.yaml"
    path.write_text(
        json.dumps(
            {
                "listeners": [{"name": "front", "bind": f"127.0.0.1:{free_port()}", "mode": "tcp", "backend": "app"}],
                "backends": {"app": {"swarm": {"service": "st-host", "port": 80}}},
                "swarm": swarm_section(swarm),
            }
        )
    )
    deadline = time.monotonic() + 30
    while True:
        r = subprocess.run(
            [sys.executable, "-m", "edgeproxy", "swarm", "status", "-c", str(path), "--json"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
        report = json.loads(r.stdout)
        svc = {s["service"]: s for s in report["services"]}
        if svc["st-host"]["servers"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.returncode == 0
    assert report["quorum"] == {
        "managers": 1,
        "quorum": 1,
        "tolerated": 0,
        "warnings": [report["quorum"]["warnings"][0]],
    }
    assert [m["leader"] for m in report["managers"]] == [True]
    assert svc["st-host"]["servers"][0]["server"] == f"127.0.0.1:{published}"
    assert svc["st-ing"]["ingress_warning"] and not svc["st-ing"]["servers"]
    text = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "swarm", "status", "-c", str(path)],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        text=True,
    ).stdout
    assert "quorum: 1 manager(s), quorum 1, failures tolerated 0" in text
    assert f"-> server 127.0.0.1:{published} (up)" in text
    assert "WARNING: ingress-mode port: publish it with mode: host" in text
    swarm.docker("service", "rm", "st-host", "st-ing")


def test_a_swarm_section_added_by_sighup_starts_discovery_and_removed_stops_it(swarm: Swarm) -> None:
    """Issue 10: a `swarm:` section added by SIGHUP was ignored until a restart. With workers: 2,
    so the servers also have to reach the workers."""
    published, port, admin = free_port(), free_port(), free_port()
    swarm.service("hup", published)
    static = {
        "workers": 2,
        "admin": {"bind": f"127.0.0.1:{admin}"},
        "timeouts": {"connect": "1s", "drain": "2s"},
        "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": "tcp", "backend": "app"}],
        "backends": {"app": {"health": {"type": "none"}, "servers": ["127.0.0.1:9"]}},
    }
    discovered = {
        **static,
        "backends": {"app": {"health": {"type": "none"}, "swarm": {"service": "hup", "port": 80}}},
        "swarm": swarm_section(swarm),
    }

    def served() -> bool:
        try:
            return all(
                b"remote=" in http_get("127.0.0.1", port, "/cgi-bin/ip", source=f"127.0.0.{40 + i}") for i in range(6)
            )
        except OSError:
            return False

    try:
        swarm.wait_task_answers(published)
        with edgeproxy(static) as proxy:
            assert not served() and "swarm" not in admin_json(admin)
            proxy.write_config(discovered)
            proxy.send(signal.SIGHUP)
            servers_logged(proxy, "app", lambda s: s == [f"127.0.0.1:{published} up"])
            deadline = time.monotonic() + 10
            while not served():
                assert time.monotonic() < deadline, proxy.log()[-3000:]
                time.sleep(0.1)
            assert admin_json(admin)["swarm"]["up"] is True
            assert metric(scrape(admin), "edgeproxy_swarm_up") == 1

            proxy.write_config(static)
            proxy.send(signal.SIGHUP)
            proxy.wait_log(lambda r: r.get("msg", "").startswith("swarm: discovery stopped"))
            proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded" and r.get("digest") is not None)
            assert "swarm" not in admin_json(admin)
            assert not any(name.startswith("edgeproxy_swarm_") for name, _ in scrape(admin))
            deadline = time.monotonic() + 10
            while served():
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        swarm.docker("service", "rm", "hup", check=False)
