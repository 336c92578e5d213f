"""TLS to backends (``backends.X.tls``): the client contexts, the name each connection sends and
checks, and what a failed handshake is called in a log line.

Contexts are OpenSSL's secure client defaults (``ssl.create_default_context``: TLS 1.2 and up,
chain and name verified) trusting the backend's ``ca`` certificates, or the system's without one.
Loading a CA bundle is slow (Debian's 146 certificates: ~50 ms idle, ~250 ms on a busy 2-CPU VM),
so a context is built once per distinct setting (``client_context`` is memoised on the frozen
``BackendTLS``, whose ``ca_pem`` holds the certificates themselves: a changed file is a new
setting) and the data plane builds them when a config is prepared, not on a first connection.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable

from edgeproxy.config import BackendTLS
from edgeproxy.config.files import openssl_reason


@functools.lru_cache(maxsize=64)
def client_context(tls: BackendTLS) -> ssl.SSLContext:
    """The context for connections to a backend with these settings (raises ssl.SSLError if
    OpenSSL refuses the certificates; the loader has checked them, so only on a changed OpenSSL)."""
    if not tls.verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.ca_pem:
        ctx = ssl.create_default_context(cadata=tls.ca_pem.decode("ascii"))
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def build_contexts(settings: Iterable[BackendTLS | None]) -> None:
    """Build (or find built) the contexts of these backends' settings: at prepare time."""
    for tls in settings:
        if tls is not None:
            client_context(tls)


def server_name(tls: BackendTLS, host: str) -> str:
    """What a connection to ``host`` sends as SNI and checks the certificate against: ``sni``, else
    the server's host. Python sends no SNI for an IP address and checks it against the
    certificate's IP addresses instead."""
    return tls.sni or host


def describe(e: ssl.SSLError) -> str:
    """One line for the log, without OpenSSL's source file: e.g. ``certificate verify failed:
    unable to get local issuer certificate`` or ``TLS handshake failed: wrong version number``."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    return f"TLS handshake failed: {openssl_reason(e)}"
