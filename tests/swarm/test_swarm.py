"""Swarm discovery against a real dockerd in swarm mode (the session fixture in conftest.py).

Data traffic stays on loopback: the engine publishes host-mode ports on 127.0.0.1 only and clients
connect from 127.0.0.x. The figures the tests print (``-s``) are how long discovery took to follow
a change, measured from the moment the ``docker`` command returned.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from edgeproxy.config import Config, Route, parse_config
from edgeproxy.discovery.swarm import SwarmDiscovery
from edgeproxy.net.context import ListenerContext
from edgeproxy.runtime.pools import BackendPool
from tests.helpers import ROOT, admin_json, free_port, metric, scrape
from tests.swarm.engine import Engine, http_get, wait_for
from tests.swarm.support import served, servers_logged

pytestmark = pytest.mark.swarm


def config(
    engine: Engine,
    port: int,
    *,
    backend: str = "app",
    backends: dict[str, Any] | None = None,
    mode: str = "tcp",
    labels: bool = False,
    managers: list[str] | None = None,
    **swarm: Any,
) -> dict[str, Any]:
    return {
        "timeouts": {"connect": "1s", "drain": "2s"},
        "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": mode, "backend": backend}],
        "backends": backends or {},
        "swarm": {
            "managers": managers or [engine.url],
            "refresh": "2s",
            "timeout": "1s",
            "labels": labels,
            # The node's published ports are on loopback (dockerd --ip 127.0.0.1); say so explicitly.
            "node_addresses": {engine.hostname: "127.0.0.1"},
            **swarm,
        },
    }


# -- discovery and traffic -------------------------------------------------------------------------
def test_host_mode_service_is_discovered_and_reached(engine: Engine, service_name: str, proxy_factory: Any) -> None:
    published = engine.create_service(service_name)
    port = free_port()
    proxy = proxy_factory(config(engine, port, backends={"app": {"swarm": {"service": service_name, "port": 80}}}))
    # Discovered before the proxy said it started: the first request already has a server.
    assert servers_logged(proxy, "app") == [[f"127.0.0.1:{published} up"]]
    status, body = http_get(port, source="127.0.0.31")
    assert status == 200 and body.startswith("remote=")  # the busybox task's CGI answered
    task = engine.running_tasks(service_name)[0]
    line = proxy.wait_log(lambda r: r.get("listener") == "front" and "bytes_in" in r)
    assert line["client"].startswith("127.0.0.31:") and line["server"] == f"127.0.0.1:{published}"
    assert task["Status"]["PortStatus"]["Ports"][0]["PublishedPort"] == published


def test_http_task_sees_the_client_in_x_forwarded_for(engine: Engine, service_name: str, proxy_factory: Any) -> None:
    engine.create_service(service_name)
    port = free_port()
    cfg = config(engine, port, mode="http", backends={"app": {"swarm": {"service": service_name, "port": 80}}})
    proxy_factory(cfg)
    # The client claims another address; edgeproxy (untrusted peer) replaces it.
    status, body = http_get(port, source="127.0.0.32", headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 200
    assert "xff=127.0.0.32" in body, body


# -- labels -----------------------------------------------------------------------------------------
class Host:
    """What SwarmDiscovery updates, built from real objects the way runtime/proxy.py builds them."""

    def __init__(self, cfg: Config) -> None:
        loop = asyncio.get_running_loop()
        self.config = cfg
        self.pools = {name: BackendPool(be) for name, be in cfg.backends.items()}
        self.contexts = {lst.name: ListenerContext(loop, lst, cfg.timeouts, self.pools) for lst in cfg.listeners}
        self.label_pools: dict[str, BackendPool] = {}
        self.label_routes: dict[str, tuple[Route, ...]] = {}
        self.gone_pools: list[BackendPool] = []


def parse(cfg: dict[str, Any]) -> Config:
    return parse_config(json.dumps(cfg).encode())


async def until(predicate: Any, timeout: float, what: str) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not predicate():
        if loop.time() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)
    return loop.time() - t0


async def docker(engine: Engine, *args: str) -> None:
    """The docker CLI in a thread, so the discovery loop keeps running meanwhile."""
    await asyncio.to_thread(engine.docker, *args)


def test_labels_make_a_backend_and_a_route_and_follow_changes(engine: Engine, service_name: str) -> None:
    name = service_name
    cfg = config(engine, free_port(), mode="http", backend="default", labels=True)
    cfg["listeners"].insert(0, {"name": "tcpfirst", "bind": f"127.0.0.1:{free_port()}", "mode": "tcp", "backend": "x"})
    cfg["backends"] = {"default": {"servers": ["127.0.0.1:9"]}}
    labels = {"edgeproxy.enable": "true", "edgeproxy.host": "App.Example", "edgeproxy.path_prefix": "/v1"}
    published = engine.create_service(name, labels=labels)
    timings: dict[str, float] = {}

    async def main() -> None:
        host = Host(parse(cfg))
        disc = SwarmDiscovery(host)
        await disc.start()
        try:
            ctx = host.contexts["front"]  # the first http listener
            # A backend named after the service, with the task as server, and its route.
            assert [s.name for s in host.pools[name].servers] == [f"127.0.0.1:{published}"]
            assert host.pools[name].servers[0].meta["service"] == name
            assert host.label_pools[name] is host.pools[name]
            assert ctx.extra_routes == (Route(backend=name, host="app.example", path_prefix="/v1"),)
            assert host.contexts["tcpfirst"].extra_routes == ()
            assert disc.swarm_up and disc.refreshes_total >= 1
            # Removing the label removes backend and route (the service update event: at once).
            await docker(engine, "service", "update", "--detach", "--label-rm", "edgeproxy.enable", name)
            timings["label removed"] = await until(lambda: name not in host.pools, 5, "label removal")
            assert ctx.extra_routes == () and name not in host.label_pools
            # Labelled again, with another host: back, with the new route.
            await docker(
                engine, "service", "update", "--detach", "--label-add", "edgeproxy.enable=true",
                "--label-add", "edgeproxy.host=other.example", name,
            )  # fmt: skip
            timings["label added"] = await until(lambda: name in host.pools, 5, "label added")
            assert ctx.extra_routes == (Route(backend=name, host="other.example", path_prefix="/v1"),)
            # A bad label: logged, service skipped, the rest unaffected.
            await docker(engine, "service", "update", "--detach", "--label-add", "edgeproxy.balance=fastest", name)
            await until(lambda: name not in host.pools, 5, "bad label skips the service")
            assert any("edgeproxy.balance='fastest'" in p for p in disc.describe()["problems"])
            assert "default" in host.pools
            await docker(engine, "service", "update", "--detach", "--label-rm", "edgeproxy.balance", name)
            await until(lambda: name in host.pools, 5, "label fixed")
            # Removing the service removes the backend.
            await docker(engine, "service", "rm", name)
            timings["service removed"] = await until(lambda: name not in host.pools, 5, "service removal")
            assert ctx.extra_routes == ()
            assert disc.events_total >= 4
        finally:
            await disc.stop()

    asyncio.run(main())
    print(f"\nlabels followed in: {', '.join(f'{k} {v:.2f}s' for k, v in timings.items())}")
    assert all(v < 2.5 for v in timings.values()), timings  # "within a couple of seconds"


@pytest.mark.parametrize("mode", ["tcp", "http"])
def test_label_backend_scaled_to_zero_and_back(
    engine: Engine, service_name: str, proxy_factory: Any, mode: str
) -> None:
    """No ``backends:`` entry: the listener names the labelled service."""
    name = service_name
    engine.create_service(name, labels={"edgeproxy.enable": "true"})
    port = free_port()
    cfg = config(engine, port, backend=name, mode=mode, labels=True)
    proxy = proxy_factory(cfg)
    assert served(port)
    # A reload (which rebuilds the config's pools) keeps the label backend serving.
    cfg["timeouts"]["connect"] = "2s"
    proxy.write_config(cfg)
    proxy.send(signal.SIGHUP)
    proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded")
    assert served(port)
    engine.docker("service", "scale", "--detach", f"{name}=0")
    t_zero = wait_for(lambda: not served(port), 10, what="scaled to 0 stops serving")
    if mode == "http":
        assert http_get(port)[0] == 503
    else:
        with pytest.raises(ConnectionError):  # tcp: closed without a byte
            http_get(port)
    assert servers_logged(proxy, name)[-1] == []
    t0 = time.monotonic()
    engine.docker("service", "scale", "--detach", f"{name}=1")
    # When the task itself answers (whatever its new port is), and when edgeproxy sends to it.
    published = [0]

    def task_up() -> bool:
        tasks = engine.running_tasks(name)
        if not tasks:
            return False
        published[0] = tasks[0]["Status"]["PortStatus"]["Ports"][0]["PublishedPort"]
        return http_get(published[0], timeout=1)[0] == 200

    wait_for(task_up, 20, interval=0.05, what="task answers")
    t_task = time.monotonic() - t0
    wait_for(lambda: served(port), 20, interval=0.05, what="edgeproxy serves again")
    t_proxy = time.monotonic() - t0
    print(
        f"\n{mode}: scale 1->0 followed in {t_zero:.2f}s; scale 0->1: task answers after {t_task:.2f}s, "
        f"through edgeproxy after {t_proxy:.2f}s"
    )
    assert t_proxy - t_task < 3.0  # polls every second while a task is starting


def test_label_backend_reaches_every_worker(engine: Engine, service_name: str, proxy_factory: Any) -> None:
    """workers: 2 -- discovery runs once, in the supervisor; the label backend reaches the workers."""
    name = service_name
    engine.create_service(name, labels={"edgeproxy.enable": "true"})
    port = free_port()
    cfg = config(engine, port, backend=name, labels=True)
    cfg["workers"] = 2
    proxy = proxy_factory(cfg)
    # Each request is a new connection: both workers accept some of them.
    assert all(served(port, source=f"127.0.0.{50 + i}") for i in range(8))
    engine.docker("service", "update", "--detach", "--label-rm", "edgeproxy.enable", name)
    wait_for(lambda: not served(port), 10, what="label removed in every worker")
    with pytest.raises(ConnectionError):
        http_get(port)
    engine.docker("service", "update", "--detach", "--label-add", "edgeproxy.enable=true", name)
    wait_for(lambda: all(served(port, source=f"127.0.0.{60 + i}") for i in range(6)), 10, what="back in every worker")
    assert sum(1 for r in proxy.log_lines() if r.get("msg") == "swarm: backend from service labels") == 2


# -- nodes ---------------------------------------------------------------------------------------
def test_drained_node_gets_no_new_connections(engine: Engine, service_name: str, proxy_factory: Any) -> None:
    published = engine.create_service(service_name)
    port = free_port()
    proxy = proxy_factory(config(engine, port, backends={"app": {"swarm": {"service": service_name, "port": 80}}}))
    assert served(port)
    try:
        t0 = time.monotonic()
        engine.docker("node", "update", "--availability", "drain", engine.node_id)
        # The node event arrives at once: its server drains before the engine even stops the task.
        wait_for(lambda: [f"127.0.0.1:{published} drain"] in servers_logged(proxy, "app") or
                 [] in servers_logged(proxy, "app"), 10, interval=0.02, what="server drained")  # fmt: skip
        t_drain = time.monotonic() - t0
        with pytest.raises(ConnectionError):
            http_get(port)
        wait_for(lambda: servers_logged(proxy, "app")[-1] == [], 15, what="task gone")
        t_gone = time.monotonic() - t0
    finally:
        engine.docker("node", "update", "--availability", "active", engine.node_id)
    t0 = time.monotonic()
    wait_for(lambda: served(port), 30, interval=0.05, what="serving again after the node is active")
    t_back = time.monotonic() - t0
    print(
        f"\ndrain: no new connections after {t_drain:.2f}s, servers gone after {t_gone:.2f}s; "
        f"active again: serving after {t_back:.2f}s"
    )
    assert t_drain < 2.0


# -- managers --------------------------------------------------------------------------------------
def test_manager_away_keeps_last_known_servers(engine: Engine, service_name: str, proxy_factory: Any) -> None:
    published = engine.create_service(service_name)
    port, admin = free_port(), free_port()
    cfg = config(engine, port, backends={"app": {"swarm": {"service": service_name, "port": 80}}}, refresh="1s")
    cfg["admin"] = {"bind": f"127.0.0.1:{admin}"}
    proxy = proxy_factory(cfg)
    assert served(port)
    m = scrape(admin)
    assert metric(m, "edgeproxy_swarm_up") == 1
    assert metric(m, "edgeproxy_swarm_refreshes_total", result="success") >= 1
    server = next(s for s in admin_json(admin)["backends"][0]["servers"])
    assert (server["source"], server["service"], server["node"]) == ("swarm", service_name, engine.hostname)
    assert server["task"] == engine.running_tasks(service_name)[0]["ID"]
    engine.freeze()  # the API hangs, as on a manager without quorum; the task keeps running
    try:
        down = proxy.wait_log(
            lambda r: r.get("msg") == "swarm: no manager answered; keeping the last known servers", 10
        )
        assert "no answer within 1s" in down["errors"][0]
        assert "lost quorum" in down["hint"]
        for i in range(5):  # still served, several refreshes later
            assert served(port, source=f"127.0.0.{40 + i}")
            time.sleep(0.5)
        assert servers_logged(proxy, "app")[-1] == [f"127.0.0.1:{published} up"]
        warnings = [r for r in proxy.log_lines() if r.get("msg", "").startswith("swarm: no manager answered")]
        assert len(warnings) == 1  # logged once, not at every retry
        m = scrape(admin)
        assert metric(m, "edgeproxy_swarm_up") == 0
        assert metric(m, "edgeproxy_swarm_refreshes_total", result="failure") >= 1
        assert metric(m, "edgeproxy_server_up", backend="app") == 1
        st = admin_json(admin)["swarm"]
        assert st["up"] is False and "no answer within 1s" in st["last_error"]
    finally:
        engine.thaw()
    back = proxy.wait_log(lambda r: r.get("msg") == "swarm: discovery recovered", 15)
    assert back["manager"] == engine.url
    assert served(port)
    assert metric(scrape(admin), "edgeproxy_swarm_up") == 1


def test_discovery_counters_follow_the_manager(engine: Engine, service_name: str) -> None:
    """The attributes /metrics reads: swarm_up, refreshes, errors, last success."""
    published = engine.create_service(service_name)
    cfg = parse(
        config(engine, free_port(), backends={"app": {"swarm": {"service": service_name, "port": 80}}}, refresh="1s")
    )

    async def main() -> None:
        host = Host(cfg)
        disc = SwarmDiscovery(host)
        await disc.start()
        try:
            assert disc.swarm_up and disc.refreshes_total >= 1 and disc.refresh_errors_total == 0
            assert time.time() - disc.last_success < 5
            engine.freeze()
            try:
                await until(lambda: not disc.swarm_up, 6, "swarm_up 0")
                assert disc.refresh_errors_total >= 1 and "no answer within 1s" in disc.last_error
                last = disc.last_success
                await asyncio.sleep(1.5)
                assert disc.last_success == last
                # never emptied because the API is away
                assert [(s.name, str(s.state)) for s in host.pools["app"].servers] == [(f"127.0.0.1:{published}", "up")]
            finally:
                engine.thaw()
            await until(lambda: disc.swarm_up, 10, "swarm_up 1 again")
            assert disc.last_success > last and disc.describe()["up"] is True
        finally:
            await disc.stop()

    asyncio.run(main())


def test_unreachable_and_non_manager_engines_are_skipped(
    engine: Engine, plain_engine: Engine, service_name: str, proxy_factory: Any
) -> None:
    published = engine.create_service(service_name)
    port = free_port()
    dead = f"tcp://127.0.0.1:{free_port()}"
    tls = {"ca": engine.tls_files["ca"], "cert": engine.tls_files["client_cert"], "key": engine.tls_files["client_key"]}
    cfg = config(
        engine,
        port,
        backends={"app": {"swarm": {"service": service_name, "port": 80}}},
        managers=[dead, plain_engine.url, engine.tls_url],
        tls=tls,
    )
    proxy = proxy_factory(cfg)
    skipped = proxy.wait_log(lambda r: r.get("msg") == "swarm: manager(s) skipped")
    assert skipped["answered"] == engine.tls_url  # through TLS with client certs
    assert skipped["skipped"][0] == f"{dead}: connection refused"
    assert skipped["skipped"][1].startswith(f"{plain_engine.url}: HTTP 503: This node is not a swarm manager")
    assert servers_logged(proxy, "app") == [[f"127.0.0.1:{published} up"]]
    assert served(port)


def test_swarm_status_prints_the_cluster(engine: Engine, service_name: str, tmp_path: Any) -> None:
    name = service_name
    published = engine.create_service(name, labels={"edgeproxy.enable": "true", "edgeproxy.host": "a.example"})
    ingress = engine.create_service(f"{name}-ing", mode="ingress", wait=False)
    dead = f"tcp://127.0.0.1:{free_port()}"
    try:
        cfg = config(engine, free_port(), mode="http", backend=name, labels=True, managers=[dead, engine.url])
        cfg["backends"] = {"site": {"swarm": {"service": name, "port": 80}}}
        path = tmp_path / "edgeproxy.yaml"
        path.write_text(json.dumps(cfg))
        cmd = [sys.executable, "-m", "edgeproxy", "swarm", "status", "-c", str(path)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        print("\n" + out.stdout)
        text = re.sub(r" {2,}", "  ", out.stdout)  # table columns: any padding reads as two spaces
        assert f"{dead}  no" in text and "connection refused" in text
        assert f"{engine.url}  yes  manager  {engine.hostname}  yes" in text
        assert "Cluster: 1 manager(s), quorum 1, tolerates 0 manager failure(s)" in text
        assert "warning: a single manager" in text
        assert f"  {name}  replicated 1/1  ports: 80->{published}/tcp host" in text
        assert f"  {name}-ing  replicated" in text and f"80->{ingress}/tcp ingress" in text
        assert "publish it with mode: host, or edgeproxy can't see the client" in text
        assert f"  site  (config: service {name}, port 80)  1 server(s)" in text
        assert (
            f"  {name}  (labels: service {name}, port 80; route on front: host a.example path /)  1 server(s)" in text
        )
        assert f"  127.0.0.1:{published}  up  task " in text
        out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=30, cwd=ROOT)
        st = json.loads(out.stdout)
        assert [m["reachable"] for m in st["managers"]] == [False, True]
        assert st["managers"][1]["leader"] is True
        assert st["cluster"]["quorum"] == {
            "managers": 1, "quorum": 1, "tolerated": 0, "warnings": st["cluster"]["quorum"]["warnings"]
        }  # fmt: skip
        backends = {b["name"]: b for b in st["backends"]}
        assert [s["address"] for s in backends["site"]["servers"]] == [f"127.0.0.1:{published}"]
        assert backends[name]["from"] == "labels" and backends[name]["route"]["host"] == "a.example"
    finally:
        engine.docker("service", "rm", f"{name}-ing")
