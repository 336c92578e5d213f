"""What a TLS-terminating listener knows about a connection's TLS session, for whoever relays it.

The TLS layer (net/tls.py) answers ``transport.get_extra_info("tls")`` with a ``TlsInfo`` once
the handshake is done (an app protocol gets its transport only then), and ``None`` is what a
plain transport answers (the default of ``get_extra_info``). Readers: the access log (version,
SNI) and PROXY v2 on tcp listeners with ``tls`` (``PP2_TYPE_SSL`` sub-TLVs ``SSL_VERSION`` and
``SSL_CIPHER``, ``PP2_TYPE_AUTHORITY`` from ``sni``), as HAProxy's ``send-proxy-v2-ssl`` sends them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TlsInfo:
    version: str
    """``ssl.SSLObject.version()``: ``"TLSv1.3"`` or ``"TLSv1.2"``."""
    cipher: str
    """The OpenSSL name of the cipher suite (``SSLObject.cipher()[0]``), e.g.
    ``"TLS_AES_256_GCM_SHA384"`` or ``"ECDHE-ECDSA-AES128-GCM-SHA256"``."""
    sni: str | None
    """The server name the client sent (lower case, no trailing dot); None when it sent none."""
    alpn: str | None
    """The protocol agreed by ALPN (``"http/1.1"``); None when none was."""
