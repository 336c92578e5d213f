"""PROXY v1/v2 parser: any bytes give a header, NEED_DATA or ProxyHeaderError, never another
exception; a header's ``consumed`` is within the input, and every prefix of a complete header is
NEED_DATA or already an error (the parser never needs to see past the header)."""

from __future__ import annotations

from edgeproxy.proto.proxy_protocol import NEED_DATA, ProxyHeaderError, parse_proxy_header


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
    del header


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
