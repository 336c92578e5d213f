"""The ``acme:`` section and ``listeners[].tls.acme`` (SPEC.md, "TLS")."""

from __future__ import annotations

import pytest

from edgeproxy.config import ConfigError, parse_config
from edgeproxy.config.model import AcmeConfig

BASE = """
listeners:
  - name: https
    bind: "127.0.0.1:8443"
    mode: http
    backend: web
    tls: {acme: %s}
backends:
  web: {servers: ["127.0.0.1:8080"]}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text.encode())
    return [f"{i.path}: {i.message}" for i in e.value.issues]


def test_acme_section_and_names() -> None:
    cfg = parse_config(
        (
            BASE % "[Example.COM, www.example.com., example.com]"
            + "acme:\n  directory: https://acme.test/dir\n  email: ops@example.com\n  renew_before: 20d\n"
            + "  storage: /var/lib/edgeproxy/acme\n  ca: /etc/ca.pem\n"
        ).encode()
    )
    assert cfg.acme == AcmeConfig(
        directory="https://acme.test/dir",
        email="ops@example.com",
        storage="/var/lib/edgeproxy/acme",
        ca="/etc/ca.pem",
        renew_before=20 * 86400.0,
    )
    assert cfg.acme_names() == ("example.com", "www.example.com")  # lower-cased, trailing dot gone, once
    assert not cfg.acme.in_swarm


def test_defaults() -> None:
    cfg = parse_config((BASE % "[a.test]" + "acme: {directory: https://acme.test/dir}\n").encode())
    assert cfg.acme is not None
    assert cfg.acme.storage == "/var/lib/edgeproxy/acme"
    assert cfg.acme.renew_before == 30 * 86400.0
    assert cfg.acme.email is None


def test_names_without_acme_section() -> None:
    assert errors(BASE % "[a.test]") == ["listeners[0].tls.acme: needs a top-level 'acme:' section (directory, email)"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ('"*.example.com"', "a wildcard needs the DNS-01 challenge"),
        ("10.0.0.1", "is an IP address"),
        ("a_b.test", "is not a DNS name"),
        ("-a.test", "is not a DNS name"),
        ("a..test", "is not a DNS name"),
        ("x" * 64 + ".test", "is not a DNS name"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    errs = errors(BASE % f"[{name}]" + "acme: {directory: https://acme.test/dir}\n")
    assert len(errs) == 1 and errs[0].startswith("listeners[0].tls.acme[0]: ") and message in errs[0], errs


def test_swarm_storage_needs_key_and_swarm_section() -> None:
    errs = errors(BASE % "[a.test]" + "acme: {directory: https://acme.test/dir, storage: swarm}\n")
    assert any("acme.storage: storage: swarm needs 'encryption_key'" in e for e in errs), errs
    assert any("acme.storage: storage: swarm needs a top-level 'swarm:' section" in e for e in errs), errs
    cfg = parse_config(
        (
            BASE % "[a.test]"
            + "swarm: {managers: [unix:///var/run/docker.sock]}\n"
            + "acme: {directory: https://acme.test/dir, storage: swarm, encryption_key: /run/secrets/k}\n"
        ).encode()
    )
    assert cfg.acme is not None and cfg.acme.in_swarm and cfg.acme.encryption_key == "/run/secrets/k"


def test_bad_acme_values() -> None:
    errs = errors(
        BASE % "[a.test]" + "acme: {directory: ftp://x, storage: relative/dir, renew_before: 30, colour: red}\n"
    )
    known = "directory, email, storage, ca, renew_before, encryption_key"
    assert f"acme.colour: unknown key 'colour' (known: {known})" in errs
    assert "acme.directory: 'ftp://x' is not an http(s) URL" in errs
    assert "acme.storage: 'relative/dir' must be an absolute directory path or 'swarm'" in errs
    assert any(e.startswith("acme.renew_before: invalid duration '30'") for e in errs), errs
    assert errors(BASE % "[a.test]" + "acme: {email: a@b.c}\n") == [
        "acme: missing 'directory' (the ACME server's directory URL)"
    ]


def test_duration_in_days() -> None:
    from edgeproxy.config import parse_duration
    from edgeproxy.config.values import MAX_PERIOD

    assert parse_duration("1d") == 86400.0
    assert parse_duration("30d", MAX_PERIOD) == 30 * 86400.0
    with pytest.raises(ValueError, match="too long"):
        parse_duration("30d")  # a timer: at most 24.8 days
