"""Property tests (hypothesis) of every parser of untrusted bytes in the HTTP path, and the
differential property of the relay against h11 (fuzz/differential.py).

Totality: any bytes give a parsed request / response / PROXY header or our own error, never
another exception; the properties are the fuzz harnesses' own (fuzz/harness_*.py), run here on
hypothesis' inputs so that CI checks them without atheris too.

Differential: for generated request streams (methods, targets, arbitrary header fields, forged
forwarding headers, Content-Length and chunked bodies with extensions and trailers, upgrades,
keep-alive and close, empty lines, cut anywhere into reads), what edgeproxy sends upstream parses
with h11 into the same requests with the same bodies, each with our X-Forwarded-For; and every
request up to the first that closes the connection is forwarded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import harness_chunked, harness_http_request, harness_http_response, harness_proxy_protocol
from fuzz.differential import check, quiet

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~", min_size=1)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20).map(str.encode)
PATH = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-._~%!$&'()*+,;=:@?", max_size=30).map(
    lambda p: b"/" + p.encode()
)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Req:
    method: bytes
    target: bytes
    fields: list[tuple[bytes, bytes]]
    body: bytes | None  # None: no body framing at all
    chunked: bool
    chunk_sizes: list[int]
    extension: bytes
    trailers: list[tuple[bytes, bytes]]
    close: bool
    http10: bool

    def encode(self) -> bytes:
        version = b"HTTP/1.0" if self.http10 else b"HTTP/1.1"
        lines = [b"%s %s %s" % (self.method, self.target, version)]
        if not self.http10:
            lines.append(b"Host: a.test")
        lines += [n + b": " + v for n, v in self.fields]
        if self.http10:
            lines.append(b"Connection: close" if self.close else b"Connection: keep-alive")
        elif self.close:
            lines.append(b"Connection: close")
        body = b""
        if self.body is not None:
            if self.chunked and not self.http10:
                lines.append(b"Transfer-Encoding: chunked")
                body = self._chunks()
            else:
                lines.append(b"Content-Length: %d" % len(self.body))
                body = self.body
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _chunks(self) -> bytes:
        assert self.body is not None
        out, pos = [], 0
        for size in [*self.chunk_sizes, len(self.body)]:
            piece = self.body[pos : pos + max(size, 1)]
            if not piece:
                break
            out.append(b"%x%s\r\n%s\r\n" % (len(piece), self.extension, piece))
            pos += len(piece)
        trailers = b"".join(n + b": " + v + b"\r\n" for n, v in self.trailers)
        return b"".join(out) + b"0\r\n" + trailers + b"\r\n"


SPECIAL_NAMES = b"X-Forwarded-For x_forwarded_for X-Real-IP Forwarded X-Forwarded-Proto X-Forwarded-Host Accept"
SPECIAL_NAMES += b" Keep-Alive TE Upgrade HTTP2-Settings Cookie"
FIELD_NAMES = st.one_of(TOKEN.map(lambda t: b"X-" + t.encode()), st.sampled_from(SPECIAL_NAMES.split()))
FIELD = st.tuples(FIELD_NAMES, VALUE)


@st.composite
def requests(draw: st.DrawFn) -> Req:
    fields = draw(st.lists(FIELD, max_size=5))
    body = draw(st.none() | st.binary(max_size=200))
    if draw(st.booleans()):
        # An allowed switch with a body is refused (llhttp takes the body for the new protocol);
        # an h2c offer is removed and its request goes on with its body.
        offers = [b"h2c", b"tls/1.2, websocket"] if body is not None else [b"websocket", b"WebSocket", b"h2c"]
        fields += [(b"Connection", b"Upgrade"), (b"Upgrade", draw(st.sampled_from(offers)))]
    return Req(
        method=draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])),
        target=draw(PATH),
        fields=fields,
        body=body,
        chunked=draw(st.booleans()),
        chunk_sizes=draw(st.lists(st.integers(min_value=1, max_value=64), max_size=4)),
        extension=draw(st.sampled_from([b"", b";a=b", b';name="v x"'])),
        trailers=draw(st.lists(st.tuples(TOKEN.map(lambda t: b"T-" + t.encode()), VALUE), max_size=2)),
        close=draw(st.booleans()) and draw(st.booleans()),
        http10=draw(st.integers(min_value=0, max_value=9)) == 0,
    )


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({0, len(stream), *(p % (len(stream) + 1) for p in points)})
    return [stream[a:b] for a, b in itertools.pairwise(marks)]


@given(
    st.lists(requests(), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=6),
    st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]),
)
@SETTINGS
def test_what_goes_upstream_is_what_the_client_sent(reqs: list[Req], points: list[int], gap: bytes) -> None:
    stream = gap.join(r.encode() for r in reqs)
    with quiet():
        run = check(cut(stream, points))
    # Every request up to the first that ends the connection was forwarded (none refused).
    ends = next((i for i, r in enumerate(reqs) if r.close or r.http10), len(reqs) - 1)
    assert len(run.seen) == ends + 1, (len(run.seen), reqs)


@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=6))
@SETTINGS
def test_any_bytes_through_the_relay(data: bytes, points: list[int]) -> None:
    with quiet():
        check(cut(data, points))


@given(st.lists(requests(), min_size=1, max_size=2), st.binary(max_size=40), st.integers(min_value=0))
@SETTINGS
def test_requests_with_bytes_flipped(reqs: list[Req], noise: bytes, where: int) -> None:
    """Near-valid streams: real requests with a few bytes overwritten somewhere."""
    stream = bytearray(b"".join(r.encode() for r in reqs))
    at = where % len(stream)
    stream[at : at + len(noise)] = noise
    with quiet():
        check(cut(bytes(stream), [at, at + len(noise)]))


@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_request_head_parser_and_rewrite_are_total(data: bytes) -> None:
    harness_http_request.test_one_input(data)


@given(st.integers(min_value=0, max_value=255), st.lists(requests(), min_size=1, max_size=1))
@settings(max_examples=300, deadline=None)
def test_generated_heads_parse_and_rewrite(mode: int, reqs: list[Req]) -> None:
    harness_http_request.test_one_input(bytes([mode]) + reqs[0].encode())


@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_chunked_reader_is_total_and_cut_invariant(data: bytes) -> None:
    harness_chunked.test_one_input(data)


@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_response_reading_is_total_and_cut_invariant(data: bytes) -> None:
    harness_http_response.test_one_input(data)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_proxy_header_parser_is_total(data: bytes) -> None:
    harness_proxy_protocol.test_one_input(data)


@given(st.binary(max_size=80), st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=4))
@settings(max_examples=500, deadline=None)
def test_proxy_v2_headers_with_any_tlvs(addr_junk: bytes, tlvs: list[tuple[int, bytes]]) -> None:
    """v2 INET headers with TLV blocks, well-formed or not (a random length byte now and then)."""
    block = b"".join(bytes([kind]) + len(value).to_bytes(2, "big") + value for kind, value in tlvs)
    block += addr_junk[:3] if addr_junk[:1] == b"\x00" else b""
    addr = bytes(12)
    header = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + (12 + len(block)).to_bytes(2, "big") + addr + block
    harness_proxy_protocol.test_one_input(header + addr_junk)
