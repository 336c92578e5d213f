"""ACME wired into the running proxy (issue 14, phase 2): a real pebble and a real ``edgeproxy run``.

pebble validates HTTP-01 on its ``httpPort`` and TLS-ALPN-01 on its ``tlsPort`` at 127.0.0.1 (its
DNS answers every name with it): the proxy's plain listener binds the first, its TLS listener the
second, and the challenges are answered by the proxy itself, in the single process and in
workers. Clients are Python ``ssl`` sockets trusting pebble's issuing root (new at each start).
"""

from __future__ import annotations

import json
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    NO_CHECKS,
    EdgeProxy,
    HttpBackend,
    admin_json,
    connect,
    edgeproxy,
    free_port,
    metric,
    read_http_response,
    scrape,
)
from tests.pebble import Pebble, running_pebble

pytestmark = pytest.mark.timeout(180)
NAME = "shop.test"


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    with running_pebble(tmp_path / "pebble") as peb:
        yield peb


@pytest.fixture
def backend() -> Iterator[HttpBackend]:
    b = HttpBackend()
    try:
        yield b
    finally:
        b.close()


def proxy_config(
    peb: Pebble,
    backend: HttpBackend,
    storage: Path,
    *,
    workers: int = 1,
    plain: bool = True,
    tls_port: int | None = None,
    **acme: Any,
) -> dict[str, Any]:
    listeners: list[dict[str, Any]] = [
        {
            "name": "https",
            "bind": f"127.0.0.1:{tls_port or peb.tlsalpn01_port}",
            "mode": "http",
            "backend": "app",
            "tls": {"acme": [NAME]},
        }
    ]
    if plain:  # HTTP-01: answered before redirect_https (the rest is redirected)
        listeners.append(
            {
                "name": "http",
                "bind": f"127.0.0.1:{peb.http01_port}",
                "mode": "http",
                "backend": "app",
                "redirect_https": True,
            }
        )
    return {
        "workers": workers,
        "log": {"access": "stderr"},
        "timeouts": {"connect": "1s", "drain": "2s", "http_request": "5s"},
        "listeners": listeners,
        "backends": {"app": {"health": NO_CHECKS, "servers": [backend.address]}},
        "acme": {"directory": peb.directory, "ca": peb.ca, "email": "ops@example.com", "storage": str(storage), **acme},
    }


_roots: dict[Path, str] = {}


def client_context(peb: Pebble) -> ssl.SSLContext:
    """Trusting pebble's issuing root (read once: it is still needed once pebble is stopped)."""
    if peb.dir not in _roots:
        _roots[peb.dir] = peb.root_pem().decode()
    return ssl.create_default_context(cadata=_roots[peb.dir])


def tls_get(sock: ssl.SSLSocket, path: str = "/", host: str = NAME) -> tuple[int, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    with sock.makefile("rb") as f:
        status, _, body, _ = read_http_response(f)
    return status, body


def open_tls(peb: Pebble, port: int, name: str = NAME, ip: str = "127.0.0.1") -> ssl.SSLSocket:
    return client_context(peb).wrap_socket(connect(ip, port), server_hostname=name)


def serial(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert()
    assert cert is not None
    return str(cert["serialNumber"])


def first_certificate(
    peb: Pebble, port: int, started: float, timeout: float = 60.0, name: str = NAME, ip: str = "127.0.0.1"
) -> tuple[float, str]:
    """Seconds from ``started`` until a verified handshake for ``name`` succeeds, and the serial."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with open_tls(peb, port, name, ip) as s:
                status, body = tls_get(s, host=name)
                assert status == 200, body
                assert json.loads(body)["proto"] == ["https"]
                return time.monotonic() - started, serial(s)
        except (ssl.SSLError, OSError) as e:
            last = e
            time.sleep(0.1)
    raise AssertionError(f"no certificate for {name} within {timeout}s: {last!r}")


def access_ends(proxy: EdgeProxy, listener: str) -> list[str]:
    return [str(r.get("end")) for r in proxy.log_lines() if r.get("listener") == listener and "status" in r]


def validated_by(proxy: EdgeProxy) -> list[str]:
    return [str(r["challenges"]) for r in proxy.log_lines() if r.get("msg") == "acme: asking the CA to validate"]


@pytest.mark.parametrize("workers", [1, 2])
def test_http01_through_the_running_proxy(pebble: Pebble, backend: HttpBackend, tmp_path: Path, workers: int) -> None:
    """Empty storage: the proxy orders, answers pebble's HTTP-01 on its plain listener (before
    redirect_https), then serves the issued certificate on its TLS listener, no restart."""
    started = time.monotonic()
    with edgeproxy(proxy_config(pebble, backend, tmp_path / "acme", workers=workers)) as proxy:
        seconds, _ = first_certificate(pebble, pebble.tlsalpn01_port, started)
        order = proxy.wait_log(lambda r: r.get("msg") == "acme: certificate obtained")["seconds"]
        print(
            f"\nHTTP-01, workers {workers}: order {order} s, first certificate served {seconds:.2f} s after the start"
        )
        # the rest of the plain listener is still redirected
        with connect("127.0.0.1", pebble.http01_port) as s:
            s.sendall(f"GET /x HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
            with s.makefile("rb") as f:
                status, headers, _, _ = read_http_response(f)
        assert status == 308 and headers["location"].startswith(f"https://{NAME}")
        # an unknown token is not answered from the board: it goes on (here: to the redirect)
        with connect("127.0.0.1", pebble.http01_port) as s:
            s.sendall(b"GET /.well-known/acme-challenge/nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            with s.makefile("rb") as f:
                assert read_http_response(f)[0] == 308
    assert pebble.count("POST /order-plz") == 1
    ends = access_ends(proxy, "http")
    assert ends.count("acme_http01") >= 1, ends  # pebble's validation, answered by the proxy
    assert validated_by(proxy) == ["http-01"]
    assert not [r for r in proxy.log_lines() if r.get("level") == "error"]


def test_tls_alpn01_through_the_running_proxy(pebble: Pebble, backend: HttpBackend, tmp_path: Path) -> None:
    """No plain listener: the only challenge the proxy can answer is TLS-ALPN-01, on its TLS
    listener (acme-tls/1, before its own certificates); then that listener serves the result."""
    started = time.monotonic()
    with edgeproxy(proxy_config(pebble, backend, tmp_path / "acme", workers=2, plain=False)) as proxy:
        seconds, _ = first_certificate(pebble, pebble.tlsalpn01_port, started)
        order = proxy.wait_log(lambda r: r.get("msg") == "acme: certificate obtained")["seconds"]
        print(f"\nTLS-ALPN-01, workers 2: order {order} s, first certificate served {seconds:.2f} s after the start")
    assert pebble.count("POST /order-plz") == 1
    assert validated_by(proxy) == ["tls-alpn-01"]
    assert not [r for r in proxy.log_lines() if r.get("level") == "error"]


def test_restart_reuses_the_stored_certificate(pebble: Pebble, backend: HttpBackend, tmp_path: Path) -> None:
    config = proxy_config(pebble, backend, tmp_path / "acme")
    with edgeproxy(config):
        _, first = first_certificate(pebble, pebble.tlsalpn01_port, time.monotonic())
    started = time.monotonic()
    with edgeproxy(config):
        seconds, again = first_certificate(pebble, pebble.tlsalpn01_port, started)
    assert again == first
    assert pebble.count("POST /order-plz") == 1  # nothing ordered at the restart
    print(f"\nrestart: the stored certificate served {seconds:.2f} s after the start")


def test_renewal_swaps_the_certificate_without_a_failed_request(tmp_path: Path, backend: HttpBackend) -> None:
    """pebble issuing 12-second certificates: renewed about 4 s before the end, again and again.
    An open keep-alive connection sends requests all along (none fails), new connections get the
    new certificate, with two workers."""
    with running_pebble(tmp_path / "pebble", validity=12) as peb:
        with edgeproxy(proxy_config(peb, backend, tmp_path / "acme", workers=2)):
            _, first = first_certificate(peb, peb.tlsalpn01_port, time.monotonic())
            failures: list[str] = []
            done = threading.Event()
            sent = [0]

            def keep_alive() -> None:
                try:
                    with open_tls(peb, peb.tlsalpn01_port) as s:
                        while not done.is_set():
                            status, _ = tls_get(s, f"/{sent[0]}")
                            sent[0] += 1
                            if status != 200:
                                failures.append(str(status))
                            time.sleep(0.02)
                except (OSError, ValueError) as e:
                    failures.append(repr(e))

            t = threading.Thread(target=keep_alive)
            t.start()
            try:
                deadline = time.monotonic() + 40
                seen = {first}
                while len(seen) < 3 and time.monotonic() < deadline:
                    with open_tls(peb, peb.tlsalpn01_port) as s:
                        seen.add(serial(s))
                        assert tls_get(s)[0] == 200
                    time.sleep(0.2)
            finally:
                done.set()
                t.join(10)
            assert len(seen) >= 3, f"not renewed twice: {seen}"
            assert not failures, failures
            assert sent[0] > 50
        assert peb.count("POST /order-plz") >= 3


def test_sighup_adding_a_name_gets_it_a_certificate_and_keeps_the_others(
    pebble: Pebble, backend: HttpBackend, tmp_path: Path
) -> None:
    """A reload re-reads the certificate files and serves the ACME certificates with them (no gap
    for the name already held); a name added gets its own order. /metrics: orders by result and
    the certificates' expiry in the TLS family."""
    admin = free_port()
    config = proxy_config(pebble, backend, tmp_path / "acme", workers=2)
    config["admin"] = {"bind": f"127.0.0.1:{admin}"}
    with edgeproxy(config) as proxy:
        _, first = first_certificate(pebble, pebble.tlsalpn01_port, time.monotonic())
        config["listeners"][0]["tls"]["acme"] = [NAME, "new.test"]
        proxy.write_config(config)
        proxy.send(signal.SIGHUP)
        proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded", timeout=30)
        with open_tls(pebble, pebble.tlsalpn01_port) as s:
            assert serial(s) == first  # served across the reload, not ordered again
        seconds, _ = first_certificate(pebble, pebble.tlsalpn01_port, time.monotonic(), name="new.test")
        print(f"\nSIGHUP: the added name served {seconds:.2f} s after the reload")
        samples = scrape(admin)
        assert metric(samples, "edgeproxy_acme_orders_total", certificate=NAME, result="success") == 1
        assert metric(samples, "edgeproxy_acme_orders_total", certificate="new.test", result="success") == 1
        assert metric(samples, "edgeproxy_acme_orders_total", result="failure") == 0
        expiry = "edgeproxy_tls_certificate_expiry_timestamp_seconds"
        for name in (NAME, "new.test"):
            assert samples[(expiry, frozenset({("name", name)}))] > time.time() + 86400
        status = admin_json(admin, "/status")["acme"]
        assert [(c["certificate"], c["failures"], c["last_error"]) for c in status] == [
            ("new.test", 0, None),
            (NAME, 0, None),
        ]
    assert pebble.count("POST /order-plz") == 2


def test_ca_down_keeps_the_certificate_served_and_the_error_visible(tmp_path: Path, backend: HttpBackend) -> None:
    """pebble stopped after the first certificate (20 s validity): the renewal fails, is counted
    in /metrics and shown in /status, and the certificate held is still served meanwhile."""
    admin = free_port()
    with running_pebble(tmp_path / "pebble", validity=20) as peb:
        config = proxy_config(peb, backend, tmp_path / "acme")
        config["admin"] = {"bind": f"127.0.0.1:{admin}"}
        with edgeproxy(config) as proxy:
            _, first = first_certificate(peb, peb.tlsalpn01_port, time.monotonic())
            peb.stop()
            proxy.wait_log(lambda r: r.get("msg") == "acme: order failed", timeout=30)
            with open_tls(peb, peb.tlsalpn01_port) as s:
                assert serial(s) == first and tls_get(s)[0] == 200
            samples = scrape(admin)
            assert metric(samples, "edgeproxy_acme_orders_total", certificate=NAME, result="failure") >= 1
            assert metric(samples, "edgeproxy_acme_consecutive_failures", certificate=NAME) >= 1
            [status] = admin_json(admin, "/status")["acme"]
            assert "cannot reach the CA" in status["last_error"]


def test_with_user_the_account_key_stays_in_the_supervisor(tmp_path: Path, backend: HttpBackend) -> None:
    """``user: nobody``: the supervisor (root) orders and keeps the account key; the worker,
    dropped to nobody, answers HTTP-01 and serves the certificate, and cannot open the key."""
    import errno

    from tests import process_probe
    from tests.privsep import NOBODY, directory, need_privsep, python_for

    need_privsep()
    with running_pebble(tmp_path / "pebble") as peb, directory(0o755) as storage:
        config = proxy_config(peb, backend, storage / "acme")
        config["user"] = "nobody"
        with edgeproxy(config, python=python_for()) as proxy:
            (worker,) = proxy.wait_log(lambda r: r.get("msg") == "edgeproxy started")["worker_pids"]
            assert process_probe.credentials(worker) == process_probe.dropped(NOBODY, NOBODY)
            seconds, _ = first_certificate(peb, peb.tlsalpn01_port, time.monotonic())
            [account] = storage.glob("acme/*/account-*.json")
            assert process_probe.open_errno(worker, str(account)) == errno.EACCES
            assert process_probe.open_errno(proxy.proc.pid, str(account)) == 0
            print(f"\nuser nobody: first certificate served {seconds:.2f} s after the start")
    assert validated_by(proxy) == ["http-01"]
