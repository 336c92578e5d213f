"""PROXY v1/v2 parser: any bytes give a header, NEED_DATA or ProxyHeaderError, never another
exception; a header's ``consumed`` is within the input, and every prefix of a complete header is
NEED_DATA or already an error (the parser never needs to see past the header). A v2 INET/INET6
header that is believed has a well-formed TLV block: TLVs that fit exactly in its length, as
HAProxy requires (issue 10 defect 5), checked here by an independent walk."""

from __future__ import annotations

import struct

from edgeproxy.proto.proxy_protocol import NEED_DATA, ProxyHeaderError, parse_proxy_header

_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
_ADDR_LEN = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36}


def _tlvs_fit(header: bytes) -> bool:
    """Walk the TLVs after the address block: each needs 3 bytes of type and length and its
    value, and the last must end where the header does."""
    pos = 16 + _ADDR_LEN[header[13]]
    while pos < len(header):
        if pos + 3 > len(header):
            return False
        (size,) = struct.unpack_from("!H", header, pos + 1)
        pos += 3 + size
    return pos == len(header)


def test_one_input(data: bytes) -> None:
    try:
        result = parse_proxy_header(data)
    except ProxyHeaderError:
        return
    if result is NEED_DATA:
        return
    header, consumed = result
    if not 0 < consumed <= len(data):
        raise AssertionError(f"consumed {consumed} of {len(data)} bytes")
    # The same header followed by anything parses the same (bytes after it are not looked at).
    again = parse_proxy_header(data[:consumed] + b"\x00garbage")
    if again != result:
        raise AssertionError(f"{again!r} != {result!r} once bytes follow the header")
    # Every prefix is NEED_DATA (or already refused): the answer never comes early.
    for n in (consumed - 1, consumed // 2):
        try:
            if parse_proxy_header(data[:n]) is not NEED_DATA:
                raise AssertionError(f"a {n}-byte prefix of a {consumed}-byte header is complete")
        except ProxyHeaderError:
            raise AssertionError(f"a {n}-byte prefix of an accepted header is refused") from None
    if not header.local and data[:12] == _SIG and data[13] in _ADDR_LEN and not _tlvs_fit(data[:consumed]):
        raise AssertionError(f"believed a v2 header whose TLVs do not fit: {data[:consumed]!r}")


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
