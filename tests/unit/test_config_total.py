"""The config loader is total (issue 10): any bytes or text give a ``Config`` or a ``ConfigError``
whose every line is ``FILE:LINE: ...``, never another exception and never the loader's last-resort
"internal error"; libyaml and the pure-Python parser agree on every input. The contract itself is
fuzz/harness_config.py (also run by atheris: ``python -m fuzz config``); here hypothesis drives it
with bytes, text, and YAML generated from the schema with valid and hostile values mixed."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.config.values import _is_dotted_quad
from fuzz.harness_config import test_one_input as loader_contract
from tests.data.configs.make_corpus import inline, render

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOSTILE = [
    *["1:30", "017", "0x1f", "1e3", ".inf", ".nan", "-1", "0", "99999999999999999999", "yes", "no", "on", "off"],
    *["~", '""', "[]", "{}", "!!int abc", "!!bool maybe", "!!python/object:os.system x", "!custom x", "*nowhere"],
    *['"\\ud800"', '"\\0"', '"a\\nb"', "0s", "1000000h", "'[::1'", "&a x", "? x", "- x", "x: y", "#", "|", ">"],
]
NAMES = st.sampled_from(["web", "app", "front", "api", "on", "017", "a b", "nope"]) | st.sampled_from(HOSTILE)
ADDRESSES = st.sampled_from(["127.0.0.1:8080", "[::1]:8080", "0.0.0.0:8080", "127.0.0.1:9901", "10.0.0.1:80"])
INTS = st.sampled_from(["1", "2", "3", "100", "65535"]) | st.integers(-5, 70000).map(str)
DURATIONS = st.sampled_from(["1s", "250ms", "2m", "1h", "0s", "0.5s", "10s"])


def leaf(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly what the field takes; sometimes something hostile or random."""
    return st.one_of(valid, valid, valid, st.sampled_from(HOSTILE), st.text(max_size=8).map(repr))


def mapping(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    extra = st.dictionaries(st.sampled_from(["typo", "<<", "on", "1:30"]), leaf(NAMES), max_size=1)
    return st.builds(lambda a, b: {**a, **b}, st.fixed_dictionaries(required, optional=optional), extra)


ROUTE = mapping({"backend": leaf(NAMES)}, {"host": leaf(NAMES), "path_prefix": leaf(st.just("/api"))})
HEALTH = mapping(
    {},
    {
        "type": leaf(st.sampled_from(["tcp", "http", "none", "off"])),
        "interval": leaf(DURATIONS),
        "timeout": leaf(DURATIONS),
        "rise": leaf(INTS),
        "expect": leaf(st.sampled_from(["200", "2xx", '"200-399"'])),
    },
)
SERVER = leaf(ADDRESSES) | mapping({"address": leaf(ADDRESSES)}, {"weight": leaf(INTS), "backup": leaf(NAMES)})
BACKEND = mapping(
    {},
    {
        "balance": leaf(st.sampled_from(["roundrobin", "leastconn", "source", "random"])),
        "send_proxy": leaf(st.sampled_from(["none", "v1", "v2", "off"])),
        "retries": leaf(INTS),
        "health": HEALTH,
        "servers": st.lists(SERVER, max_size=3),
        "swarm": mapping({"service": leaf(NAMES), "port": leaf(INTS)}, {}),
    },
)
LISTENER = mapping(
    {"name": leaf(NAMES), "bind": leaf(ADDRESSES) | st.lists(leaf(ADDRESSES), max_size=2), "backend": leaf(NAMES)},
    {
        "mode": leaf(st.sampled_from(["tcp", "http", "udp"])),
        "routes": st.lists(ROUTE | leaf(NAMES), max_size=3),
        "max_connections": leaf(INTS),
        "accept_proxy": mapping({"trusted": leaf(st.just("10.0.0.0/8"))}, {}),
        "forwarded": mapping({}, {"trusted": leaf(st.just("[192.168.0.0/16]"))}),
    },
)
CONFIG = mapping(
    {"listeners": st.lists(LISTENER, max_size=3), "backends": st.dictionaries(NAMES, BACKEND, max_size=3)},
    {
        "workers": leaf(INTS | st.just("auto")),
        "timeouts": mapping({}, {"connect": leaf(DURATIONS), "drain": leaf(DURATIONS)}),
        "log": mapping({}, {"access": leaf(st.sampled_from(["off", "stderr", "/tmp/x.log"]))}),
        "admin": mapping({"bind": leaf(ADDRESSES)}, {"token": leaf(NAMES)}),
        "swarm": mapping({}, {"refresh": leaf(DURATIONS), "labels": leaf(NAMES)}),
    },
)


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes(data: bytes) -> None:
    loader_contract(data)


@SETTINGS
@given(st.text(max_size=500))
def test_any_text(text: str) -> None:
    loader_contract(text.encode("utf-8", "surrogatepass"))


@SETTINGS
@given(CONFIG, st.booleans())
def test_yaml_from_the_schema_with_hostile_values(tree: dict[str, Any], flow: bool) -> None:
    loader_contract((inline(tree) if flow else render(tree)).encode("utf-8", "surrogatepass"))


@SETTINGS
@given(st.lists(st.sampled_from([*HOSTILE, "listeners:", "  - ", "backends:", "    ", ": ", "\n", "[", "]", "{", ","])))
def test_yaml_token_soup(tokens: list[str]) -> None:
    loader_contract("".join(tokens).encode())


@SETTINGS
@given(st.text(alphabet="0123456789.x \u0661", max_size=20) | st.ip_addresses(v=4).map(str))
def test_the_fast_ipv4_check_agrees_with_ipaddress(text: str) -> None:
    try:
        canonical = str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        canonical = False
    assert _is_dotted_quad(text) == canonical
