"""HTTPS termination end to end (issue 13): real clients (Python ``ssl``, curl, openssl s_client)
against ``edgeproxy run``, certificates from a throw-away CA made at test time (trustme), and a
real HTTP backend that reports what it saw (X-Forwarded-For, X-Forwarded-Proto).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests import process_probe
from tests.helpers import (
    NO_CHECKS,
    Backend,
    HttpBackend,
    connect,
    edgeproxy,
    free_port,
    metric,
    read_http_response,
    scrape,
    whoami_handler,
)
from tests.helpers import test_dir as make_dir
from tests.privsep import directory, need_privsep, python_for


class Pki:
    """A throw-away CA and PEM files for the certificates the tests serve."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.dir = make_dir("edgeproxy-tls-")
        self.ca_file = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, stem: str, *names: str, **kw: Any) -> dict[str, str]:
        """``{cert, key}`` files for ``names`` (chain included in the cert file)."""
        leaf = self.ca.issue_cert(*names, **kw)
        cert, key = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return {"cert": str(cert), "key": str(key)}

    def client(self, **kw: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def https_config(
    port: int,
    backend: HttpBackend,
    certificates: list[dict[str, str]],
    *,
    workers: int = 1,
    admin: int | None = None,
    **tls: Any,
) -> dict[str, Any]:
    """One TLS http listener ``https`` on 127.0.0.1:port to ``backend`` (and the admin endpoint)."""
    return {
        **({"admin": {"bind": f"127.0.0.1:{admin}"}} if admin else {}),
        "workers": workers,
        "log": {"access": "stderr"},
        "timeouts": {"connect": "1s", "drain": "2s", "http_request": "3s"},
        "listeners": [
            {
                "name": "https",
                "bind": f"127.0.0.1:{port}",
                "mode": "http",
                "backend": "app",
                "tls": {"certificates": certificates, **tls},
            }
        ],
        "backends": {"app": {"health": NO_CHECKS, "servers": [backend.address]}},
    }


def tls_connect(
    port: int, ctx: ssl.SSLContext, sni: str | None, source: str = "127.0.0.1", session: ssl.SSLSession | None = None
) -> ssl.SSLSocket:
    raw = connect("127.0.0.1", port, source=source)
    if sni is None:
        ctx.check_hostname = False
    return ctx.wrap_socket(raw, server_hostname=sni, session=session)


def get(
    s: ssl.SSLSocket, path: str = "/", host: str = "a.test", close: bool = False
) -> tuple[int, dict[str, str], bytes]:
    extra = "Connection: close\r\n" if close else ""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    with s.makefile("rb") as f:
        status, headers, body, _ = read_http_response(f)
    return status, headers, body


def served_names(s: ssl.SSLSocket) -> list[str]:
    cert = s.getpeercert()
    assert cert is not None
    return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


@pytest.mark.parametrize("workers", [1, 2])
def test_https_sni_picks_the_certificate_and_the_backend_sees_the_client(pki: Pki, workers: int) -> None:
    a = pki.issue("a", "a.test")
    wild = pki.issue("wild", "*.b.test")
    backend = HttpBackend()
    port = free_port()
    with edgeproxy(https_config(port, backend, [a, wild], workers=workers)) as proxy:
        for source, sni, names in [
            ("127.0.0.2", "a.test", ["a.test"]),
            ("127.0.0.3", "x.b.test", ["*.b.test"]),
            ("127.0.0.4", None, ["a.test"]),  # no SNI: the first certificate
            ("127.0.0.5", "other.test", ["a.test"]),  # unknown name: the first certificate
        ]:
            ctx = pki.client(check_hostname=sni != "other.test")
            with tls_connect(port, ctx, sni, source) as s:
                assert served_names(s) == names
                assert s.selected_alpn_protocol() is None  # the client offered none
                status, _, body = get(s)
                assert status == 200
                seen = json.loads(body)
                assert seen["xff"] == [source]
                assert seen["proto"] == ["https"]
                # keep-alive: a second request on the same TLS connection
                status, _, body = get(s, "/two")
                assert status == 200 and json.loads(body)["path"] == "/two"
    # (the access log is buffered: read once the proxy stopped)
    lines = [r for r in proxy.log_lines() if r.get("listener") == "https" and r.get("status") == 200]
    assert {(r["client"].split(":")[0], r["tls"], r["sni"]) for r in lines} >= {
        ("127.0.0.2", "TLSv1.3", "a.test"),
        ("127.0.0.4", "TLSv1.3", None),
    }


def test_versions_alpn_and_min_version_with_openssl(pki: Pki) -> None:
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port, port13 = free_port(), free_port()
    cfg = https_config(port, backend, [a])
    cfg["listeners"].append({**cfg["listeners"][0], "name": "only13", "bind": f"127.0.0.1:{port13}"})
    cfg["listeners"][1]["tls"] = {"certificates": [a], "min_version": "1.3"}

    def s_client(p: int, *args: str) -> str:
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{p}", "-servername", "a.test", "-CAfile"]
        out = subprocess.run([*cmd, str(pki.ca_file), *args], input=b"", capture_output=True, timeout=20, check=False)
        return out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")

    with edgeproxy(cfg):
        out = s_client(port, "-alpn", "http/1.1", "-tls1_2")
        assert "Protocol  : TLSv1.2" in out or "Protocol: TLSv1.2" in out, out
        assert "ALPN protocol: http/1.1" in out, out
        assert "Verify return code: 0 (ok)" in out, out
        out = s_client(port, "-alpn", "h2,http/1.1", "-tls1_3")
        assert "TLSv1.3" in out and "ALPN protocol: http/1.1" in out, out
        out = s_client(port, "-alpn", "h2")
        assert "No ALPN negotiated" in out, out
        out = s_client(port13, "-tls1_2")
        assert "alert protocol version" in out or "no protocols available" in out, out
        assert "TLSv1.3" in s_client(port13, "-tls1_3")


def test_curl_with_the_ca(pki: Pki) -> None:
    a = pki.issue("a", "a.test", "www.a.test")
    backend = HttpBackend()
    port = free_port()
    with edgeproxy(https_config(port, backend, [a])):
        url = f"https://www.a.test:{port}/hello?x=1"
        out = subprocess.run(
            ["curl", "-sS", "--resolve", f"www.a.test:{port}:127.0.0.1", "--cacert", str(pki.ca_file), url],
            capture_output=True,
            timeout=20,
            check=True,
        )
        seen = json.loads(out.stdout)
        assert seen["path"] == "/hello?x=1" and seen["xff"] == ["127.0.0.1"] and seen["proto"] == ["https"]


def test_session_resumption(pki: Pki) -> None:
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port = free_port()
    with edgeproxy(https_config(port, backend, [a])):
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = pki.client(maximum_version=version)
            with tls_connect(port, ctx, "a.test") as s:
                assert get(s)[0] == 200  # (TLS 1.3: the ticket comes after the handshake)
                session = s.session
            with tls_connect(port, ctx, "a.test", session=session) as s:
                assert s.session_reused, version
                assert get(s)[0] == 200


def test_accept_proxy_header_is_read_before_the_handshake(pki: Pki) -> None:
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port = free_port()
    cfg = https_config(port, backend, [a])
    cfg["listeners"][0]["accept_proxy"] = {"trusted": ["127.0.0.9/32"]}
    with edgeproxy(cfg):
        raw = connect("127.0.0.1", port, source="127.0.0.9")
        raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n")
        with pki.client().wrap_socket(raw, server_hostname="a.test") as s:
            assert json.loads(get(s)[2])["xff"] == ["203.0.113.7"]
        # an untrusted peer's connection is TLS from the first byte
        with tls_connect(port, pki.client(), "a.test", source="127.0.0.8") as s:
            assert json.loads(get(s)[2])["xff"] == ["127.0.0.8"]


def test_forwarded_port_and_hsts(pki: Pki) -> None:
    a = pki.issue("a", "a.test")
    backend = HttpBackend(handler=_answer_with_headers)
    port = free_port()
    cfg = https_config(port, backend, [a], hsts="365d")
    cfg["listeners"][0]["forwarded"] = {"headers": ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-port"]}
    with edgeproxy(cfg), tls_connect(port, pki.client(), "a.test") as s:
        status, headers, body = get(s)
        assert status == 200
        seen = json.loads(body)
        assert seen["x-forwarded-port"] == [str(port)] and seen["x-forwarded-proto"] == ["https"]
        assert headers["strict-transport-security"] == "max-age=31536000"


def _answer_with_headers(req: Any, conn: socket.socket) -> bool:
    seen: dict[str, list[str]] = {}
    for k, v in req.headers:
        seen.setdefault(k.lower(), []).append(v)
    body = json.dumps(seen).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return True


def test_garbage_plain_http_and_half_open_handshakes_do_not_hurt_a_client(pki: Pki) -> None:
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port, admin = free_port(), free_port()
    cfg = https_config(port, backend, [a], admin=admin)
    with edgeproxy(cfg) as proxy:
        # 50 half-open handshakes: the first bytes of a ClientHello, then nothing
        half = [connect("127.0.0.1", port, source="127.0.0.20") for _ in range(50)]
        for h in half:
            h.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        # a plain HTTP client is closed (no response it could take for one)
        with connect("127.0.0.1", port, source="127.0.0.21") as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            assert closed_by_peer(plain)
        with connect("127.0.0.1", port, source="127.0.0.22") as junk:
            junk.sendall(bytes(range(256)) * 4)
            assert closed_by_peer(junk)
        # meanwhile a normal client is served, more than once
        for _ in range(5):
            with tls_connect(port, pki.client(), "a.test", source="127.0.0.23") as s:
                assert json.loads(get(s)[2])["xff"] == ["127.0.0.23"]
        # the half-open ones are closed at timeouts.http_request (3 s)
        deadline = time.monotonic() + 20
        for h in half:
            assert closed_by_peer(h, max(0.1, deadline - time.monotonic()))
            h.close()
        samples = scrape(admin)
        assert metric(samples, "edgeproxy_tls_handshakes_total", listener="https", result="ok") == 5
        assert metric(samples, "edgeproxy_tls_handshakes_total", listener="https", result="failed") == 52
    ends = [r.get("end") for r in proxy.log_lines() if r.get("listener") == "https"]
    assert ends.count("tls_timeout") == 50 and ends.count("tls_bad_hello") == 2
    line = next(r for r in proxy.log_lines() if r.get("end") == "tls_bad_hello" and ".21:" in r["client"])
    assert "plain HTTP" in line["error"]


def closed_by_peer(s: socket.socket, timeout: float = 10.0) -> bool:
    """The peer closed without sending anything (a reset counts: it closed with our bytes unread)."""
    s.settimeout(timeout)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_redirect_https_from_a_plain_listener(pki: Pki) -> None:
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port, plain = free_port(), free_port()
    cfg = https_config(port, backend, [a])
    cfg["listeners"].append(
        {"name": "http", "bind": f"127.0.0.1:{plain}", "mode": "http", "backend": "app", "redirect_https": True}
    )
    with edgeproxy(cfg), connect("127.0.0.1", plain) as c, c.makefile("rb") as f:
        c.sendall(b"POST /p/a?q=1 HTTP/1.1\r\nHost: a.test:8080\r\nContent-Length: 0\r\n\r\n")
        status, headers, _, _ = read_http_response(f)
        assert status == 308 and headers["location"] == f"https://a.test:{port}/p/a?q=1"
        c.sendall(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n")
        assert read_http_response(f)[0] == 400
    assert not backend.requests


def check(proxy_cfg: dict[str, Any], where: Path) -> subprocess.CompletedProcess[str]:
    import yaml

    path = where / "check.yaml"
    path.write_text(yaml.safe_dump(proxy_cfg, sort_keys=False))
    return subprocess.run(
        ["python", "-m", "edgeproxy", "check", "-c", str(path)], capture_output=True, text=True, timeout=30
    )


def test_check_refuses_bad_certificate_files_with_the_yaml_path(pki: Pki) -> None:
    import datetime

    backend = HttpBackend()
    a = pki.issue("a", "a.test")
    b = pki.issue("b", "b.test")
    now = datetime.datetime.now(datetime.UTC)
    expired = pki.issue(
        "old", "old.test", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )
    soon = pki.issue("soon", "soon.test", not_after=now + datetime.timedelta(days=5))
    port = free_port()
    cases = [
        ({"cert": str(pki.dir / "missing.pem"), "key": a["key"]}, "certificates[1].cert", "cannot read"),
        ({"cert": a["cert"], "key": b["key"]}, "certificates[1].key", "does not match"),
        (expired, "certificates[1].cert", "expired"),
    ]
    for bad, where, why in cases:
        out = check(https_config(port, backend, [a, bad]), pki.dir)
        assert out.returncode == 1, out
        assert f"listeners[0].tls.{where}" in out.stderr and why in out.stderr, out.stderr
        assert "check.yaml:" in out.stderr  # file:line
    out = check(https_config(port, backend, [a, soon]), pki.dir)
    assert out.returncode == 0, out.stderr
    assert "listeners[0].tls.certificates[1].cert" in out.stderr and "warning" in out.stderr


def test_sighup_swaps_the_certificate_under_load(pki: Pki) -> None:
    """New handshakes get the new certificate, a connection opened before keeps working, and no
    request fails across the swap (2 workers)."""
    first = pki.issue("swap", "a.test", organization_name="first")
    backend = HttpBackend()
    port = free_port()
    with edgeproxy(https_config(port, backend, [first], workers=2)) as proxy:
        before = tls_connect(port, pki.client(), "a.test")
        assert get(before)[0] == 200
        load = HttpsLoad(port, pki.client(), clients=3)
        try:
            time.sleep(0.5)
            second = pki.ca.issue_cert("a.test", organization_name="second")
            Path(first["cert"]).write_bytes(b"".join(b.bytes() for b in second.cert_chain_pems))
            second.private_key_pem.write_to_path(first["key"])
            proxy.send(signal.SIGHUP)
            proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded", timeout=20)
            deadline = time.monotonic() + 10
            while organization(port, pki) != "second":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            load.stop()
        assert load.ok > 20 and not load.failures, load.failures[:5]
        assert get(before)[0] == 200  # the connection from before still works
        before.close()


def organization(port: int, pki: Pki) -> str:
    with tls_connect(port, pki.client(), "a.test") as s:
        cert = s.getpeercert()
        assert cert is not None
        return next(v for rdn in cert["subject"] for k, v in rdn if k == "organizationName")


class HttpsLoad:
    """Clients making one HTTPS request per new TLS connection in threads, until ``stop()``."""

    def __init__(self, port: int, ctx: ssl.SSLContext, clients: int = 3) -> None:
        self.port, self.ctx = port, ctx
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with tls_connect(self.port, self.ctx, "a.test") as s:
                    status = get(s, close=True)[0]
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {status}")
            except (OSError, ValueError) as e:
                self.failures.append(repr(e))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_large_bodies_both_ways_through_tls(pki: Pki) -> None:
    """Flow control through the TLS layer: a 4 MiB upload and a 16 MiB download on one
    keep-alive connection, the client reading slowly at first."""
    a = pki.issue("a", "a.test")
    big = bytes(range(256)) * (16 * 4096)

    def handler(req: Any, conn: socket.socket) -> bool:
        body = big if req.target == "/big" else str(len(req.body)).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True

    backend = HttpBackend(handler=handler)
    port = free_port()
    with edgeproxy(https_config(port, backend, [a])), tls_connect(port, pki.client(), "a.test") as s:
        upload = b"x" * (4 << 20)
        s.sendall(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % len(upload) + upload)
        with s.makefile("rb") as f:
            status, _, body, _ = read_http_response(f)
            assert (status, body) == (200, str(len(upload)).encode())
            s.sendall(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
            time.sleep(1.0)  # the proxy's buffers fill: it must pause, not drop or balloon
            status, _, body, _ = read_http_response(f)
            assert status == 200 and body == big


def test_reload_with_a_bad_certificate_keeps_serving_and_metrics_show_expiry(pki: Pki) -> None:
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port, admin = free_port(), free_port()
    cfg = https_config(port, backend, [a], admin=admin)
    with edgeproxy(cfg) as proxy:
        samples = scrape(admin)
        expiry = samples[("edgeproxy_tls_certificate_expiry_timestamp_seconds", frozenset({("name", "a.test")}))]
        assert expiry > time.time() + 300 * 86400
        b = pki.issue("b", "b.test")
        cfg["listeners"][0]["tls"]["certificates"] = [{"cert": a["cert"], "key": b["key"]}]
        proxy.write_config(cfg)
        proxy.send(signal.SIGHUP)
        failed = proxy.wait_log(lambda r: r.get("msg", "").startswith("reload failed"), timeout=20)
        assert failed["step"] == "certificates"
        assert "listeners[0].tls.certificates[0].key" in failed["errors"][0]
        assert "does not match" in failed["errors"][0]
        with tls_connect(port, pki.client(), "a.test") as s:
            assert get(s)[0] == 200
        assert metric(scrape(admin), "edgeproxy_config_reloads_total", result="failure") == 1


def test_tls_on_a_tcp_listener_terminates_then_relays(pki: Pki) -> None:
    """tcp mode with tls: the backend gets the plaintext; no ALPN is offered by default."""
    a = pki.issue("a", "a.test")
    backend = Backend(whoami_handler)
    port = free_port()
    cfg = https_config(port, HttpBackend(), [a])
    cfg["listeners"][0]["mode"] = "tcp"
    cfg["backends"]["app"]["servers"] = [backend.address]
    ctx = pki.client()
    ctx.set_alpn_protocols(["http/1.1"])
    with edgeproxy(cfg), tls_connect(port, ctx, "a.test", source="127.0.0.31") as s:
        assert s.selected_alpn_protocol() is None
        s.sendall(b"ping")
        got = b""
        while b"ping" not in got:
            chunk = s.recv(100)
            assert chunk
            got += chunk
        assert got.startswith(b"peer=127.0.0.1:")  # the backend's peer is the proxy; the bytes are plaintext


def test_reload_turns_tls_on_for_a_listener_that_stays(pki: Pki) -> None:
    """The same listener (name, mode, bind) gains tls by a reload: a keep-alive connection opened
    before stays plain HTTP and is still served; new connections must speak TLS."""
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port = free_port()
    cfg = https_config(port, backend, [a])
    tls = cfg["listeners"][0].pop("tls")
    with edgeproxy(cfg) as proxy, connect("127.0.0.1", port) as before, before.makefile("rb") as f:
        before.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert json.loads(read_http_response(f)[2])["proto"] == ["http"]
        cfg["listeners"][0]["tls"] = tls
        proxy.write_config(cfg)
        proxy.send(signal.SIGHUP)
        proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded", timeout=20)
        with tls_connect(port, pki.client(), "a.test") as s:
            assert json.loads(get(s)[2])["proto"] == ["https"]
        before.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert json.loads(read_http_response(f)[2])["proto"] == ["http"]


def test_pipelined_requests_then_a_fin_are_all_answered(pki: Pki) -> None:
    """Twenty requests in twenty TLS records, then a FIN (no close_notify, as many clients do): the
    FIN must reach the HTTP code after every record before it, so all are answered."""
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port = free_port()
    with edgeproxy(https_config(port, backend, [a])), tls_connect(port, pki.client(), "a.test") as s:
        for i in range(20):
            s.sendall(f"GET /{i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        with socket.socket(fileno=os.dup(s.fileno())) as same:
            same.shutdown(socket.SHUT_WR)  # a FIN under the TLS layer, without close_notify
        with s.makefile("rb") as f:
            paths = [json.loads(read_http_response(f)[2])["path"] for _ in range(20)]
        assert paths == [f"/{i}" for i in range(20)]


def test_workers_that_dropped_root_serve_keys_only_root_can_read(pki: Pki) -> None:
    """``user:`` + 2 workers: the key file is root's, 0600; the workers (nobody) cannot open it,
    the supervisor reads it and hands them the certificate, and HTTPS is served."""
    need_privsep()
    a = pki.issue("a", "a.test")
    backend = HttpBackend()
    port = free_port()
    with directory(0o755) as d:
        key = d / "a.key"
        key.write_bytes(Path(a["key"]).read_bytes())
        key.chmod(0o600)
        cfg = https_config(port, backend, [{"cert": a["cert"], "key": str(key)}], workers=2)
        cfg["user"] = "nobody"
        cfg["log"]["access"] = "off"
        with edgeproxy(cfg, python=python_for()) as proxy:
            started = proxy.wait_log(lambda r: r.get("msg") == "edgeproxy started")
            for worker in started["worker_pids"]:
                assert process_probe.open_errno(worker, str(key)) == errno.EACCES
            for source in ("127.0.0.41", "127.0.0.42", "127.0.0.43"):
                with tls_connect(port, pki.client(), "a.test", source=source) as s:
                    assert json.loads(get(s)[2])["xff"] == [source]
