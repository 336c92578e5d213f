"""listeners[].upgrades (issue 10 defect 4): the protocols an http request may switch to."""

from __future__ import annotations

import pytest

from edgeproxy.config import ConfigError, parse_config

BASE = """
listeners:
  - name: web
    bind: 127.0.0.1:8080
    mode: {mode}
    backend: b
{extra}
backends:
  b: {{servers: [127.0.0.1:9000]}}
"""


def load(extra: str = "", mode: str = "http") -> tuple[str, ...]:
    return parse_config(BASE.format(mode=mode, extra=extra).encode(), "t.yaml").listeners[0].upgrades


def errors(extra: str, mode: str = "http") -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(extra, mode)
    return [str(i) for i in e.value.issues]


def test_default_is_websocket_only() -> None:
    assert load() == ("websocket",)


def test_listed_protocols_lower_case_and_none() -> None:
    assert load("    upgrades: [WebSocket, tls]") == ("websocket", "tls")
    assert load("    upgrades: []") == ()


@pytest.mark.parametrize("name", ["h2c", "H2C", "h2"])
def test_h2c_is_refused_with_the_reason(name: str) -> None:
    (err,) = errors(f"    upgrades: [websocket, {name}]")
    assert err.startswith("t.yaml:7: listeners[0].upgrades[1]:") and "X-Forwarded-For" in err


def test_not_a_token_and_not_http() -> None:
    assert "not a protocol name" in errors('    upgrades: ["web socket"]')[0]
    assert "need mode: http" in errors("    upgrades: [websocket]", mode="tcp")[0]
