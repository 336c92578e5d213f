"""The ``ssl.SSLContext`` objects a TLS listener serves, and how one is chosen per ClientHello.

One context per certificate (and the listener's ``min_version`` and ``alpn``), chosen *before*
the handshake from the ClientHello the TLS layer has read (proto/tls_hello.py): by its SNI among
the certificates' names (exact, then a one-label wildcard: proto/names.py), else the listener's
first certificate, as HAProxy's ``crt`` list and nginx's default server do. Choosing before the
handshake rather than in OpenSSL's SNI callback lets an ACME TLS-ALPN-01 validation, recognised
by its ALPN, get its own context (``challenge``; acme/answers.py), which the SNI callback cannot:
it runs before ALPN is known.

Contexts are reused across reloads while what they serve is unchanged (same chain, key and
settings): building one costs a few milliseconds, and a context holds the session cache and the
session-ticket keys, so a reload that keeps a certificate keeps its clients' resumption.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence

from edgeproxy.config import Config
from edgeproxy.config.model import ListenerTLS
from edgeproxy.proto.names import NameTable
from edgeproxy.proto.tls_hello import ClientHello
from edgeproxy.tls.certificates import Certificate, server_context
from edgeproxy.tls.files import CertificateSet

ContextKey = tuple[bytes, str, tuple[str, ...]]  # (chain PEM, min_version, alpn)
ChallengeHook = Callable[[ClientHello], "ssl.SSLContext | None"]


class ListenerContexts:
    """What one TLS listener serves: ``for_hello`` picks the context for a ClientHello."""

    __slots__ = ("by_name", "challenge", "default", "names")

    def __init__(
        self, contexts: Sequence[tuple[Certificate, ssl.SSLContext]], challenge: ChallengeHook | None = None
    ) -> None:
        self.by_name: NameTable[ssl.SSLContext] = NameTable((cert.names, ctx) for cert, ctx in contexts)
        self.default = contexts[0][1] if contexts else None
        self.names = tuple(cert.name for cert, _ in contexts)  # for logs and /status
        # ACME TLS-ALPN-01 (acme/answers.py ``ChallengeContexts.for_hello``): asked first; None
        # for every hello that is not a validation of a name on the challenge board.
        self.challenge = challenge

    def for_hello(self, hello: ClientHello) -> ssl.SSLContext | None:
        """The context to handshake with; None when the listener has no certificate at all yet
        (an ACME-only listener before its first certificate)."""
        challenge = self.challenge
        if challenge is not None:
            ctx = challenge(hello)
            if ctx is not None:
                return ctx
        found = self.by_name.lookup(hello.sni)
        return found if found is not None else self.default


def context_key(cert: Certificate, tls: ListenerTLS) -> ContextKey:
    # The key is the leaf's (checked when read), so the chain PEM identifies the pair.
    return (cert.chain_pem, tls.min_version, tls.alpn)


def build_contexts(
    config: Config,
    certs: CertificateSet,
    previous: Mapping[ContextKey, ssl.SSLContext],
    challenge: ChallengeHook | None = None,
) -> tuple[dict[str, ListenerContexts], dict[ContextKey, ssl.SSLContext]]:
    """Every TLS listener's contexts (``challenge``: asked first, see ``ListenerContexts``),
    reusing ``previous`` ones where nothing changed; also the
    contexts now in use (the next ``previous``). Raises ``ssl.SSLError`` (OpenSSL refusing a
    certificate the checks passed) so that the reload step fails."""
    made: dict[ContextKey, ssl.SSLContext] = {}
    out: dict[str, ListenerContexts] = {}
    for lst in config.listeners:
        tls = lst.tls
        if tls is None:
            continue
        pairs: list[tuple[Certificate, ssl.SSLContext]] = []
        for cert in certs.listeners.get(lst.name, ()):
            key = context_key(cert, tls)
            ctx = made.get(key) or previous.get(key)
            if ctx is None:
                ctx = server_context(cert, min_version=tls.min_version, alpn=tls.alpn)
            made[key] = ctx
            pairs.append((cert, ctx))
        out[lst.name] = ListenerContexts(pairs, challenge)
    return out, made
