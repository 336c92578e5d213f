"""PROXY protocol v1/v2: byte-literal tests, cross-checks against the independent ``proxyprotocol``
package (both directions), incremental parsing and hypothesis properties."""

from __future__ import annotations

import socket
from array import array
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proxyprotocol.detect import ProxyProtocolDetect
from proxyprotocol.result import (
    ProxyResultIPv4,
    ProxyResultIPv6,
    ProxyResultLocal,
    ProxyResultUnknown,
)
from proxyprotocol.tlv import ProxyProtocolTLV
from proxyprotocol.v1 import ProxyProtocolV1
from proxyprotocol.v2 import ProxyProtocolV2

from edgeproxy.proto.proxy_protocol import (
    NEED_DATA,
    V1_MAX_LENGTH,
    V1_UNKNOWN,
    V2_LOCAL,
    V2_MAX_LENGTH,
    Addr,
    NeedDataType,
    ProxyHeader,
    ProxyHeaderError,
    build_v1,
    build_v2,
    crc32c,
    parse_proxy_header,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V4_SRC: Addr = ("192.168.0.1", 56324)
V4_DST: Addr = ("192.168.0.11", 443)
V6_SRC: Addr = ("2001:db8::1", 51000)
V6_DST: Addr = ("2001:db8:0:1::ff", 8443)

# Byte-for-byte expected headers, written out by hand from spec 2.1 / 2.2.
V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8:0:1::ff 51000 8443\r\n"
V2_INET_STREAM = SIG + b"\x21\x11\x00\x0c" + b"\xc0\xa8\x00\x01" + b"\xc0\xa8\x00\x0b" + b"\xdc\x04" + b"\x01\xbb"
V2_INET_DGRAM = V2_INET_STREAM[:13] + b"\x12" + V2_INET_STREAM[14:]
V6_SRC_PACKED = b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01"
V6_DST_PACKED = b"\x20\x01\x0d\xb8\x00\x00\x00\x01" + b"\x00" * 7 + b"\xff"
V2_INET6_STREAM = SIG + b"\x21\x21\x00\x24" + V6_SRC_PACKED + V6_DST_PACKED + b"\xc7\x38" + b"\x20\xfb"
V2_INET6_DGRAM = V2_INET6_STREAM[:13] + b"\x22" + V2_INET6_STREAM[14:]

HDR_V4_1 = ProxyHeader(1, False, V4_SRC, V4_DST)
HDR_V6_1 = ProxyHeader(1, False, V6_SRC, V6_DST)
HDR_V4_2 = ProxyHeader(2, False, V4_SRC, V4_DST)
HDR_V6_2 = ProxyHeader(2, False, V6_SRC, V6_DST)
LOCAL_1 = ProxyHeader(1, True, None, None)
LOCAL_2 = ProxyHeader(2, True, None, None)

Builder = Callable[[Addr, Addr], bytes]
PAYLOAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
DETECT = ProxyProtocolDetect()


def parsed(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int]:
    result = parse_proxy_header(data)
    assert result is not NEED_DATA, "expected a complete header"
    assert isinstance(result, tuple)
    return result


# --- builders, byte for byte ----------------------------------------------------------------


def test_constants() -> None:
    assert V1_UNKNOWN == b"PROXY UNKNOWN\r\n"
    assert V2_LOCAL == b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert V1_MAX_LENGTH == 107
    assert V2_MAX_LENGTH == 1240


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (V4_SRC, V4_DST, V1_TCP4),
        (V6_SRC, V6_DST, V1_TCP6),
        (
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        ),
        (("::1", 1), ("::", 2), b"PROXY TCP6 ::1 :: 1 2\r\n"),
        # Mixed families: the IPv4 side becomes IPv4-mapped IPv6, the line TCP6.
        (V6_SRC, ("10.0.0.1", 80), b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 51000 80\r\n"),
        (("10.0.0.1", 80), ("::1", 443), b"PROXY TCP6 ::ffff:10.0.0.1 ::1 80 443\r\n"),
        # IPv4-mapped input stays IPv6.
        (
            ("::ffff:1.2.3.4", 5),
            ("::ffff:5.6.7.8", 6),
            b"PROXY TCP6 ::ffff:1.2.3.4 ::ffff:5.6.7.8 5 6\r\n",
        ),
        # Non-canonical IPv6 is normalised (keeps the line within 107 bytes), zone id dropped.
        (
            ("2001:DB8:0000:0000:0000:0000:0000:0001", 1),
            ("fe80::1%eth0", 2),
            b"PROXY TCP6 2001:db8::1 fe80::1 1 2\r\n",
        ),
    ],
)
def test_build_v1_bytes(src: Addr, dst: Addr, expected: bytes) -> None:
    assert build_v1(src, dst) == expected


@pytest.mark.parametrize(
    ("src", "dst", "dgram", "expected"),
    [
        (V4_SRC, V4_DST, False, V2_INET_STREAM),
        (V4_SRC, V4_DST, True, V2_INET_DGRAM),
        (V6_SRC, V6_DST, False, V2_INET6_STREAM),
        (V6_SRC, V6_DST, True, V2_INET6_DGRAM),
        (
            ("10.0.0.1", 80),
            ("::1", 443),
            False,
            SIG
            + b"\x21\x21\x00\x24"
            + b"\x00" * 10
            + b"\xff\xff\x0a\x00\x00\x01"
            + b"\x00" * 15
            + b"\x01"
            + b"\x00\x50\x01\xbb",
        ),
        (
            ("::ffff:1.2.3.4", 1),
            ("::ffff:5.6.7.8", 2),
            True,
            SIG
            + b"\x21\x22\x00\x24"
            + b"\x00" * 10
            + b"\xff\xff\x01\x02\x03\x04"
            + b"\x00" * 10
            + b"\xff\xff\x05\x06\x07\x08"
            + b"\x00\x01\x00\x02",
        ),
    ],
)
def test_build_v2_bytes(src: Addr, dst: Addr, dgram: bool, expected: bytes) -> None:
    assert build_v2(src, dst, dgram=dgram) == expected


def test_build_v2_default_is_stream() -> None:
    assert build_v2(V4_SRC, V4_DST) == V2_INET_STREAM


@pytest.mark.parametrize("build", [build_v1, build_v2])
@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (("1.2.3", 1), V4_DST),
        (("01.2.3.4", 1), V4_DST),
        (("1.2.3.4 ", 1), V4_DST),
        (("1.2.3.4\r\n", 1), V4_DST),
        (V4_SRC, ("example.com", 80)),
        (("::g", 1), V6_DST),
        (("", 1), V4_DST),
        ((V4_SRC[0], -1), V4_DST),
        ((V4_SRC[0], 65536), V4_DST),
        (V6_SRC, (V6_DST[0], 70000)),
    ],
)
def test_build_rejects_bad_input(build: Builder, src: Addr, dst: Addr) -> None:
    with pytest.raises(ValueError, match=r"cannot build PROXY v[12] header"):
        build(src, dst)


@pytest.mark.parametrize("build", [build_v1, build_v2])
def test_build_rejects_non_int_port(build: Builder) -> None:
    with pytest.raises((ValueError, TypeError)):
        build(("1.2.3.4", 80.5), V4_DST)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError)):
        build(("1.2.3.4", "80"), V4_DST)  # type: ignore[arg-type]


# --- round trips: ours -> proxyprotocol and ours -> ours --------------------------------------

BUILT = [
    pytest.param(build_v1(V4_SRC, V4_DST), 1, None, id="v1-tcp4"),
    pytest.param(build_v1(V6_SRC, V6_DST), 1, None, id="v1-tcp6"),
    pytest.param(build_v1(V6_SRC, ("10.0.0.1", 80)), 1, None, id="v1-mixed"),
    pytest.param(build_v2(V4_SRC, V4_DST), 2, socket.SOCK_STREAM, id="v2-inet-stream"),
    pytest.param(build_v2(V4_SRC, V4_DST, dgram=True), 2, socket.SOCK_DGRAM, id="v2-inet-dgram"),
    pytest.param(build_v2(V6_SRC, V6_DST), 2, socket.SOCK_STREAM, id="v2-inet6-stream"),
    pytest.param(build_v2(V6_SRC, V6_DST, dgram=True), 2, socket.SOCK_DGRAM, id="v2-inet6-dgram"),
    pytest.param(build_v2(("10.0.0.1", 80), V6_DST), 2, socket.SOCK_STREAM, id="v2-mixed"),
]


def _same_addr(ours: Addr | None, theirs: object) -> bool:
    assert ours is not None
    return (ip_address(ours[0]), ours[1]) == theirs


@pytest.mark.parametrize(("header", "version", "protocol"), BUILT)
def test_built_headers_round_trip(header: bytes, version: int, protocol: socket.SocketKind | None) -> None:
    theirs = DETECT.unpack(header)
    assert theirs.proxied
    assert theirs.protocol == protocol
    ours, consumed = parsed(header + PAYLOAD)
    assert consumed == len(header)
    assert ours.version == version
    assert not ours.local
    assert _same_addr(ours.src, theirs.source)
    assert _same_addr(ours.dst, theirs.dest)


def test_health_check_headers_round_trip() -> None:
    assert not DETECT.unpack(V2_LOCAL).proxied
    assert isinstance(DETECT.unpack(V1_UNKNOWN), ProxyResultUnknown)
    assert parsed(V2_LOCAL) == (LOCAL_2, 16)
    assert parsed(V1_UNKNOWN) == (LOCAL_1, 15)


# --- headers packed by proxyprotocol parse with ours ------------------------------------------


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_proxyprotocol_v2_packer_ipv4(kind: socket.SocketKind) -> None:
    data = ProxyProtocolV2().pack(
        ProxyResultIPv4((IPv4Address("203.0.113.7"), 40000), (IPv4Address("10.1.2.3"), 80), protocol=kind)
    )
    assert parsed(data + PAYLOAD) == (
        ProxyHeader(2, False, ("203.0.113.7", 40000), ("10.1.2.3", 80)),
        len(data),
    )


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_proxyprotocol_v2_packer_ipv6(kind: socket.SocketKind) -> None:
    data = ProxyProtocolV2().pack(
        ProxyResultIPv6((IPv6Address("2001:db8::7"), 40000), (IPv6Address("::1"), 443), protocol=kind)
    )
    assert parsed(data) == (ProxyHeader(2, False, ("2001:db8::7", 40000), ("::1", 443)), 52)


def test_proxyprotocol_v2_packer_with_tlvs_are_skipped() -> None:
    tlv = ProxyProtocolTLV(alpn=b"h2", authority="example.com", unique_id=b"x" * 128)
    data = ProxyProtocolV2().pack(
        ProxyResultIPv4(
            (IPv4Address("1.2.3.4"), 1),
            (IPv4Address("5.6.7.8"), 2),
            protocol=socket.SOCK_STREAM,
            tlv=tlv,
        )
    )
    assert len(data) > 28 + 128
    assert parsed(data + PAYLOAD) == (
        ProxyHeader(2, False, ("1.2.3.4", 1), ("5.6.7.8", 2)),
        len(data),
    )


def test_proxyprotocol_v2_packer_local() -> None:
    data = ProxyProtocolV2().pack(ProxyResultLocal())
    assert parsed(data) == (LOCAL_2, 16)


def test_proxyprotocol_v1_packer() -> None:
    v1 = ProxyProtocolV1()
    data4 = v1.pack(ProxyResultIPv4((IPv4Address("1.2.3.4"), 1), (IPv4Address("5.6.7.8"), 2)))
    assert parsed(data4) == (ProxyHeader(1, False, ("1.2.3.4", 1), ("5.6.7.8", 2)), len(data4))
    data6 = v1.pack(ProxyResultIPv6((IPv6Address("2001:db8::1"), 3), (IPv6Address("::1"), 4)))
    assert parsed(data6) == (ProxyHeader(1, False, ("2001:db8::1", 3), ("::1", 4)), len(data6))
    # proxyprotocol writes UNKNOWN with four empty fields: "PROXY UNKNOWN    \r\n".
    unknown = v1.pack(ProxyResultUnknown())
    assert parsed(unknown) == (LOCAL_1, len(unknown))


# --- incremental parsing --------------------------------------------------------------------

COMPLETE = [
    pytest.param(V1_TCP4, (HDR_V4_1, len(V1_TCP4)), id="v1-tcp4"),
    pytest.param(V1_TCP6, (HDR_V6_1, len(V1_TCP6)), id="v1-tcp6"),
    pytest.param(V1_UNKNOWN, (LOCAL_1, 15), id="v1-unknown"),
    pytest.param(b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n", (LOCAL_1, 47), id="v1-unknown-long"),
    pytest.param(V2_INET_STREAM, (HDR_V4_2, 28), id="v2-inet"),
    pytest.param(V2_INET6_DGRAM, (HDR_V6_2, 52), id="v2-inet6"),
    pytest.param(V2_LOCAL, (LOCAL_2, 16), id="v2-local"),
    pytest.param(
        SIG + b"\x21\x11\x00\x13" + V2_INET_STREAM[16:] + b"\x04\x00\x04NOOP",
        (HDR_V4_2, 35),
        id="v2-inet-tlv",
    ),
]


@pytest.mark.parametrize(("header", "expected"), COMPLETE)
def test_every_split_point(header: bytes, expected: tuple[ProxyHeader, int]) -> None:
    for i in range(len(header)):
        assert parse_proxy_header(header[:i]) is NEED_DATA, f"split at {i}"
    assert parse_proxy_header(header) == expected
    assert parse_proxy_header(header + PAYLOAD) == expected


@pytest.mark.parametrize("convert", [bytes, bytearray, memoryview])
@pytest.mark.parametrize(("header", "expected"), COMPLETE)
def test_buffer_types(header: bytes, expected: tuple[ProxyHeader, int], convert: type[bytes]) -> None:
    assert parse_proxy_header(convert(header + PAYLOAD)) == expected
    assert parse_proxy_header(convert(header[:-1])) is NEED_DATA


def test_memoryview_of_wider_items_is_read_as_bytes() -> None:
    data = V2_INET_STREAM + b"xxxx"  # 32 bytes = 16 unsigned shorts
    assert parse_proxy_header(memoryview(array("H", data))) == (HDR_V4_2, 28)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 16, 64])
@pytest.mark.parametrize(("header", "expected"), COMPLETE)
def test_fed_across_many_reads(header: bytes, expected: tuple[ProxyHeader, int], chunk: int) -> None:
    stream = header + PAYLOAD
    buf = bytearray()
    result: tuple[ProxyHeader, int] | NeedDataType = NEED_DATA
    reads = 0
    pos = 0
    while result is NEED_DATA:
        assert pos < len(stream), "header never completed"
        buf += stream[pos : pos + chunk]
        pos += chunk
        reads += 1
        result = parse_proxy_header(buf)
    assert result == expected
    _, consumed = result
    assert bytes(buf[consumed:]) + stream[pos:] == PAYLOAD
    assert reads == -(-len(header) // chunk)


def test_trailing_bytes_not_consumed() -> None:
    for header, length in [(V1_TCP4, len(V1_TCP4)), (V2_INET6_STREAM, 52), (V2_LOCAL, 16)]:
        data = header + header  # a second header is payload, not ours to eat
        assert parsed(data)[1] == length


def test_need_data_sentinel() -> None:
    assert parse_proxy_header(b"") is NEED_DATA
    assert isinstance(NEED_DATA, NeedDataType)
    assert not isinstance(NEED_DATA, tuple | BaseException)
    assert repr(NEED_DATA) == "NEED_DATA"


# --- v1 errors ------------------------------------------------------------------------------


def test_v1_line_limit() -> None:
    # Exactly 107 bytes including CRLF is the longest legal line (spec 2.1 worst case).
    longest = b"PROXY UNKNOWN " + b"f" * (107 - 16) + b"\r\n"
    assert len(longest) == 107
    assert parsed(longest) == (LOCAL_1, 107)
    assert parse_proxy_header(longest[:106]) is NEED_DATA
    too_long = b"PROXY UNKNOWN " + b"f" * (108 - 16) + b"\r\n"
    with pytest.raises(ProxyHeaderError, match="PROXY v1 line longer than 107 bytes"):
        parse_proxy_header(too_long)
    # Decided at 107 bytes, without waiting for the CRLF that may never come.
    with pytest.raises(ProxyHeaderError, match="longer than 107 bytes"):
        parse_proxy_header(too_long[:107])
    with pytest.raises(ProxyHeaderError, match="longer than 107 bytes"):
        parse_proxy_header(b"PROXY UNKNOWN " + b"a" * 4000)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00",  # TLS ClientHello
        b"SSH-2.0-OpenSSH\r\n",
        b"\x00",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY\tTCP4",
        b"PROXYTCP4",
        b"\r\n\r\n\x00\r\nQUIX\n",
        b"\r\r",
    ],
)
def test_garbage_is_rejected(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError, match="not a PROXY protocol header"):
        parse_proxy_header(data)


@pytest.mark.parametrize("signature", [b"PROXY ", SIG])
def test_decided_at_first_differing_byte(signature: bytes) -> None:
    for i in range(len(signature)):
        prefix = bytearray(signature[: i + 1])
        prefix[i] ^= 0x01
        with pytest.raises(ProxyHeaderError, match="not a PROXY protocol header"):
            parse_proxy_header(prefix)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UNKNOWNX\r\n", "'UNKNOWNX' is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY \r\n", "not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "3 fields after the protocol, expected 4"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "5 fields after the protocol"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "exactly one space"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "exactly one space"),
        (b"PROXY TCP4\r\n", "0 fields after the protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
        (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "CR not followed by LF"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "source address '1.2.3' is not a valid TCP4"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "source address '01.2.3.4'"),
        (b"PROXY TCP4 1.2.3.4 256.6.7.8 1 2\r\n", "destination address '256.6.7.8'"),
        (b"PROXY TCP4 1.2.3.4 host 1 2\r\n", "destination address 'host'"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "source address '::1' is not a valid TCP4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "source address '1.2.3.4' is not a valid TCP6"),
        (b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n", "destination address 'fe80::1%eth0'"),
        (b"PROXY TCP6 ::1 [::1] 1 2\r\n", "destination address '\\[::1\\]'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port '65536'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "destination port '99999'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "source port '080'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", "source port '00'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", "source port '\\+80'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "source port '-1'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n", "source port '1_0'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x50\r\n", "destination port '0x50'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "destination port ''"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n", "source port '000001'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "non-ASCII"),
        (b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n", "source address"),
    ],
)
def test_v1_bad_fields(line: bytes, match: str) -> None:
    with pytest.raises(ProxyHeaderError, match=match):
        parse_proxy_header(line)


def test_v1_port_edges() -> None:
    assert parsed(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n")[0] == ProxyHeader(
        1, False, ("1.2.3.4", 0), ("5.6.7.8", 65535)
    )


def test_v1_ipv6_is_canonicalised() -> None:
    header, _ = parsed(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 0:0:0:0:0:ffff:1.2.3.4 1 2\r\n")
    assert header == ProxyHeader(1, False, ("2001:db8::1", 1), ("::ffff:1.2.3.4", 2))


@pytest.mark.parametrize("prefix", [b"PROXY X", b"PROXY TCP4X", b"PROXY UNKNOWX", b"PROXY TCP4 1\r2", b"PROXY \r "])
def test_v1_rejected_before_crlf(prefix: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(prefix)


# --- v2 errors and variants -----------------------------------------------------------------


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return SIG + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + body


ADDR4 = V2_INET_STREAM[16:]
ADDR6 = V2_INET6_STREAM[16:]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (v2(0x11, 0x11, ADDR4), "version 1 is not 2"),
        (v2(0x31, 0x11, ADDR4), "version 3 is not 2"),
        (v2(0x22, 0x11, ADDR4), "command 2 is not LOCAL"),
        (v2(0x2F, 0x11, ADDR4), "command 15 is not LOCAL"),
        (v2(0x21, 0x41, ADDR4), "address family 4"),
        (v2(0x21, 0xF1, ADDR4), "address family 15"),
        (v2(0x21, 0x13, ADDR4), "transport 3"),
        (v2(0x21, 0x11, ADDR4[:11]), "length 11 is shorter than the 12 byte address block"),
        (v2(0x21, 0x21, ADDR6[:35]), "length 35 is shorter than the 36 byte address block"),
        (v2(0x21, 0x22, ADDR4), "length 12 is shorter than the 36"),
        (v2(0x21, 0x31, b"\x00" * 215), "length 215 is shorter than the 216"),
        (v2(0x21, 0x11, b"", length=0), "length 0 is shorter than the 12"),
        (v2(0x21, 0x11, b"", length=V2_MAX_LENGTH + 1), "length 1241 is over the 1240 byte limit"),
        (v2(0x20, 0x00, b"", length=0xFFFF), "length 65535 is over"),
    ],
)
def test_v2_bad_header(data: bytes, match: str) -> None:
    with pytest.raises(ProxyHeaderError, match=match):
        parse_proxy_header(data)
    # Decided from the 16-byte fixed part, without waiting for the address block.
    with pytest.raises(ProxyHeaderError, match=match):
        parse_proxy_header(data[:16])


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        (SIG + b"\x10", "version 1"),
        (SIG + b"\x23", "command 3"),
        (SIG + b"\x21\x51", "address family 5"),
        (SIG + b"\x21\x14", "transport 4"),
    ],
)
def test_v2_rejected_before_length(prefix: bytes, match: str) -> None:
    with pytest.raises(ProxyHeaderError, match=match):
        parse_proxy_header(prefix)


def test_v2_max_length_accepted() -> None:
    data = v2(
        0x21,
        0x11,
        ADDR4 + b"\x04" + (V2_MAX_LENGTH - 15).to_bytes(2, "big") + b"\x00" * (V2_MAX_LENGTH - 15),
    )
    assert parsed(data + PAYLOAD) == (HDR_V4_2, 16 + V2_MAX_LENGTH)
    assert parse_proxy_header(data[:-1]) is NEED_DATA


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # LOCAL: family ignored, length honoured (spec 2.2: "must not assume zero").
        (v2(0x20, 0x00, b""), (LOCAL_2, 16)),
        (v2(0x20, 0x11, ADDR4), (LOCAL_2, 28)),
        (v2(0x20, 0xFF, b"junk"), (LOCAL_2, 20)),
        # PROXY with UNSPEC family or transport: addresses ignored -> local.
        (v2(0x21, 0x00, b""), (LOCAL_2, 16)),
        (v2(0x21, 0x00, b"abc"), (LOCAL_2, 19)),
        (v2(0x21, 0x10, ADDR4), (LOCAL_2, 28)),
        (v2(0x21, 0x20, b""), (LOCAL_2, 16)),
        # AF_UNIX: no client IP to report -> local, 216-byte block skipped.
        (v2(0x21, 0x31, b"/a".ljust(108, b"\x00") + b"/b".ljust(108, b"\x00")), (LOCAL_2, 232)),
        (v2(0x21, 0x32, b"\x00" * 220), (LOCAL_2, 236)),
        # Addresses followed by TLVs: checked, skipped, consumed (33 empty TLVs of type 0 below).
        (v2(0x21, 0x12, ADDR4 + b"\x01\x00\x02h2"), (HDR_V4_2, 33)),
        (v2(0x21, 0x21, ADDR6 + b"\x00" * 99), (HDR_V6_2, 151)),
    ],
)
def test_v2_variants(data: bytes, expected: tuple[ProxyHeader, int]) -> None:
    assert parsed(data + PAYLOAD) == expected
    for i in range(len(data)):
        assert parse_proxy_header(data[:i]) is NEED_DATA


def test_v2_ipv4_mapped_stays_ipv6() -> None:
    data = build_v2(("::ffff:1.2.3.4", 1), ("::ffff:5.6.7.8", 2))
    assert parsed(data)[0] == ProxyHeader(2, False, ("::ffff:1.2.3.4", 1), ("::ffff:5.6.7.8", 2))


# --- properties -----------------------------------------------------------------------------

ports = st.integers(min_value=0, max_value=65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
any_ip = st.one_of(v4, v6)


def _expected_family(src: str, dst: str) -> tuple[bool, str, str]:
    """(is IPv4 header, expected src, expected dst) as IP objects would compare."""
    if ":" not in src and ":" not in dst:
        return True, src, dst

    def six(a: str) -> str:
        return a if ":" in a else f"::ffff:{a}"

    return False, six(src), six(dst)


@settings(max_examples=300, deadline=None)
@given(src=any_ip, sport=ports, dst=any_ip, dport=ports, dgram=st.booleans())
def test_property_round_trip(src: str, sport: int, dst: str, dport: int, dgram: bool) -> None:
    is4, esrc, edst = _expected_family(src, dst)
    for header, version in (
        (build_v1((src, sport), (dst, dport)), 1),
        (build_v2((src, sport), (dst, dport), dgram=dgram), 2),
    ):
        assert len(header) <= (V1_MAX_LENGTH if version == 1 else 52)
        ours, consumed = parsed(header + PAYLOAD)
        assert consumed == len(header)
        assert ours.version == version and not ours.local
        assert ours.src is not None and ours.dst is not None
        assert ip_address(ours.src[0]) == ip_address(esrc)
        assert ip_address(ours.dst[0]) == ip_address(edst)
        assert (ours.src[1], ours.dst[1]) == (sport, dport)
        assert (":" not in ours.src[0]) is is4
        # Building again from what we parsed gives the same bytes.
        if version == 1:
            assert build_v1(ours.src, ours.dst) == header
        else:
            assert build_v2(ours.src, ours.dst, dgram=dgram) == header
        theirs = DETECT.unpack(header)
        assert isinstance(theirs, ProxyResultIPv4 if is4 else ProxyResultIPv6)
        assert theirs.source == (ip_address(esrc), sport)
        assert theirs.dest == (ip_address(edst), dport)
        if version == 2:
            assert theirs.protocol == (socket.SOCK_DGRAM if dgram else socket.SOCK_STREAM)


@settings(max_examples=200, deadline=None)
@given(
    src=v4,
    sport=ports,
    dst=v4,
    dport=ports,
    kind=st.sampled_from([socket.SOCK_STREAM, socket.SOCK_DGRAM]),
)
def test_property_proxyprotocol_packs_ours_parses(
    src: str, sport: int, dst: str, dport: int, kind: socket.SocketKind
) -> None:
    result = ProxyResultIPv4((IPv4Address(src), sport), (IPv4Address(dst), dport), protocol=kind)
    for data, version in ((ProxyProtocolV2().pack(result), 2), (ProxyProtocolV1().pack(result), 1)):
        assert parsed(data + PAYLOAD) == (
            ProxyHeader(version, False, (src, sport), (dst, dport)),
            len(data),
        )


PREFIXES = [
    b"",
    b"P",
    b"PROXY ",
    b"PROXY TCP4 ",
    b"PROXY TCP6 ",
    b"PROXY UNKNOWN",
    SIG,
    SIG + b"\x21",
    SIG + b"\x20",
    SIG + b"\x21\x11\x00\x0c",
    SIG + b"\x21\x21\x00\x24",
]
fuzz = st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=200)).map(lambda t: t[0] + t[1])


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), fuzz))
def test_property_random_bytes_only_raise_proxy_header_error(data: bytes) -> None:
    outcomes: list[object] = []
    for convert in (bytes, bytearray, memoryview):
        try:
            outcomes.append(parse_proxy_header(convert(data)))
        except ProxyHeaderError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1] == outcomes[2], "buffer type changed the verdict"
    result = outcomes[0]
    if result is ProxyHeaderError:
        return
    if result is not NEED_DATA:
        assert isinstance(result, tuple)
        header, consumed = result
        assert 0 < consumed <= len(data)
        assert header.version in (1, 2)
        assert header.local == (header.src is None) == (header.dst is None)


@settings(max_examples=300, deadline=None)
@given(data=fuzz)
def test_property_verdict_does_not_depend_on_split_point(data: bytes) -> None:
    """NEED_DATA until the verdict; once an error or a result appears, longer input keeps it."""
    verdict: object = NEED_DATA
    for i in range(len(data) + 1):
        try:
            outcome: object = parse_proxy_header(data[:i])
        except ProxyHeaderError:
            outcome = ProxyHeaderError
        if verdict is NEED_DATA:
            verdict = outcome
        else:
            assert outcome == verdict, f"prefix {i} changed the verdict"


# --- TLVs (issue 10 defect 5): checked as HAProxy's conn_recv_proxy checks them -----------------------


def _v2_with_tlvs(tlvs: bytes, inet6: bool = False) -> bytes:
    base = V2_INET6_STREAM if inet6 else V2_INET_STREAM
    addr_len = len(base) - 16
    return base[:14] + (addr_len + len(tlvs)).to_bytes(2, "big") + base[16:] + tlvs


@pytest.mark.parametrize("inet6", [False, True])
@pytest.mark.parametrize(
    "tlvs",
    [
        pytest.param(b"\x04", id="1-byte-truncated-tlv"),
        pytest.param(b"\x04\x00", id="2-byte-truncated-tlv"),
        pytest.param(b"\x04\x00\x05abc", id="tlv-claims-more-than-the-header"),
        pytest.param(b"\x04\x00\x01a\x04\x00\x09a", id="second-tlv-overruns"),
        pytest.param(b"\x03\x00\x02ab", id="crc32c-not-4-bytes"),
        pytest.param(b"\x03\x00\x04\x00\x00\x00\x00", id="crc32c-wrong"),
        pytest.param(b"\x02\x01\x00" + b"a" * 256, id="authority-over-255"),
        pytest.param(b"\x05\x00\x81" + b"u" * 129, id="unique-id-over-128"),
    ],
)
def test_malformed_tlvs_are_refused(tlvs: bytes, inet6: bool) -> None:
    """A trusted peer's header whose TLV block does not parse is not believed (HAProxy drops the
    connection): before, the parser stopped after the address block and took the source."""
    with pytest.raises(ProxyHeaderError, match=r"TLV|CRC32C"):
        parse_proxy_header(_v2_with_tlvs(tlvs, inet6) + PAYLOAD)


def test_well_formed_tlvs_and_a_correct_crc32c_are_accepted() -> None:
    tlvs = b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com" + b"\x05\x00\x80" + b"u" * 128 + b"\x04\x00\x00"
    header = _v2_with_tlvs(tlvs)
    assert parsed(header + PAYLOAD) == (HDR_V4_2, len(header))
    # The CRC32C covers the whole header with its own value zeroed (spec 2.2.3).
    zeroed = _v2_with_tlvs(tlvs + b"\x03\x00\x04\x00\x00\x00\x00")
    with_crc = zeroed[:-4] + crc32c(zeroed).to_bytes(4, "big")
    assert parsed(with_crc + PAYLOAD) == (HDR_V4_2, len(with_crc))


def test_crc32c_known_answer() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4's check value
    assert crc32c(b"") == 0
