"""Config loading: valid files become frozen objects; every error is reported with path and line."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from edgeproxy.config import ConfigError, load_config, parse_config, parse_duration
from edgeproxy.config.values import parse_address

ROOT = Path(__file__).resolve().parents[2]


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text.encode(), "t.yaml")
    return [str(i) for i in e.value.issues]


def test_shipped_configs_are_valid() -> None:
    for path in sorted((ROOT / "config").glob("*.yaml")):
        cfg = load_config(str(path))
        assert cfg.listeners, path


def test_full_example_parses_to_frozen_objects() -> None:
    cfg = parse_config(b"""
workers: 2
timeouts: {connect: 250ms, client_idle: 2m, drain: 5s}
listeners:
  - name: web
    bind: ["0.0.0.0:8080", "[::]:8080"]
    mode: http
    backend: web
    routes: [{host: API.example.com, path_prefix: /v1, backend: api}]
    forwarded: {trusted: [192.168.0.0/16], headers: [x-forwarded-for, forwarded]}
    accept_proxy: {trusted: 10.0.0.0/8}
  - {name: pg, bind: "127.0.0.1:6432", backend: pg}
backends:
  web:
    balance: leastconn
    send_proxy: off
    servers: [10.1.0.1:80, {address: "[2001:db8::1]:80", weight: 3, backup: true}]
  api: {servers: [app.internal:9000], health: {type: http, path: /healthz, expect: 2xx}}
  pg: {send_proxy: v2, swarm: {service: pg, port: 5432}}
swarm: {managers: [unix:///var/run/docker.sock], refresh: 5s}
""")
    assert cfg.workers == 2
    assert cfg.timeouts.connect == 0.25 and cfg.timeouts.client_idle == 120 and cfg.timeouts.drain == 5
    web = cfg.listeners[0]
    assert [str(a) for a in web.bind] == ["0.0.0.0:8080", "[::]:8080"]
    assert web.routes[0].host == "api.example.com"
    assert web.forwarded.trusted == (ipaddress.ip_network("192.168.0.0/16"),)
    assert web.forwarded.headers == ("x-forwarded-for", "forwarded")
    assert web.accept_proxy is not None
    assert cfg.listeners[1].mode == "tcp"
    be = cfg.backends["web"]
    assert be.balance == "leastconn" and be.send_proxy == "none"
    assert be.servers[1].address.host == "2001:db8::1" and be.servers[1].weight == 3 and be.servers[1].backup
    assert cfg.backends["api"].health.expect == (200, 299)
    assert cfg.backends["api"].servers[0].address.host == "app.internal"
    assert cfg.backends["pg"].swarm is not None and cfg.backends["pg"].swarm.port == 5432
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workers = 3  # type: ignore[misc]


def test_all_errors_at_once_with_path_and_line() -> None:
    errs = errors_of("""listeners:
  - name: web
    bind: 0.0.0.0:8080
    backend: web
  - name: pg
    bind: ["127.0.0.1:8080", "[::1]:5432"]
    backend: wbe
    bakend: x
  - name: web
    bind: 127.0.0.1:99999
    backend: pg
backends:
  web:
    balance: fastest
    servers: [127.0.0.1:9000]
  pg:
    servers: [{address: "10.0.0.1:5432", weight: 0}]
""")
    assert errs == [
        "t.yaml:6: listeners[1].bind: 127.0.0.1:8080 clashes with 0.0.0.0:8080 of listeners[0] (web)",
        "t.yaml:7: listeners[1].backend: no backend named 'wbe' (known: web, pg); did you mean 'web'?",
        "t.yaml:8: listeners[1].bakend: unknown key 'bakend' (did you mean 'backend'?)",
        "t.yaml:9: listeners[2].name: duplicate listener name 'web' (also listeners[0])",
        "t.yaml:10: listeners[2].bind[0]: invalid address '127.0.0.1:99999': port must be 1-65535",
        "t.yaml:14: backends.web.balance: 'fastest' is not one of: roundrobin, leastconn, source, random",
        "t.yaml:17: backends.pg.servers[0].weight: 0 is out of range (1-256)",
    ]


def test_duplicate_backend_key_is_an_error_not_silently_replaced() -> None:
    errs = errors_of("""listeners: [{name: a, bind: "127.0.0.1:1", backend: web}]
backends:
  web: {servers: [127.0.0.1:2]}
  web: {servers: [127.0.0.1:3]}
""")
    assert errs == ["t.yaml:4: backends.web: duplicate name (the earlier one would be ignored)"]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("timeouts: {connect: 5}", "timeouts.connect: invalid duration '5': use a number and a unit"),
        ("workers: many", "workers: expected a whole number"),
        ("admin: {bind: 0.0.0.0:9901}", "admin.bind: 0.0.0.0:9901 is not a loopback address: set admin.token"),
        ("log: {level: loud}", "log.level: 'loud' is not one of: debug, info, warning, error"),
        ("swarm: {managers: [ftp://x]}", "swarm.managers[0]: 'ftp://x' must start with unix://"),
    ],
)
def test_top_level_errors(snippet: str, expected: str) -> None:
    errs = errors_of(f"""{snippet}
listeners: [{{name: a, bind: "127.0.0.1:1", backend: b}}]
backends: {{b: {{servers: [127.0.0.1:2]}}}}
""")
    assert len(errs) == 1 and expected in errs[0], errs


def test_mode_specific_rules() -> None:
    errs = errors_of("""listeners:
  - {name: t, bind: "127.0.0.1:1", mode: tcp, backend: b, routes: [{path_prefix: /x, backend: b}]}
  - {name: u, bind: "127.0.0.1:1", mode: udp, backend: v1, accept_proxy: {trusted: [10.0.0.0/8]}}
  - {name: h, bind: "127.0.0.1:2", mode: http, backend: b, routes: [{backend: b}]}
backends:
  b: {servers: [127.0.0.1:2]}
  v1: {send_proxy: v1, servers: [127.0.0.1:53], swarm: {service: dns, port: 53}}
""")
    text = "\n".join(errs)
    assert "listeners[0].routes[0].path_prefix: a tcp route matches the TLS server name: use 'sni'" in text
    assert "listeners[1].accept_proxy: accept_proxy is not supported on udp listeners" in text
    assert "listeners[1].backend: backend 'v1' has send_proxy: v1, which has no datagram form" in text
    assert "listeners[2].routes[0]: a route needs 'host', 'path_prefix' or both" in text
    assert "backends.v1.swarm: needs a top-level 'swarm:' section" in text
    # udp and tcp on the same port do not clash
    assert "clashes" not in text


def test_yaml_syntax_error_has_line() -> None:
    errs = errors_of("listeners:\n  - name: a\n   bind: x\n")
    assert len(errs) == 1 and errs[0].startswith("t.yaml:3: YAML syntax error")


def test_udp_backend_defaults_to_no_tcp_health_check() -> None:
    cfg = parse_config(b"""listeners: [{name: dns, bind: "127.0.0.1:53", mode: udp, backend: dns}]
backends: {dns: {servers: [127.0.0.1:5353]}}
""")
    assert cfg.backends["dns"].health.type == "none"
    assert cfg.timeouts.client_idle_for("udp") == 30 and cfg.timeouts.client_idle_for("tcp") == 60


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("5s", 5), ("2m", 120), ("1.5s", 1.5), ("1h", 3600)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5", "5 sec", "-1s", "s", ""])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_addresses() -> None:
    assert str(parse_address("[::1]:80")) == "[::1]:80"
    assert parse_address("[2001:DB8::1]:443").host == "2001:db8::1"
    for bad in ("::1:80", "1.2.3.4", "1.2.3.4:0", "[::1]80", "host:80"):
        with pytest.raises(ValueError):
            parse_address(bad)
    assert parse_address("host.example:80", allow_hostname=True).host == "host.example"


# -- tcp sni routes and backends.X.tls (issue 13) -------------------------------------------------
SNI_LISTENER = """
listeners:
  - name: sni
    bind: 127.0.0.1:8443
    mode: tcp
    backend: app
    routes:
"""


def test_tcp_sni_routes_are_lower_cased_names_and_wildcards() -> None:
    cfg = parse_config(
        (
            SNI_LISTENER + "      - {sni: Alpha.Example.COM., backend: app}\n"
            "      - {sni: '*.beta.example.com', backend: app}\n"
            "backends: {app: {servers: [127.0.0.1:9443]}}\n"
        ).encode()
    )
    assert [r.sni for r in cfg.listeners[0].routes] == ["alpha.example.com", "*.beta.example.com"]
    assert [r.host for r in cfg.listeners[0].routes] == [None, None]


def test_tcp_sni_route_errors_name_the_yaml_path() -> None:
    errs = "\n".join(
        errors_of(
            SNI_LISTENER + "      - {sni: 10.0.0.1, backend: app}\n"
            "      - {sni: '*', backend: app}\n"
            "      - {sni: 'a..b', backend: app}\n"
            "      - {backend: app}\n"
            "      - {sni: a.test, backend: nope}\n"
            "backends: {app: {servers: [127.0.0.1:9443]}}\n"
        )
    )
    assert "t.yaml:8: listeners[0].routes[0].sni: '10.0.0.1' is an IP address" in errs
    assert "listeners[0].routes[1].sni: '*' is not a DNS name (e.g. example.com or *.example.com)" in errs
    assert "listeners[0].routes[2].sni: 'a..b' is not a DNS name" in errs
    assert "listeners[0].routes[3]: a tcp route needs 'sni'" in errs
    assert "listeners[0].routes[4].backend:" in errs


def test_backend_tls_defaults_and_ca_file_read_by_the_loader(tmp_path: Path) -> None:
    import trustme

    ca = tmp_path / "ca.pem"
    # A bundle with a comment between certificates, as distributions ship them.
    ca.write_bytes(
        b"# ACME Root \xc3\xa9\n" + trustme.CA().cert_pem.bytes() + b"# second\n" + trustme.CA().cert_pem.bytes()
    )
    cfg = parse_config(
        f"""
listeners: [{{name: web, bind: 127.0.0.1:8080, mode: http, backend: a}}]
backends:
  a: {{servers: [127.0.0.1:9443], tls: {{}}}}
  b: {{servers: [127.0.0.1:9443], tls: true}}
  c: {{servers: [127.0.0.1:9443], tls: {{verify: false, sni: Db.Internal}}}}
  d: {{servers: [127.0.0.1:9443], tls: {{ca: {ca}}}}}
  e: {{servers: [127.0.0.1:9443], tls: off}}
""".encode()
    )
    tls = {name: b.tls for name, b in cfg.backends.items()}
    assert tls["a"] is not None and tls["a"].verify and tls["a"].ca is None
    assert tls["b"] == tls["a"]
    assert tls["c"] is not None and not tls["c"].verify and tls["c"].sni == "db.internal"
    assert tls["d"] is not None and tls["d"].ca == str(ca) and tls["d"].ca_pem.count(b"BEGIN CERTIFICATE") == 2
    assert b"#" not in tls["d"].ca_pem
    assert tls["e"] is None
    assert cfg.files() == {str(ca): tls["d"].ca_pem}


def test_backend_tls_ca_errors_have_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_bytes(b"")
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    errs = "\n".join(
        errors_of(f"""
listeners: [{{name: web, bind: 127.0.0.1:8080, mode: http, backend: a}}]
backends:
  a: {{servers: [127.0.0.1:9443], tls: {{ca: {tmp_path}/missing.pem}}}}
  b: {{servers: [127.0.0.1:9443], tls: {{ca: {tmp_path}/empty.pem}}}}
  c: {{servers: [127.0.0.1:9443], tls: {{ca: {tmp_path}/bad.pem}}}}
  d: {{servers: [127.0.0.1:9443], tls: {{ca: {tmp_path}}}}}
  e: {{servers: [127.0.0.1:9443], tls: {{ca: /dev/zero}}}}
  f: {{servers: [127.0.0.1:9443], tls: {{sni: 10.1.2.3, verify: 1, extra: x}}}}
""")
    )
    assert f"t.yaml:4: backends.a.tls.ca: cannot read {tmp_path}/missing.pem: No such file or directory" in errs
    assert (
        f"t.yaml:5: backends.b.tls.ca: no PEM certificate (-----BEGIN CERTIFICATE-----) in {tmp_path}/empty.pem" in errs
    )
    assert f"t.yaml:6: backends.c.tls.ca: {tmp_path}/bad.pem holds a certificate OpenSSL cannot read" in errs
    assert f"t.yaml:7: backends.d.tls.ca: {tmp_path} is not a regular file" in errs
    assert "t.yaml:8: backends.e.tls.ca: /dev/zero is not a regular file" in errs
    assert "t.yaml:9: backends.f.tls.sni: '10.1.2.3' is an IP address" in errs
    assert "backends.f.tls" in errs and "extra" in errs


def test_udp_backend_with_tls_is_refused() -> None:
    errs = "\n".join(
        errors_of("""
listeners: [{name: dns, bind: 127.0.0.1:5353, mode: udp, backend: a}]
backends: {a: {servers: [127.0.0.1:53], tls: {}}}
""")
    )
    assert "listeners[0].backend: backend 'a' has tls, which udp does not speak" in errs


def test_oversized_ca_file_is_refused(tmp_path: Path) -> None:
    from edgeproxy.config.files import MAX_FILE_BYTES

    big = tmp_path / "big.pem"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    errs = "\n".join(
        errors_of(f"""
listeners: [{{name: web, bind: 127.0.0.1:8080, mode: http, backend: a}}]
backends: {{a: {{servers: [127.0.0.1:9443], tls: {{ca: {big}}}}}}}
""")
    )
    assert f"{big} is larger than 4 MiB" in errs
