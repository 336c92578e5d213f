"""``listeners[].tls`` (certificates, min_version, alpn, hsts) and ``redirect_https`` (SPEC.md,
"TLS"), and the sans-IO pieces of proto/https.py."""

from __future__ import annotations

import pytest

from edgeproxy.config import ConfigError, parse_config
from edgeproxy.config.model import CertificateFiles
from edgeproxy.proto.https import https_location, redirect_response, with_hsts

BASE = """
listeners:
  - name: https
    bind: "127.0.0.1:8443"
    mode: %s
    backend: web
    tls: %s
  - name: plain
    bind: "127.0.0.1:8080"
    mode: http
    backend: web
    redirect_https: %s
backends:
  web: {servers: ["127.0.0.1:9000"]}
"""
CERT = "{certificates: [{cert: /c.pem, key: /c.key}, /both.pem]}"


def config(mode: str = "http", tls: str = CERT, redirect: str = "false") -> str:
    return BASE % (mode, tls, redirect)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text.encode())
    return [f"{i.path}: {i.message}" for i in e.value.issues]


def test_defaults_and_certificate_entries() -> None:
    cfg = parse_config(config(redirect="true").encode())
    tls = cfg.listeners[0].tls
    assert tls is not None
    assert tls.certificates == (CertificateFiles("/c.pem", "/c.key"), CertificateFiles("/both.pem"))
    assert tls.certificates[1].where == "listeners[0].tls.certificates[1]" and tls.certificates[1].line == 7
    assert (tls.min_version, tls.alpn, tls.hsts) == ("1.2", ("http/1.1",), None)
    assert cfg.listeners[1].redirect_https == 8443  # true: the first TLS http listener's port


def test_tcp_listener_offers_no_alpn_by_default_and_hsts_parses() -> None:
    tcp = parse_config(config("tcp").encode()).listeners[0].tls
    assert tcp is not None and tcp.alpn == ()
    tls = "{certificates: [/a.pem], min_version: '1.3', hsts: 365d}"
    http = parse_config(config(tls=tls, redirect="443").encode())
    assert http.listeners[0].tls is not None and http.listeners[0].tls.hsts == 365 * 86400
    assert http.listeners[0].tls.min_version == "1.3" and http.listeners[1].redirect_https == 443


@pytest.mark.parametrize(
    ("mode", "tls", "redirect", "want"),
    [
        ("udp", CERT, "false", "listeners[0].tls: tls is not supported on udp"),
        ("http", "{certificates: []}", "false", "listeners[0].tls.certificates: needs at least one"),
        ("http", "{min_version: '1.2'}", "false", "listeners[0].tls: needs 'certificates'"),
        ("http", "{certificates: [/a.pem], min_version: '1.1'}", "false", "listeners[0].tls.min_version"),
        ("http", "{certificates: [/a.pem], alpn: [h2]}", "false", "h2 is not negotiated yet"),
        ("tcp", "{certificates: [/a.pem], hsts: 1d}", "false", "listeners[0].tls.hsts: hsts needs mode: http"),
        ("http", "{certificates: [{key: /k}]}", "false", "listeners[0].tls.certificates[0]: missing 'cert'"),
        ("http", CERT, "maybe", "listeners[1].redirect_https"),
    ],
)
def test_bad_tls_keys_name_their_path(mode: str, tls: str, redirect: str, want: str) -> None:
    assert any(want in e for e in errors(config(mode, tls, redirect))), errors(config(mode, tls, redirect))


def test_redirect_https_on_a_tls_listener_is_refused() -> None:
    text = config().replace("    tls: {certificates", "    redirect_https: true\n    tls: {certificates")
    assert any("redirect_https is for a plain http one" in e for e in errors(text))


@pytest.mark.parametrize(
    ("host", "target", "port", "want"),
    [
        (b"a.test", b"/p?q=1", 443, b"https://a.test/p?q=1"),
        (b"a.test:8080", b"/p", 8443, b"https://a.test:8443/p"),
        (b"[2001:db8::1]:80", b"/", 443, b"https://[2001:db8::1]/"),
        (b"a.test", b"http://a.test:80/x?y", 443, b"https://a.test/x?y"),
        (b"a.test", b"http://a.test?y", 443, b"https://a.test/?y"),
        (b"a.test", b"*", 443, b"https://a.test/"),
        (None, b"/x", 443, b"https://192.0.2.1/x"),
        (b"a test", b"/", 443, None),
        (b"a.test:x", b"/", 443, None),
        (b"[::1", b"/", 443, None),
        (b"a.test", b"/\r\nSet-Cookie: x", 443, None),
    ],
)
def test_https_location(host: bytes | None, target: bytes, port: int, want: bytes | None) -> None:
    assert https_location(host, target, port, "192.0.2.1") == want


def test_redirect_response_and_hsts() -> None:
    assert redirect_response(b"https://a/", close=True) == (
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://a/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    line = b"Strict-Transport-Security: max-age=60\r\n"
    assert with_hsts(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n", line) == b"HTTP/1.1 200 OK\r\nA: b\r\n" + line + b"\r\n"
    own = b"HTTP/1.1 200 OK\r\nstrict-transport-security: max-age=1; includeSubDomains\r\n\r\n"
    assert with_hsts(own, line) == own
