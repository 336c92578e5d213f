"""Reading the PROXY header that a trusted peer (a cloud load balancer, another edgeproxy) must
send first. Only peers in ``accept_proxy.trusted`` ever get here: any other peer's bytes are never
parsed as a header, so it cannot claim another client address (SPEC.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from edgeproxy.log import log
from edgeproxy.proto.proxy_protocol import NEED_DATA, ProxyHeaderError, parse_proxy_header

if TYPE_CHECKING:
    from edgeproxy.net.context import ListenerContext


class HeaderOwner(Protocol):
    client: tuple[str, int]
    dest: tuple[str, int]

    def proxy_header_done(self, client: tuple[str, int], dest: tuple[str, int], rest: bytes) -> None: ...

    def close(self, reason: str, *, abort: bool = False) -> None: ...


class ClientAddressReader:
    """Accumulates bytes until a complete header; the parser bounds the size (v1: 107 bytes).

    It has no timer of its own: the owner's connection timer bounds this phase
    (``timeouts.http_request``) and calls ``timed_out``, so nothing outlives a peer that connects
    and closes (a load balancer's health check).
    """

    __slots__ = ("buf", "ctx", "owner")

    def __init__(self, ctx: ListenerContext, owner: HeaderOwner) -> None:
        self.ctx = ctx
        self.owner = owner
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        try:
            result = parse_proxy_header(self.buf)
        except ProxyHeaderError as e:
            self._fail("bad_proxy_header", str(e))
            return
        if result is NEED_DATA:
            return
        header, used = result
        rest = self.buf[used:]
        self.buf = b""
        owner = self.owner
        if header.local or header.src is None or header.dst is None:
            # LOCAL / UNKNOWN: the peer speaks for itself (e.g. its own health check).
            owner.proxy_header_done(owner.client, owner.dest, rest)
        else:
            owner.proxy_header_done(header.src, header.dst, rest)

    def timed_out(self) -> None:
        """The owner's deadline for the header passed."""
        self._fail("proxy_header_timeout", "no complete PROXY header within timeouts.http_request")

    def _fail(self, reason: str, detail: str) -> None:
        log.warning(
            "dropping trusted peer: invalid or missing PROXY header",
            listener=self.ctx.listener.name,
            peer=f"{self.owner.client[0]}:{self.owner.client[1]}",
            error=detail,
        )
        self.owner.close(reason)
