"""Request smuggling through edgeproxy to a lenient recording backend.

Every payload is ONE request from the client's point of view. The backend parses leniently the way
many application servers do (bare LF, ``int(size, 16)`` chunk sizes, the first Content-Length),
so anything edgeproxy let through ambiguously would show up there as a second request
(``/smuggled``). The rule: edgeproxy answers 400 (and closes), or the backend sees exactly one
clean request; never two.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.helpers import (
    NO_CHECKS,
    EdgeProxy,
    HttpBackend,
    HttpRequest,
    connect,
    free_port,
    hostport,
    read_http_response,
)

SMUG = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _post(headers: bytes, body: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST /one " + version + b"\r\nHost: a\r\n" + headers + b"\r\n" + body


_CHUNKED_SMUG = _chunk(SMUG) + b"0\r\n\r\n"
PAYLOADS: dict[str, bytes] = {
    # CL.TE and TE.CL: both framings present
    "cl_te": _post(b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (5 + len(SMUG)), b"0\r\n\r\n" + SMUG),
    "te_cl": _post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", _CHUNKED_SMUG),
    # TE.TE: an obfuscated Transfer-Encoding that one side honours and the other does not
    "te_xchunked": _post(b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUG),
    "te_space_before_colon": _post(b"Content-Length: 5\r\nTransfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUG),
    "te_twice": _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", _CHUNKED_SMUG),
    "te_vtab": _post(b"Content-Length: 5\r\nTransfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n" + SMUG),
    "te_leading_space": _post(b" Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + SMUG),
    "te_obs_fold": _post(b"Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n" + SMUG),
    "te_bare_lf_before": _post(b"X: y\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + SMUG),
    "te_quoted": _post(b'Content-Length: 5\r\nTransfer-Encoding: "chunked"\r\n', b"0\r\n\r\n" + SMUG),
    "te_chunked_then_identity": _post(b"Transfer-Encoding: chunked, identity\r\n", _CHUNKED_SMUG),
    "te_identity_chunked_with_cl": _post(
        b"Transfer-Encoding: identity, chunked\r\nContent-Length: 5\r\n", _CHUNKED_SMUG
    ),
    "te_upper_case": _post(b"TRANSFER-ENCODING: CHUNKED\r\n", _CHUNKED_SMUG),  # valid: the body is one chunk
    "te_on_http10": _post(b"Transfer-Encoding: chunked\r\n", _CHUNKED_SMUG, b"HTTP/1.0"),
    "te_underscore": _post(b"Transfer_Encoding: chunked\r\nContent-Length: %d\r\n" % len(_CHUNKED_SMUG), _CHUNKED_SMUG),
    # Content-Length games
    "cl_duplicate_differing": _post(b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(SMUG), SMUG),
    "cl_duplicate_same": _post(b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(SMUG), len(SMUG)), SMUG),
    "cl_plus_sign": _post(b"Content-Length: +0\r\n", SMUG),
    "cl_minus": _post(b"Content-Length: -0\r\n", SMUG),
    "cl_list": _post(b"Content-Length: 0, %d\r\n" % len(SMUG), SMUG),
    "cl_inner_space": _post(b"Content-Length: 0 %d\r\n" % len(SMUG), SMUG),
    "cl_hex": _post(b"Content-Length: 0x0\r\n", SMUG),
    "cl_space_before_colon": _post(b"Content-Length : 0\r\n", SMUG),
    # chunk-size tricks
    "chunk_0x": _post(b"Transfer-Encoding: chunked\r\n", b"0x0\r\n\r\n" + SMUG),
    "chunk_minus": _post(b"Transfer-Encoding: chunked\r\n", b"-0\r\n\r\n" + SMUG),
    "chunk_trailing_space": _post(b"Transfer-Encoding: chunked\r\n", b"0 \r\n\r\n" + SMUG),
    "chunk_many_zeros": _post(b"Transfer-Encoding: chunked\r\n", b"0" * 20 + b"\r\n\r\n" + SMUG),
    "chunk_overflow": _post(b"Transfer-Encoding: chunked\r\n", b"10000000000000001\r\n" + SMUG + b"\r\n0\r\n\r\n"),
    "chunk_bare_lf": _post(b"Transfer-Encoding: chunked\r\n", b"0\n\n" + SMUG),
    "chunk_data_not_crlf": _post(b"Transfer-Encoding: chunked\r\n", b"1\r\nxyz" + SMUG + b"0\r\n\r\n"),
    "chunk_ext_bare_cr": _post(b"Transfer-Encoding: chunked\r\n", b"0;a\rb\r\n\r\n" + SMUG),
    "chunk_extension_valid": _post(b"Transfer-Encoding: chunked\r\n", b"3;name=val\r\nabc\r\n0\r\n\r\n"),
    "chunk_trailer_xff": _post(b"Transfer-Encoding: chunked\r\n", b"0\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"),
    # bytes that lenient parsers read differently
    "nul_in_header": b"GET /one HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "bare_lf_request": b"GET /one HTTP/1.1\nHost: a\n\n" + SMUG,
    "bare_cr_header": b"GET /one HTTP/1.1\r\nHost: a\rTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUG,
    "obs_fold": b"GET /one HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "header_name_bad_char": b"GET /one HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n",
    "double_space_request_line": b"GET  /one HTTP/1.1\r\nHost: a\r\n\r\n",
    "request_line_garbage": b"GET /one HTTP/1.1 junk\r\nHost: a\r\n\r\n",
    "tls_to_plain_port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "absolute_form_host_mismatch": b"GET http://other.test/one HTTP/1.1\r\nHost: a\r\n\r\n",
    "no_host": b"GET /one HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET /one HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


def _record(req: HttpRequest, conn: socket.socket) -> bool:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return True


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[EdgeProxy, HttpBackend, int]]:
    backend = HttpBackend(_record)
    port = free_port()
    proxy = EdgeProxy(
        {
            "timeouts": {"http_request": "2s", "server_idle": "2s"},
            "listeners": [{"name": "web", "bind": hostport("127.0.0.1", port), "mode": "http", "backend": "b"}],
            "backends": {"b": {"health": NO_CHECKS, "servers": [backend.address]}},
        }
    )
    try:
        yield proxy, backend, port
    finally:
        proxy.stop()
        backend.close()


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_one_request_in_never_two_out(env: tuple[EdgeProxy, HttpBackend, int], name: str) -> None:
    _, backend, port = env
    before = len(backend.requests)
    statuses = []
    with connect("127.0.0.1", port, timeout=3) as s:
        s.sendall(PAYLOADS[name])
        f = s.makefile("rb")
        s.settimeout(1.0)
        try:
            while True:
                status, headers, _, _ = read_http_response(f)
                statuses.append(status)
                if headers.get("connection") == "close":
                    break
        except (ConnectionError, TimeoutError, OSError):
            pass  # no more responses
    seen = backend.requests[before:]
    assert not [r for r in seen if "smuggled" in r.target], f"{name}: smuggled request reached the backend"
    assert len(seen) <= 1, f"{name}: the backend saw {[r.target for r in seen]}"
    if seen:
        assert statuses == [200], f"{name}: {statuses}"
        assert seen[0].target == "/one"
    else:
        assert statuses in ([400], [505], [408]), f"{name}: {statuses}"


def test_clean_cases_really_are_forwarded(env: tuple[EdgeProxy, HttpBackend, int]) -> None:
    """Guard against a suite that passes because everything is refused."""
    _, backend, port = env
    for name in ("te_upper_case", "chunk_extension_valid"):
        before = len(backend.requests)
        with connect("127.0.0.1", port) as s:
            s.sendall(PAYLOADS[name])
            status, _, _, _ = read_http_response(s.makefile("rb"))
        assert status == 200
        assert [r.target for r in backend.requests[before:]] == ["/one"]


def test_a_server_answering_twice_cannot_poison_the_next_response(env: tuple[EdgeProxy, HttpBackend, int]) -> None:
    """Response desync: extra bytes after a complete response are never forwarded."""

    def twice(req: HttpRequest, conn: socket.socket) -> bool:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
        )
        return True

    backend = HttpBackend(twice)
    honest = HttpBackend(_record)
    port = free_port()
    proxy = EdgeProxy(
        {
            "listeners": [
                {
                    "name": "web",
                    "bind": hostport("127.0.0.1", port),
                    "mode": "http",
                    "backend": "honest",
                    "routes": [{"path_prefix": "/twice", "backend": "twice"}],
                }
            ],
            "backends": {
                "twice": {"health": NO_CHECKS, "servers": [backend.address]},
                "honest": {"health": NO_CHECKS, "servers": [honest.address]},
            },
        }
    )
    try:
        with connect("127.0.0.1", port) as s:
            f = s.makefile("rb")
            s.sendall(b"GET /twice HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_http_response(f)[2] == b"first"
            s.sendall(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_http_response(f)[2] == b"ok"
            s.sendall(b"GET /twice/again HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_http_response(f)[2] == b"first"
        # The confused connection was not reused: the second /twice needed a new one.
        assert backend.connections == 2
    finally:
        proxy.stop()
        backend.close()
        honest.close()
