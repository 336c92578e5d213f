"""The ClientHello reader against real ClientHellos (Python's ssl, and the openssl CLI when present),
re-fragmented over records and reads, and against hand-built malformed ones."""

from __future__ import annotations

import functools
import shutil
import socket
import ssl
import struct
import subprocess
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.proto.proxy_protocol import NEED_DATA
from edgeproxy.proto.tls_hello import (
    MAX_HELLO,
    MAX_RAW,
    ClientHello,
    ClientHelloReader,
    TlsHelloError,
    read_client_hello,
)


@functools.cache
def python_hello(
    host: str | None, alpn: tuple[str, ...] = (), maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
) -> bytes:
    """The first flight of Python's own TLS client (OpenSSL), captured through memory BIOs."""
    ctx = ssl.create_default_context()
    ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def records(hello: bytes) -> bytes:
    """The handshake bytes carried by the records of ``hello`` (to re-fragment them)."""
    out, pos = b"", 0
    while pos < len(hello):
        length = struct.unpack_from("!H", hello, pos + 3)[0]
        out += hello[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def fragment(handshake: bytes, sizes: list[int]) -> bytes:
    """Handshake bytes re-split into records of the given sizes (the last takes the rest)."""
    out, pos = b"", 0
    for size in [*sizes, len(handshake)]:
        if pos >= len(handshake):
            break
        part = handshake[pos : pos + max(1, size)]
        out += b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
        pos += len(part)
    return out


def build_hello(extensions: bytes | None, *, session_id: bytes = b"", suites: bytes = b"\x13\x01") -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return fragment(handshake, [])


def ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + struct.pack("!H", len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def alpn_ext(*protos: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, struct.pack("!H", len(entries)) + entries)


# -- real clients ---------------------------------------------------------------------------------


def test_python_client_sni_alpn_versions() -> None:
    hello = read_client_hello(python_hello("DB.Example.com", ("h2", "http/1.1")))
    assert hello == ClientHello("db.example.com", (b"h2", b"http/1.1"), 0x0303, (0x0304, 0x0303))


def test_python_client_tls12_only_and_no_sni() -> None:
    hello = read_client_hello(python_hello(None, maximum=ssl.TLSVersion.TLSv1_2))
    assert isinstance(hello, ClientHello)
    assert hello.sni is None
    assert hello.alpn == ()
    assert 0x0304 not in hello.versions


def test_acme_tls_alpn_offer() -> None:
    hello = read_client_hello(python_hello("a.test", ("acme-tls/1",)))
    assert isinstance(hello, ClientHello)
    assert hello.alpn == (b"acme-tls/1",)


def test_byte_by_byte_and_every_prefix_needs_data() -> None:
    raw = python_hello("split.example.com", ("http/1.1",))
    reader = ClientHelloReader()
    for i in range(len(raw) - 1):
        assert reader.feed(raw[i : i + 1]) is NEED_DATA, i
    hello = reader.feed(raw[-1:])
    assert isinstance(hello, ClientHello)
    assert hello.sni == "split.example.com"
    assert reader.feed(b"more") is hello  # spent: the same answer


def test_early_data_after_the_hello_in_the_same_read() -> None:
    raw = python_hello("x.example.com")
    hello = read_client_hello(raw + b"\x17\x03\x03" + struct.pack("!H", 40000 - 5) + bytes(MAX_RAW))
    assert isinstance(hello, ClientHello)
    assert hello.sni == "x.example.com"


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=600), max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=40),
)
def test_any_record_and_read_split(sizes: list[int], cuts: list[int]) -> None:
    raw = fragment(records(python_hello("frag.example.com", ("h2",))), sizes)
    reader = ClientHelloReader()
    pos, result = 0, None
    for cut in [*cuts, len(raw)]:
        piece = raw[pos : pos + cut]
        pos += len(piece)
        result = reader.feed(piece)
        if pos >= len(raw):
            break
        assert result is NEED_DATA
    assert isinstance(result, ClientHello)
    assert (result.sni, result.alpn) == ("frag.example.com", (b"h2",))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_s_client_hello() -> None:
    """An independent client: the ClientHello `openssl s_client` sends, read off a real socket."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        conn, _ = srv.accept()
        conn.settimeout(10)
        reader, result = ClientHelloReader(), None
        while result is None or result is NEED_DATA:
            data = conn.recv(4096)
            if not data:
                break
            got.append(data)
            result = reader.feed(data)
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    target = f"127.0.0.1:{port}"
    subprocess.run(
        ["openssl", "s_client", "-connect", target, "-servername", "pg.example.com", "-alpn", "acme-tls/1,h2"],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    t.join(10)
    srv.close()
    hello = read_client_hello(b"".join(got))
    assert isinstance(hello, ClientHello)
    assert (hello.sni, hello.alpn) == ("pg.example.com", (b"acme-tls/1", b"h2"))


# -- malformed -----------------------------------------------------------------------------------

BAD: list[tuple[str, bytes, str]] = [
    ("plain http", b"GET / HTTP/1.1\r\n", "first byte 0x47"),
    ("sslv2 hello", b"\x80\x2e\x01\x00\x02", "SSLv2"),
    ("alert record", b"\x15\x03\x03\x00\x02\x02\x28", "first byte 0x15"),
    ("record major 2", b"\x16\x02", "major 2"),
    ("empty record", b"\x16\x03\x01\x00\x00", "empty"),
    ("record over 2^14", b"\x16\x03\x01\x40\x01", r"larger than 2\^14"),
    ("server hello", b"\x16\x03\x03\x00\x04\x02\x00\x00\x00", "type 2"),
    ("hello over 16 KiB", b"\x16\x03\x01\x00\x04\x01\x00\x40\x00", "larger than"),
    ("truncated random", fragment(b"\x01\x00\x00\x05\x03\x03abc", []), "random"),
    ("not tls version", build_hello(None).replace(b"\x03\x03" + bytes(32), b"\x02\x00" + bytes(32), 1), "not TLS"),
    ("session id 33", build_hello(None, session_id=bytes(33)), "session id"),
    ("odd cipher suites", build_hello(None, suites=b"\x13\x01\x13"), "cipher_suites"),
    ("no cipher suites", build_hello(None, suites=b""), "cipher_suites"),
    ("duplicate extension", build_hello(alpn_ext(b"h2") + alpn_ext(b"h2")), "twice"),
    ("two host names", build_hello(sni_ext(b"a.example", b"b.example")), "two host_name"),
    ("bad host bytes", build_hello(sni_ext(b"a b.example")), "not a host name"),
    ("nul in host", build_hello(sni_ext(b"a\x00.example")), "not a host name"),
    ("empty label", build_hello(sni_ext(b"a..example")), "empty label"),
    ("long label", build_hello(sni_ext(b"a" * 64 + b".example")), "longer than 63"),
    ("empty host", build_hello(sni_ext(b"")), "0 bytes"),
    ("empty alpn id", build_hello(alpn_ext(b"")), "empty ALPN"),
    ("extension overruns", build_hello(b"\x00\x10\x00\x09\x00\x03\x02h2"), "announced"),
    ("sni list overruns", build_hello(ext(0, b"\x00\x09\x00\x00\x03abc")), "announced"),
]


@pytest.mark.parametrize(("raw", "message"), [(r, m) for _, r, m in BAD], ids=[n for n, _, _ in BAD])
def test_malformed_is_refused(raw: bytes, message: str) -> None:
    reader = ClientHelloReader()
    with pytest.raises(TlsHelloError, match=message):
        reader.feed(raw)
    with pytest.raises(TlsHelloError, match=message):  # spent: the same error again
        reader.feed(b"")


def test_refused_at_the_first_wrong_byte() -> None:
    with pytest.raises(TlsHelloError):
        read_client_hello(b"G")
    with pytest.raises(TlsHelloError):
        read_client_hello(b"\x16\x03\x01\x00\x10\x02")  # a ServerHello, before its record is whole


def test_trailing_dot_and_case_name_the_same_host() -> None:
    hello = read_client_hello(build_hello(sni_ext(b"WWW.Example.COM.")))
    assert isinstance(hello, ClientHello)
    assert hello.sni == "www.example.com"


def test_other_name_types_are_skipped() -> None:
    hello = read_client_hello(build_hello(sni_ext(b"opaque", name_type=7)))
    assert isinstance(hello, ClientHello)
    assert hello.sni is None


def test_hello_without_extensions() -> None:
    hello = read_client_hello(build_hello(None))
    assert hello == ClientHello(None, (), 0x0303, ())


def test_tiny_records_are_bounded() -> None:
    handshake = records(build_hello(ext(0xFFFF, bytes(8000))))
    raw = fragment(handshake, [1] * len(handshake))  # 6 bytes on the wire per handshake byte
    assert len(raw) > MAX_RAW
    reader = ClientHelloReader()
    with pytest.raises(TlsHelloError, match="no complete ClientHello"):
        for pos in range(0, len(raw), 4096):
            reader.feed(raw[pos : pos + 4096])


def test_largest_hello_is_read() -> None:
    pad = MAX_HELLO - 4 - (2 + 32 + 1 + 2 + 2 + 2 + 2) - 4
    hello = read_client_hello(fragment(records(build_hello(ext(0xFFFF, bytes(pad)))), [MAX_HELLO]))
    assert isinstance(hello, ClientHello)
    with pytest.raises(TlsHelloError, match="larger than"):
        read_client_hello(build_hello(ext(0xFFFF, bytes(pad + 1))))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_a_hello_need_data_or_our_error(data: bytes) -> None:
    try:
        result = read_client_hello(data)
    except TlsHelloError:
        return
    assert result is NEED_DATA or isinstance(result, ClientHello)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_extension_bytes(data: bytes) -> None:
    """Well-framed hellos around arbitrary extension bytes: our error or a hello, nothing else."""
    try:
        result = read_client_hello(build_hello(data))
    except TlsHelloError:
        return
    assert isinstance(result, ClientHello)
