"""The admin endpoint (``admin.bind``; plain HTTP/1.1, one request per connection).

GET /metrics   Prometheus text format (admin/metrics.py), summed over all workers
GET /healthz   200 while serving, 503 while draining (for a load balancer in front; no token needed)
GET /status    JSON (admin/status.py)
POST /servers/<backend>/<server>/drain   no new connections to that server, open ones continue
POST /servers/<backend>/<server>/ready   back to what its health check says

With ``admin.token`` set, every request but /healthz needs ``Authorization: Bearer <token>``.
A bind that is not a loopback address without a token is a config error, and refused here too.
Not on the data path: asyncio streams are fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from edgeproxy.admin.metrics import control_families
from edgeproxy.admin.status import build_status
from edgeproxy.admin.view import StatsView
from edgeproxy.config import AdminConfig, Config
from edgeproxy.config.values import is_loopback
from edgeproxy.log import log
from edgeproxy.metrics import Families, Family, merge, render
from edgeproxy.pools import PoolRegistry
from edgeproxy.staged import Staged

HEAD_LIMIT = 8192
REQUEST_TIMEOUT = 5.0
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AdminError(OSError):
    pass


def check_admin(admin: AdminConfig) -> None:
    if admin.token is None and not is_loopback(admin.bind.host):
        raise AdminError(0, f"admin.bind {admin.bind} is not a loopback address and admin.token is not set: refusing")


class AdminServer:
    """A control-plane component (runtime/control.py): reads a stats view, and changes server
    states only through the pool registry.

    A reload that changes ``admin.bind`` moves the endpoint: the new address is bound while the
    reload prepares (a failure, e.g. the address in use, fails the reload with that message and
    the endpoint stays where it was), and the old one is closed when the reload commits.
    """

    def __init__(self, view: StatsView, registry: PoolRegistry) -> None:
        self.view = view
        self.registry = registry
        self.config: AdminConfig | None = None
        self.server: asyncio.AbstractServer | None = None

    # -- Component ---------------------------------------------------------------------------------
    async def prepare(self, config: Config) -> Staged:
        admin = config.admin
        if admin is not None:
            check_admin(admin)
        if admin is None or (self.config is not None and self.config.bind == admin.bind):
            # Off, or the same address (a token change only): nothing to bind.
            return Staged(lambda: self._swap(admin, self.server if admin is not None else None))
        try:
            server = await asyncio.start_server(self._handle, admin.bind.host, admin.bind.port, limit=HEAD_LIMIT)
        except OSError as e:
            # asyncio's message repeats the address: the errno's text says it plainly.
            reason = os.strerror(e.errno) if e.errno else e.strerror or str(e)
            raise AdminError(e.errno, f"admin.bind: cannot bind {admin.bind}: {reason}") from None

        def commit() -> None:
            self._swap(admin, server)
            log.info("admin endpoint listening", bind=str(admin.bind), token=admin.token is not None)

        return Staged(commit, server.close)

    def _swap(self, admin: AdminConfig | None, server: asyncio.AbstractServer | None) -> None:
        if self.server is not None and self.server is not server:
            self.server.close()
        self.server, self.config = server, admin

    async def ready(self) -> None:
        return None

    async def stop(self) -> None:
        self._swap(None, None)

    def collect(self) -> list[Family]:
        return []

    def status(self) -> dict[str, Any]:
        return {}

    # -- one request --------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                status, ctype, body = await self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            status, ctype, body = HTTPStatus.BAD_REQUEST, "text/plain", b"bad request\n"
        except Exception as e:  # never let the admin endpoint take anything down
            log.error("admin endpoint error", error=repr(e))
            status, ctype, body = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"internal error\n"
        extra = 'WWW-Authenticate: Bearer realm="edgeproxy"\r\n' if status == HTTPStatus.UNAUTHORIZED else ""
        writer.write(
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _respond(self, head: bytes) -> tuple[HTTPStatus, str, bytes]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return HTTPStatus.BAD_REQUEST, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = urlsplit(target).path
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                return _text(HTTPStatus.METHOD_NOT_ALLOWED, "use GET\n")
            if self.view.draining:
                return _text(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return _text(HTTPStatus.OK, "ok\n")
        if not self._authorized(headers.get("authorization", "")):
            return _text(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n")
        if path == "/metrics" and method == "GET":
            return HTTPStatus.OK, METRICS_TYPE, render((await self.families()).values()).encode()
        if path == "/status" and method == "GET":
            data = await self.view.data_plane_families()
            return _json(HTTPStatus.OK, build_status(self.view, self.registry, data))
        segments = path.strip("/").split("/")
        if len(segments) == 4 and segments[0] == "servers" and segments[3] in ("drain", "ready"):
            if method != "POST":
                return _text(HTTPStatus.METHOD_NOT_ALLOWED, "use POST\n")
            return self._set_server(unquote(segments[1]), unquote(segments[2]), segments[3])
        if path in ("/metrics", "/status"):
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "use GET\n")
        return _text(
            HTTPStatus.NOT_FOUND, "not found: /metrics /healthz /status /servers/<backend>/<server>/drain|ready\n"
        )

    def _authorized(self, header: str) -> bool:
        token = self.config.token if self.config is not None else None
        if token is None:
            return True
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    async def families(self) -> Families:
        out: Families = merge({}, await self.view.data_plane_families())
        return merge(out, control_families(self.view, self.registry))

    def _set_server(self, backend: str, name: str, action: str) -> tuple[HTTPStatus, str, bytes]:
        if backend not in self.registry.pools:
            return _text(HTTPStatus.NOT_FOUND, f"no backend {backend!r}\n")
        server = self.registry.find_server(backend, name)
        if server is None:
            return _text(HTTPStatus.NOT_FOUND, f"no server {name!r} in backend {backend!r}\n")
        self.registry.set_admin_drain(backend, server, action == "drain")
        log.info(f"admin: server set to {action}", backend=backend, server=server.name, state=server.state.value)
        return _json(HTTPStatus.OK, {"backend": backend, "server": server.name, "state": server.state.value})


def _text(status: HTTPStatus, text: str) -> tuple[HTTPStatus, str, bytes]:
    return status, "text/plain; charset=utf-8", text.encode()


def _json(status: HTTPStatus, doc: Any) -> tuple[HTTPStatus, str, bytes]:
    return status, "application/json", (json.dumps(doc, indent=1) + "\n").encode()
