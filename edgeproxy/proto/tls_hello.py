"""TLS ClientHello reader, sans-IO: the SNI and ALPN a client offers, read before any handshake.

Used to route a TLS connection without terminating it (tcp listeners with ``sni`` routes) and to
choose a certificate or an ACME TLS-ALPN-01 answer before the handshake starts. The bytes are only
looked at: the caller relays (or hands to OpenSSL) exactly what the client sent.

What is read (RFC 8446 5.1 and 4.1.2; RFC 5246 6.2.1 and 7.4.1.2; RFC 6066 3; RFC 7301 3.1):

- TLS records of content type handshake (22) whose version major is 3, each 1..2^14 bytes; the
  ClientHello handshake message may be split over several records and each record over any
  number of reads (a large ClientHello spans TCP segments, and a hostile client sends one byte at
  a time). Anything else first (plain HTTP, an SSLv2-style hello, an alert) is an error at the
  first byte that cannot belong to a ClientHello.
- The message is bounded: ``MAX_HELLO`` bytes of handshake message, so a client cannot make us
  buffer more than that (plus record headers) before we decide.
- Extensions: ``server_name`` (one host_name, an ASCII host name; returned lower-cased),
  ``application_layer_protocol_negotiation`` (the offered protocol ids, in order) and
  ``supported_versions``. Every length field is checked against its container, and an extension
  type that appears twice is an error (RFC 8446 4.2), as HAProxy and OpenSSL treat them.

``ClientHelloReader.feed`` is incremental and O(n) in the bytes fed: record headers are consumed
as they complete and the handshake bytes are parsed once, when the message is whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from edgeproxy.proto.proxy_protocol import NEED_DATA, NeedDataType

__all__ = ["MAX_HELLO", "MAX_RAW", "ClientHello", "ClientHelloReader", "TlsHelloError", "read_client_hello"]

MAX_HELLO: Final = 16384
"""Largest ClientHello handshake message accepted (header included): 16 KiB, one full record."""
MAX_RAW: Final = 2 * MAX_HELLO
"""Most bytes read (record headers included) before deciding: a hello split into many tiny records
is refused beyond this, so the caller that keeps the raw bytes to relay them stays bounded."""

_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_MAX_RECORD: Final = 1 << 14  # RFC 8446 5.1: TLSPlaintext.length MUST NOT exceed 2^14
_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_EXT_SUPPORTED_VERSIONS: Final = 43
_HOST_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class TlsHelloError(ValueError):
    """The bytes are not (or can no longer become) a valid TLS ClientHello; says what is wrong."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str | None
    """The host_name of the server_name extension, lower-cased; None when the client sent none."""
    alpn: tuple[bytes, ...]
    """Protocol ids offered by ALPN, in the client's order (empty without the extension)."""
    legacy_version: int
    """ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3 clients)."""
    versions: tuple[int, ...]
    """supported_versions offered (TLS 1.3 clients), e.g. (0x0304, 0x0303); empty without it."""


class ClientHelloReader:
    """Feed the first bytes of a connection; get ``NEED_DATA``, a ``ClientHello``, or an error.

    After a result or an error the reader is spent: further calls return the same result or raise
    the same error.
    """

    __slots__ = ("_done", "_error", "_hello", "_need", "_pending", "_raw")

    def __init__(self) -> None:
        self._pending = bytearray()  # bytes of a record not yet complete (header included)
        self._hello = bytearray()  # handshake bytes gathered from complete records
        self._need = -1  # total handshake message length once its header is known
        self._raw = 0  # bytes fed so far
        self._done: ClientHello | None = None
        self._error: TlsHelloError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> ClientHello | NeedDataType:
        if self._done is not None:
            return self._done
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except TlsHelloError as e:
            self._error = e
            raise

    def _feed(self, data: bytes | bytearray | memoryview) -> ClientHello | NeedDataType:
        # Bytes after a complete hello in the same read (TLS 1.3 early data) do not count.
        self._raw += len(data)
        pending = self._pending
        pending += data
        while True:
            n = len(pending)
            if n < 5:
                _check_record_prefix(pending)
                return self._need_data()
            length = _record_header(pending)
            if n < 5 + length:
                # Look into the handshake header as soon as it is here: a non-ClientHello or an
                # oversized one is refused without waiting for the rest of the record.
                self._check_handshake_prefix(bytes(pending[5 : min(n, 9)]))
                return self._need_data()
            self._hello += pending[5 : 5 + length]
            del pending[: 5 + length]
            hello = self._hello
            if self._need < 0:
                self._check_handshake_prefix(b"")
                if len(hello) >= 4:
                    self._need = 4 + int.from_bytes(hello[1:4], "big")
            if 0 <= self._need <= len(hello):
                self._done = _parse_client_hello(bytes(hello[4 : self._need]))
                return self._done

    def _need_data(self) -> NeedDataType:
        if self._raw > MAX_RAW:
            raise TlsHelloError(f"no complete ClientHello in {MAX_RAW} bytes")
        return NEED_DATA

    def _check_handshake_prefix(self, more: bytes) -> None:
        """The handshake header (what is gathered plus ``more``) must start a ClientHello that fits."""
        if self._need >= 0:
            return
        head = bytes(self._hello[:4]) + more[: max(0, 4 - len(self._hello))]
        if head and head[0] != _CLIENT_HELLO:
            raise TlsHelloError(f"first handshake message is type {head[0]}, not a ClientHello")
        if len(head) >= 4:
            length = int.from_bytes(head[1:4], "big")
            if 4 + length > MAX_HELLO:
                raise TlsHelloError(f"ClientHello of {length} bytes is larger than {MAX_HELLO - 4}")


def read_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | NeedDataType:
    """One-shot form of ``ClientHelloReader().feed(data)``."""
    return ClientHelloReader().feed(data)


def _check_record_prefix(buf: bytearray) -> None:
    if buf and buf[0] != _HANDSHAKE:
        if buf[0] & 0x80:
            raise TlsHelloError("SSLv2-style ClientHello (not supported)")
        raise TlsHelloError(f"not a TLS handshake record (first byte 0x{buf[0]:02x})")
    if len(buf) >= 2 and buf[1] != 3:
        raise TlsHelloError(f"TLS record version major {buf[1]} is not 3")


def _record_header(buf: bytearray) -> int:
    _check_record_prefix(buf)
    length = (buf[3] << 8) | buf[4]
    if length == 0:
        raise TlsHelloError("empty handshake record")  # RFC 8446 5.1: MUST NOT be sent
    if length > _MAX_RECORD:
        raise TlsHelloError(f"TLS record of {length} bytes is larger than 2^14")
    return length


class _Cursor:
    """Reads length-prefixed fields of a byte string, raising TlsHelloError at any overrun."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise TlsHelloError(f"{what}: {n} bytes announced, {self.end - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, len_size: int, what: str) -> bytes:
        return self.take(self.uint(len_size, what), what)


def _parse_client_hello(body: bytes) -> ClientHello:
    c = _Cursor(body)
    legacy_version = c.uint(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise TlsHelloError(f"ClientHello version 0x{legacy_version:04x} is not TLS")
    c.take(32, "random")
    session_id = c.vector(1, "legacy_session_id")
    if len(session_id) > 32:
        raise TlsHelloError(f"session id of {len(session_id)} bytes (at most 32)")
    suites = c.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise TlsHelloError(f"cipher_suites of {len(suites)} bytes (a non-empty list of 2-byte ids)")
    if not c.vector(1, "compression_methods"):
        raise TlsHelloError("empty compression_methods")
    sni: str | None = None
    alpn: tuple[bytes, ...] = ()
    versions: tuple[int, ...] = ()
    if c.left():
        exts = c.vector(2, "extensions")
        if c.left():
            raise TlsHelloError(f"{c.left()} bytes after the extensions")
        # The extension headers are walked with plain index arithmetic rather than _Cursor calls:
        # a browser sends ~17 extensions, and this loop was most of the parse on every TLS
        # connection (its checks and messages are the cursor's).
        seen: set[int] = set()
        pos, end = 0, len(exts)
        while pos < end:
            if end - pos < 4:
                what = "extension type" if end - pos < 2 else f"extension {(exts[pos] << 8) | exts[pos + 1]}"
                raise TlsHelloError(f"{what}: 2 bytes announced, {end - pos - (0 if end - pos < 2 else 2)} left")
            ext_type = (exts[pos] << 8) | exts[pos + 1]
            n = (exts[pos + 2] << 8) | exts[pos + 3]
            pos += 4
            if n > end - pos:
                raise TlsHelloError(f"extension {ext_type}: {n} bytes announced, {end - pos} left")
            if ext_type in seen:
                raise TlsHelloError(f"extension {ext_type} appears twice")
            seen.add(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                sni = _server_name(exts[pos : pos + n])
            elif ext_type == _EXT_ALPN:
                alpn = _alpn(exts[pos : pos + n])
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                versions = _supported_versions(exts[pos : pos + n])
            pos += n
    return ClientHello(sni, alpn, legacy_version, versions)


def _server_name(data: bytes) -> str | None:
    """RFC 6066 3: a ServerNameList with at most one host_name (type 0)."""
    if not data:
        return None  # a server's empty echo; a client sending it has told us nothing
    c = _Cursor(data)
    names = _Cursor(c.vector(2, "server_name_list"))
    if c.left():
        raise TlsHelloError("bytes after the server_name_list")
    host: str | None = None
    while names.left():
        name_type = names.uint(1, "server name type")
        name = names.vector(2, "server name")
        if name_type != 0:
            continue  # no other type is defined; skip it as OpenSSL does
        if host is not None:
            raise TlsHelloError("two host_name entries in server_name")
        host = _host_name(name)
    return host


def _host_name(name: bytes) -> str:
    if not name or len(name) > 253:
        raise TlsHelloError(f"server name of {len(name)} bytes")
    if not _HOST_BYTES.issuperset(name):
        raise TlsHelloError("server name holds bytes that are not a host name")
    if name.startswith(b".") or b".." in name:
        raise TlsHelloError("server name has an empty label")
    if name.endswith(b"."):
        name = name[:-1]  # RFC 6066 forbids the trailing dot, but it names the same host
    if any(len(label) > 63 for label in name.split(b".")):
        raise TlsHelloError("server name has a label longer than 63 bytes")
    return name.decode("ascii").lower()


def _alpn(data: bytes) -> tuple[bytes, ...]:
    """RFC 7301 3.1: a non-empty list of non-empty protocol ids."""
    c = _Cursor(data)
    ids = _Cursor(c.vector(2, "protocol_name_list"))
    if c.left() or not ids.left():
        raise TlsHelloError("malformed ALPN extension")
    out: list[bytes] = []
    while ids.left():
        proto = ids.vector(1, "protocol name")
        if not proto:
            raise TlsHelloError("empty ALPN protocol name")
        out.append(proto)
    return tuple(out)


def _supported_versions(data: bytes) -> tuple[int, ...]:
    c = _Cursor(data)
    raw = c.vector(1, "versions")
    if c.left() or not raw or len(raw) % 2:
        raise TlsHelloError("malformed supported_versions extension")
    return tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))
