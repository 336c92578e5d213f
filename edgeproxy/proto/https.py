"""What HTTPS adds to HTTP responses (sans-IO): the 308 of ``redirect_https`` and the answer to an
ACME HTTP-01 challenge (both given by a plain http listener itself, without a server), and the
``Strict-Transport-Security`` line of ``tls.hsts``.

SPEC.md: ``redirect_https`` sends ``Location: https://<host without port>[:<TLS port if not 443>]
<path?query>``. 308 rather than 301 keeps the method and body (RFC 9110 15.4.9), as HAProxy's
``redirect scheme https code 308`` does. The host is the request's (Host, or the authority of an
absolute-form target, which the parser made agree); a request without one (HTTP/1.0) is sent to
the address it connected to. A host that is not a host name or an IP literal is refused (400), so
nothing a client writes in Host can be made to stand for anything else in the Location.
"""

from __future__ import annotations

import re

_REG_NAME = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=%]+")  # RFC 3986 3.2.2 reg-name (IPv4 included)
_IP_LITERAL = re.compile(rb"\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9\-._~%]+)?\]")  # [v6] (no IPvFuture)
_PORT = re.compile(rb"[0-9]*")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]*")  # no space or control byte (the parser refuses them too)


def https_location(host: bytes | None, target: bytes, tls_port: int, connected_to: str) -> bytes | None:
    """The ``Location`` for ``target`` (the request target as received), or None when ``host``
    is not a host (or the target holds a byte no target may). ``connected_to``: the local
    address, for a request without a host."""
    if not _TARGET.fullmatch(target):
        return None
    if host is None:
        name = f"[{connected_to}]" if ":" in connected_to else connected_to
        hostname: bytes | None = name.encode("ascii", "replace")
    else:
        hostname = _without_port(host)
    if hostname is None:
        return None
    if target[:1] == b"/":
        path = target
    elif b"://" in target:  # absolute form: what follows the authority
        rest = target.partition(b"://")[2]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        path = rest[cut:]
        if not path.startswith(b"/"):
            path = b"/" + path
    else:
        path = b"/"  # OPTIONS *
    port = b"" if tls_port == 443 else b":%d" % tls_port
    return b"https://" + hostname + port + path


def _without_port(host: bytes) -> bytes | None:
    if host[:1] == b"[":
        end = host.find(b"]")
        name, rest = host[: end + 1], host[end + 1 :]
        if end < 0 or not _IP_LITERAL.fullmatch(name):
            return None
    else:
        name, colon, port = host.partition(b":")
        rest = colon + port
        if not _REG_NAME.fullmatch(name):
            return None
    if rest and not (rest[:1] == b":" and _PORT.fullmatch(rest[1:])):
        return None
    return name


def redirect_response(location: bytes, *, close: bool) -> bytes:
    close_line = b"Connection: close\r\n" if close else b""
    head = b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + location
    return head + b"\r\nContent-Length: 0\r\n" + close_line + b"\r\n"


def plain_response(status_line: bytes, content_type: bytes, body: bytes, *, close: bool) -> bytes:
    """A small complete response (the ACME HTTP-01 answer)."""
    close_line = b"Connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 " + status_line + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: %d\r\nCache-Control: no-store\r\n" % len(body) + close_line + b"\r\n" + body
    )  # fmt: skip


def with_hsts(head: bytes, line: bytes) -> bytes:
    """A response head with ``line`` (``Strict-Transport-Security: ...\\r\\n``) added, unless the
    server sent its own (its policy, e.g. with ``includeSubDomains``, is the one it meant)."""
    if b"\r\nstrict-transport-security:" in head.lower():
        return head
    return head[:-2] + line + b"\r\n"
