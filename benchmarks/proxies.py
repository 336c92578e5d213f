"""The two proxies under test, each started from a config generated for the scenario.

Both get the same job: HTTP mode strips the client's X-Forwarded-For and sets its own (HAProxy:
``option forwardfor`` + ``http-request del-header X-Forwarded-For``; edgeproxy:
``forwarded.headers: [x-forwarded-for]``); TCP mode optionally sends a PROXY v2 header
(``send-proxy-v2`` / ``send_proxy: v2``); ``workers`` = ``nbthread``. Neither writes an access log.
A proxy that cannot run a scenario (a mode or option this build lacks) raises ``Skip``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.netutil import free_port, http_get, wait_http
from benchmarks.procs import Managed, pinned, tree, wait_until

DEFAULT_EDGEPROXY = [sys.executable, "-m", "edgeproxy"]
START_TIMEOUT = 20.0


class Skip(Exception):
    """This proxy cannot run this scenario; the message says why."""


@dataclass(frozen=True)
class Setup:
    """What a scenario asks of a proxy."""

    mode: str  # "http" | "tcp"
    backend_port: int
    send_proxy: bool = False
    workers: int = 1
    max_conns: int = 5000
    tls_pem: str | None = None  # terminate TLS with this PEM file (certificate then key)
    sni: str | None = None  # TLS passthrough routed by this server name (the backend speaks TLS)
    dead_port: int = 9  # the default backend's server with ``sni``: nothing listens (discard)


class Proxy:
    """A running proxy under test."""

    name = ""
    proc: Managed
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def reload(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.proc.stop()

    def _ready(self, setup: Setup) -> None:
        """Wait until a request passes through, then check that the proxy did the scenario's work."""
        tls = setup.tls_pem is not None
        sni = setup.sni or "bench.test"
        https = tls or setup.sni is not None  # terminated here, or passed through to nginx
        error = wait_http(self.port, "/small", START_TIMEOUT, self.proc.alive, tls=https, sni=sni)
        if error is not None:
            tail = self.proc.log_tail(10).splitlines()
            alerts = [line for line in tail if "ALERT" in line or '"error"' in line] or tail[-2:]
            self.stop()
            raise Skip(f"{self.name} did not serve ({error}): {_short(' '.join(alerts))}")
        if setup.mode == "http":
            _, body = http_get(self.port, "/whoami", {"X-Forwarded-For": "203.0.113.66"}, tls=tls)
            expect = b"xff=127.0.0.1\n"
        elif setup.send_proxy:
            _, body = http_get(self.port, "/whoami", tls=setup.sni is not None, sni=sni)
            expect = b"proxy=127.0.0.1\n" if setup.sni is None else f"proxy=127.0.0.1 sni={setup.sni}\n".encode()
        else:
            return
        if body != expect:
            self.stop()
            raise Skip(f"{self.name} sanity check failed: backend saw {body!r}, expected {expect!r}")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HAProxy(Proxy):
    name = "haproxy"

    def __init__(self, setup: Setup, workdir: Path, cpus: str | None, command: Sequence[str] = ()) -> None:
        self.dir = workdir / f"haproxy-{setup.mode}-{setup.workers}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(haproxy_config(setup, self.port))
        check = subprocess.run(
            [*(command or ["haproxy"]), "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise Skip(f"haproxy -c rejected the config: {_short(check.stdout + check.stderr)}")
        # -W: master + worker (a reload is SIGUSR2 to the master, which starts a new worker and
        # lets the old one finish); -db: stay in the foreground.
        cmd = [*(command or ["haproxy"]), "-W", "-db", "-f", str(cfg)]
        self.proc = Managed(self.name, pinned(cmd, cpus), self.dir / "log")
        self._ready(setup)

    def reload(self) -> None:
        self.proc.signal(signal.SIGUSR2)


def haproxy_config(setup: Setup, port: int) -> str:
    server = f"server nginx 127.0.0.1:{setup.backend_port}"
    if setup.send_proxy:
        server += " send-proxy-v2"
    http = setup.mode == "http"
    lines = [
        "global",
        f"    nbthread {setup.workers}",
        f"    maxconn {setup.max_conns}",
        "defaults",
        f"    mode {setup.mode}",
        "    timeout connect 5s",
        "    timeout client 300s",
        "    timeout server 300s",
        *(["    timeout http-request 10s", "    timeout http-keep-alive 300s"] if http else []),
        # On a reload the old worker otherwise closes idle keep-alive connections at once, racing
        # the client's next request (wrk counted 25-138 read errors per 10 reloads): with it, the
        # old worker answers that request with "Connection: close", as edgeproxy's drain does.
        *(["    option idle-close-on-response"] if http else []),
        "frontend bench",
        f"    bind 127.0.0.1:{port}" + (f" ssl crt {setup.tls_pem} alpn http/1.1" if setup.tls_pem else ""),
        f"    maxconn {setup.max_conns}",
        *(["    option forwardfor", "    http-request del-header X-Forwarded-For"] if http else []),
        *_haproxy_sni(setup),
        "backend nginx",
        f"    {server}",
        *(["backend dead", f"    server dead 127.0.0.1:{setup.dead_port}"] if setup.sni else []),
        "",
    ]
    return "\n".join(lines)


def _haproxy_sni(setup: Setup) -> list[str]:
    """The frontend's routing: by the ClientHello's SNI (HAProxy's documented recipe), or none."""
    if setup.sni is None:
        return ["    default_backend nginx"]
    return [
        "    tcp-request inspect-delay 5s",
        "    tcp-request content accept if { req.ssl_hello_type 1 }",
        f"    use_backend nginx if {{ req.ssl_sni -i {setup.sni} }}",
        "    default_backend dead",
    ]


class EdgeProxy(Proxy):
    name = "edgeproxy"

    def __init__(self, setup: Setup, workdir: Path, cpus: str | None, command: Sequence[str] = ()) -> None:
        self.dir = workdir / f"edgeproxy-{setup.mode}-{setup.workers}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = self.dir / "edgeproxy.yaml"
        cfg.write_text(yaml.safe_dump(edgeproxy_config(setup, self.port), sort_keys=False))
        # Run from the temp dir, so PYTHONPATH in ``command`` can point at another edgeproxy tree.
        base = list(command) or DEFAULT_EDGEPROXY
        check = subprocess.run(
            [*base, "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60, cwd=self.dir
        )
        if check.returncode != 0:
            raise Skip(f"edgeproxy check rejected the config: {_short(check.stderr or check.stdout)}")
        self.proc = Managed(self.name, pinned([*base, "run", "-c", str(cfg)], cpus), self.dir / "log", cwd=self.dir)
        try:
            self._ready(setup)
        except Skip as e:
            raise Skip(self._why_not(str(e))) from None
        if setup.workers > 1 and not wait_until(lambda: len(tree(self.pid)) >= setup.workers, timeout=10):
            n = len(tree(self.pid))
            self.stop()
            raise Skip(f"workers: {setup.workers} not supported by this build ({n} process serves)")

    def _why_not(self, fallback: str) -> str:
        """The error edgeproxy logged when it refused to start (e.g. a mode this build lacks)."""
        for line in reversed(self.proc.log_tail(20).splitlines()):
            try:
                rec: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") == "error":
                return f"edgeproxy: {rec.get('msg')}: {rec.get('error', '')}".rstrip(": ")
        return fallback

    def reload(self) -> None:
        self.proc.signal(signal.SIGHUP)


def edgeproxy_config(setup: Setup, port: int) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "bench",
        "bind": f"127.0.0.1:{port}",
        "mode": setup.mode,
        "backend": "nginx",
        "max_connections": setup.max_conns,
    }
    if setup.mode == "http":
        listener["forwarded"] = {"headers": ["x-forwarded-for"]}
    if setup.tls_pem:
        listener["tls"] = {"certificates": [setup.tls_pem]}
    backends: dict[str, Any] = {
        "nginx": {
            "send_proxy": "v2" if setup.send_proxy else "none",
            "health": {"type": "none"},
            "servers": [f"127.0.0.1:{setup.backend_port}"],
        }
    }
    if setup.sni is not None:
        listener["backend"] = "dead"
        listener["routes"] = [{"sni": setup.sni, "backend": "nginx"}]
        backends["dead"] = {"health": {"type": "none"}, "servers": [f"127.0.0.1:{setup.dead_port}"]}
    return {
        "workers": setup.workers,
        "log": {"level": "info", "access": "off"},
        "timeouts": {"connect": "5s", "client_idle": "300s", "server_idle": "300s", "drain": "5s"},
        "listeners": [listener],
        "backends": backends,
    }


# The order of each round: edgeproxy first, then HAProxy, round after round (A B A B ...).
# Each is called as (setup, workdir, cpus, command); an empty command means the default binary.
PROXIES: dict[str, Callable[[Setup, Path, str | None, Sequence[str]], Proxy]] = {
    "edgeproxy": EdgeProxy,
    "haproxy": HAProxy,
}
