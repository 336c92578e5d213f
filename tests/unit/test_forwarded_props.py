"""Property tests of the forwarding-header rewrite (SPEC.md "Client address semantics").

Whatever mix of forwarding headers a client sends (any letter case, underscores, repeats,
empty values, long lists), the rewritten head must parse (llhttp), keep every other line as it
was, and tell the backend exactly the true client; behind a trusted proxy, the joined list and
X-Real-IP must be right. The expected values are computed here independently of the code under
test.
"""

from __future__ import annotations

import ipaddress

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.config import Forwarded
from edgeproxy.config.model import FORWARDED_HEADERS
from edgeproxy.proto.forwarded import ForwardingPolicy
from edgeproxy.proto.http_request import RequestParser

TRUSTED_NETS = ("10.0.0.0/8", "2001:db8:ff::/48", "127.0.0.0/8")
BASE_NAMES = ["x-forwarded-for", "x-real-ip", "forwarded", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"]

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
trusted_ip = st.one_of(
    st.integers(0, 2**24 - 1).map(lambda n: str(ipaddress.IPv4Address(0x0A000000 + n))),
    st.integers(0, 2**80 - 1).map(lambda n: str(ipaddress.IPv6Address((0x20010DB800FF << 80) + n))),
)
any_ip = st.one_of(ipv4, ipv6, trusted_ip)
# header-value safe junk: visible ASCII and spaces, never CR/LF/NUL (llhttp refuses those heads)
junk = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip)


@st.composite
def spelled(draw: st.DrawFn, name: str) -> str:
    """``name`` in a random letter case with each ``-`` randomly ``_``."""
    chars = [
        ("_" if draw(st.booleans()) else "-") if c == "-" else (c.upper() if draw(st.booleans()) else c) for c in name
    ]
    return "".join(chars)


xff_value = st.one_of(
    st.lists(any_ip, max_size=25).map(", ".join),
    junk,
    st.just(""),
    st.lists(st.one_of(any_ip, junk), max_size=5).map(",".join),
)


@st.composite
def hostile_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    out = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(BASE_NAMES))
        value = draw(xff_value) if name in ("x-forwarded-for", "x-real-ip") else draw(junk)
        out.append((draw(spelled(name)), value))
    others = draw(st.lists(st.tuples(st.sampled_from(["Accept", "Cookie", "X-Req-Id", "x-forwarded"]), junk)))
    positions = sorted(draw(st.lists(st.integers(0, len(out)), min_size=len(others), max_size=len(others))))
    for pos, other in zip(reversed(positions), reversed(others), strict=True):
        out.insert(pos, other)
    return out


def build(headers: list[tuple[str, str]]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"GET /p?q HTTP/1.1\r\nHost: app.test\r\n{lines}\r\n".encode()


def rewrite(headers: list[tuple[str, str]], client: str, config: Forwarded) -> tuple[bytes, list[tuple[str, str]]]:
    head = build(headers)
    req = RequestParser()
    req.parse(head)
    out = ForwardingPolicy(config).for_client((client, 5555), ("192.0.2.1", 80)).rewrite(head, req)
    ll = httptools.HttpRequestParser(object())
    ll.feed_data(out)  # must still be a valid head
    assert out.startswith(b"GET /p?q HTTP/1.1\r\nHost: app.test\r\n") and out.endswith(b"\r\n\r\n")
    lines = out[:-4].decode().split("\r\n")[2:]  # after the request line and Host
    return out, [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines)]


def is_forwarding(name: str) -> bool:
    return name.lower().replace("_", "-") in BASE_NAMES


def values(parsed: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in parsed if k.lower().replace("_", "-") == name]


@given(hostile_headers(), st.one_of(ipv4, ipv6))
@settings(max_examples=200, deadline=None)
def test_untrusted_client_backend_sees_exactly_the_true_client(headers: list[tuple[str, str]], client: str) -> None:
    _, parsed = rewrite(headers, client, Forwarded(trusted=()))
    assert values(parsed, "x-forwarded-for") == [client]
    assert values(parsed, "x-real-ip") == [client]
    assert values(parsed, "x-forwarded-proto") == ["http"]
    for name in ("forwarded", "x-forwarded-host", "x-forwarded-port"):
        assert values(parsed, name) == []
    assert not [k for k, _ in parsed if "_" in k]
    # every other line is kept, in order
    assert [h for h in parsed if not is_forwarding(h[0])] == [(k, v) for k, v in headers if not is_forwarding(k)]


@given(hostile_headers(), st.one_of(ipv4, ipv6))
@settings(max_examples=200, deadline=None)
def test_all_headers_configured_untrusted(headers: list[tuple[str, str]], client: str) -> None:
    _, parsed = rewrite(headers, client, Forwarded(trusted=(), headers=FORWARDED_HEADERS))
    node = f'"[{client}]"' if ":" in client else client
    assert values(parsed, "forwarded") == [f"for={node};proto=http"]
    assert values(parsed, "x-forwarded-host") == ["app.test"]
    assert values(parsed, "x-forwarded-port") == ["80"]
    assert values(parsed, "x-forwarded-for") == [client]


def expected_real_ip(chain: list[str], trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    result = chain[-1]
    for entry in chain[::-1]:
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            break
        result = str(ip)
        if not any(ip in n for n in trusted):
            break
    return result


@given(hostile_headers(), trusted_ip)
@settings(max_examples=200, deadline=None)
def test_trusted_chain_is_joined_appended_and_real_ip_is_rightmost_untrusted(
    headers: list[tuple[str, str]], peer: str
) -> None:
    nets = [ipaddress.ip_network(n) for n in TRUSTED_NETS]
    config = Forwarded(trusted=tuple(nets), headers=FORWARDED_HEADERS)
    _, parsed = rewrite(headers, peer, config)
    incoming = [v for k, v in headers if k.lower() == "x-forwarded-for"]  # hyphen spellings only
    entries = [e.strip() for v in incoming for e in v.split(",") if e.strip()]
    assert values(parsed, "x-forwarded-for") == [", ".join([*entries, peer])]
    assert values(parsed, "x-real-ip") == [expected_real_ip([*entries, peer], nets)]
    fwd_in = [e.strip() for k, v in headers if k.lower() == "forwarded" for e in v.split(",") if e.strip()]
    node = f'"[{peer}]"' if ":" in peer else peer
    assert values(parsed, "forwarded") == [", ".join([*fwd_in, f"for={node};proto=http"])]
    for name in ("x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"):
        sent = [v for k, v in headers if k.lower() == name]
        ours = {"x-forwarded-proto": "http", "x-forwarded-host": "app.test", "x-forwarded-port": "80"}[name]
        assert values(parsed, name) == (sent or [ours])  # the first proxy's word is kept
    assert not [k for k, _ in parsed if "_" in k]
