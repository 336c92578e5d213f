"""What a listener does with the challenge board: the data-plane half of ACME.

- A plain http listener asks ``http01_response`` with the request path before redirecting or
  routing (SPEC: "HTTP-01 is answered on every plain http listener before redirect or routing").
- A TLS listener reads the ClientHello first (``proto.tls_hello``) and asks
  ``ChallengeContexts.for_hello``: a hello that offers ``acme-tls/1`` for a name on the board gets
  a context serving that name's validation certificate and nothing else; every other hello
  (``None``) goes on to the listener's own certificates. The choice has to be made before the
  handshake: OpenSSL's SNI callback runs before ALPN is known, and a context that offered only
  ``acme-tls/1`` to an ordinary browser would hand it the validation certificate.
"""

from __future__ import annotations

import ssl

from edgeproxy.acme.board import ChallengeBoard
from edgeproxy.proto.tls_hello import ClientHello
from edgeproxy.tls.certificates import load_chain

ACME_TLS_ALPN = "acme-tls/1"
"""RFC 8737 section 6.2: the ALPN protocol id of a TLS-ALPN-01 validation."""
HTTP01_PREFIX = "/.well-known/acme-challenge/"
HTTP01_CONTENT_TYPE = "application/octet-stream"  # RFC 8555 section 8.3
_ACME_TLS_ALPN = ACME_TLS_ALPN.encode("ascii")


def is_http01_path(path: str) -> bool:
    return path.startswith(HTTP01_PREFIX)


def http01_response(board: ChallengeBoard, path: str) -> bytes | None:
    """The body to answer ``GET path`` with (the key authorization), or None when ``path`` is no
    challenge on the board (the request then goes on to routing: a backend may run its own ACME
    client). ``path`` is the request target as received; a query string is ignored."""
    if not path.startswith(HTTP01_PREFIX):
        return None
    token = path[len(HTTP01_PREFIX) :].partition("?")[0]
    answer = board.http01.get(token) if token else None
    return answer.encode("ascii") if answer is not None else None


def offers_acme_tls(hello: ClientHello) -> bool:
    return _ACME_TLS_ALPN in hello.alpn


class ChallengeContexts:
    """TLS-ALPN-01 contexts for one board, built once per certificate (a validation connects
    three times or more) and dropped when their challenge leaves the board."""

    __slots__ = ("_cache", "board")

    def __init__(self, board: ChallengeBoard) -> None:
        self.board = board
        self._cache: dict[str, tuple[bytes, ssl.SSLContext]] = {}

    def for_hello(self, hello: ClientHello) -> ssl.SSLContext | None:
        """The context to handshake with, when this ClientHello is a TLS-ALPN-01 validation of a
        name on the board; else None."""
        if hello.sni is None or not offers_acme_tls(hello):
            return None
        answer = self.board.tls_alpn01.get(hello.sni)
        if answer is None:
            return None
        cached = self._cache.get(hello.sni)
        if cached is not None and cached[0] == answer.chain_pem:
            return cached[1]
        for gone in [n for n in self._cache if n not in self.board.tls_alpn01]:
            del self._cache[gone]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols([ACME_TLS_ALPN])  # RFC 8737 section 3: the single protocol acme-tls/1
        load_chain(ctx, answer.chain_pem, answer.key_pem)
        self._cache[hello.sni] = (answer.chain_pem, ctx)
        return ctx
