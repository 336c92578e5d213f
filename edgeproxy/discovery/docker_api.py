"""A small async client for the Docker Engine API: GET JSON and the /events stream.

Over ``unix://`` sockets and ``tcp://`` (TLS with client certificates when configured), with a
minimal HTTP/1.1 client on asyncio streams: one connection per request (``Connection: close``),
bodies by Content-Length, chunked or EOF. Discovery makes a handful of calls every few seconds,
so connection reuse would buy nothing and a library (aiodocker pulls in aiohttp) would be the
largest dependency of the project for four GETs.

Errors are sorted into what discovery must do about them (TESTBED.md, measured):
``ManagerUnavailable`` (refused, reset, timed out, 503 "not a swarm manager") -> try the next
manager; ``NoLeader`` (500 "does not have a leader" / DeadlineExceeded) -> the control plane has
lost quorum; ``APIError`` -> anything else the engine answered.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from edgeproxy.config.model import TLSFiles

# The API version discovery was written against. Each engine is asked (GET /version) and spoken
# to in the oldest version it serves at or above this one, or its newest if it is older: Docker 29
# serves API >= 1.44 only and answers 400 "client version 1.41 is too old" to /v1.41 paths.
PREFERRED_VERSION = (1, 41)
MAX_BODY = 64 * 1024 * 1024  # /tasks of a large cluster is a few MB; bound it anyway
MAX_HEADER_LINE = 64 * 1024


class APIError(Exception):
    def __init__(self, manager: str, status: int, message: str) -> None:
        super().__init__(f"{manager}: HTTP {status}: {message}" if status else f"{manager}: {message}")
        self.manager = manager
        self.status = status
        self.message = message


class ManagerUnavailable(APIError):
    """This manager cannot answer now (down, not a manager, too slow): ask another one."""


class NoLeader(APIError):
    """The manager answers but the swarm has no leader (quorum lost): nobody can answer now."""


def _classify(manager: str, status: int, message: str) -> APIError:
    if status == 503:
        return ManagerUnavailable(manager, status, message)
    if status == 500 and ("does not have a leader" in message or "DeadlineExceeded" in message):
        return NoLeader(manager, status, message)
    return APIError(manager, status, message)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a manager's API is: a unix socket path or host:port (+ TLS)."""

    url: str
    unix_path: str | None
    host: str
    port: int
    tls: ssl.SSLContext | None

    @classmethod
    def parse(cls, url: str, tls: TLSFiles | None = None) -> Endpoint:
        if url.startswith("unix://"):
            return cls(url, url[len("unix://") :], "docker", 0, None)
        parts = urlsplit(url)
        secure = parts.scheme == "https" or (parts.scheme == "tcp" and tls is not None)
        port = parts.port or (2376 if secure else 2375)
        ctx: ssl.SSLContext | None = None
        if secure:
            ctx = ssl.create_default_context(cafile=tls.ca if tls else None)
            if tls is not None:
                ctx.load_cert_chain(tls.cert, tls.key)
        return cls(url, None, parts.hostname or "localhost", port, ctx)


def filters(**values: list[str]) -> str:
    """The engine's ``filters`` query parameter: URL-encoded JSON of name -> [values]."""
    return quote(json.dumps({k.replace("_", "-"): v for k, v in values.items()}, separators=(",", ":")))


class DockerClient:
    """One manager's API. ``timeout`` bounds every call (a leaderless manager blocks for 20 s)."""

    def __init__(self, endpoint: Endpoint, timeout: float = 3.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.version: str | None = None  # "1.41", negotiated on first use

    async def _prefix(self) -> str:
        if self.version is None:
            self.version = negotiate(self.url, await self._get("/version", None))
        return f"/v{self.version}"

    @property
    def url(self) -> str:
        return self.endpoint.url

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        """GET /<version><path> and return the decoded JSON body."""
        try:
            return await asyncio.wait_for(self._versioned_get(path, query), self.timeout)
        except TimeoutError:
            raise ManagerUnavailable(self.url, 0, f"no answer within {self.timeout:g}s") from None

    async def _versioned_get(self, path: str, query: Mapping[str, str] | None) -> Any:
        return await self._get(await self._prefix() + path, query)

    async def _get(self, path: str, query: Mapping[str, str] | None) -> Any:
        status, body = await self._exchange("GET", path, query)
        if status != 200:
            raise _classify(self.url, status, _message(body))
        try:
            return json.loads(body)
        except ValueError as e:
            raise APIError(self.url, status, f"bad JSON: {e}") from None

    async def _exchange(
        self, method: str, path: str, query: Mapping[str, str] | None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        """One request on a new connection: (status, body). Discovery only ever sends GET; the
        writes (ACME storage) go through ``edgeproxy.acme.swarm_api``."""
        try:
            reader, writer = await self._open()
        except OSError as e:
            self.version = None  # it may come back as another engine version
            raise ManagerUnavailable(self.url, 0, f"{type(e).__name__}: {e}") from None
        try:
            status, headers = await self._request(reader, writer, path, query, method, body)
            data = await _read_body(reader, headers)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as e:
            raise ManagerUnavailable(self.url, 0, f"{type(e).__name__}: {e}") from None
        finally:
            writer.close()
        return status, data

    async def events(self, query: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """Stream /events as decoded JSON objects until the connection ends (then returns).

        Only connecting and the response head are bounded by the timeout: the stream itself is
        quiet for as long as nothing changes.
        """
        try:
            prefix = await asyncio.wait_for(self._prefix(), self.timeout)
            reader, writer = await asyncio.wait_for(self._open(), self.timeout)
        except (OSError, TimeoutError) as e:
            raise ManagerUnavailable(self.url, 0, f"{type(e).__name__}: {e}") from None
        try:
            try:
                status, headers = await asyncio.wait_for(
                    self._request(reader, writer, prefix + "/events", query), self.timeout
                )
            except (OSError, TimeoutError, EOFError, ValueError, asyncio.IncompleteReadError) as e:
                raise ManagerUnavailable(self.url, 0, f"{type(e).__name__}: {e}") from None
            if status != 200:
                raise _classify(self.url, status, _message(await _read_body(reader, headers)))
            buffer = b""
            async for chunk in _body_chunks(reader, headers):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ep = self.endpoint
        if ep.unix_path is not None:
            return await asyncio.open_unix_connection(ep.unix_path, limit=MAX_HEADER_LINE)
        return await asyncio.open_connection(
            ep.host, ep.port, ssl=ep.tls, server_hostname=ep.host if ep.tls else None, limit=MAX_HEADER_LINE
        )

    async def _request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
        query: Mapping[str, str] | None,
        method: str = "GET",
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str]]:
        target = path
        if query:
            target += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        host = self.endpoint.host
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode("ascii") + b"\r\n" + (body or b""))
        await writer.drain()
        line = await reader.readline()
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError(f"not an HTTP response: {line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers


async def _body_chunks(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> AsyncIterator[bytes]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise EOFError("EOF in chunked body")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)  # CRLF after each chunk
    elif "content-length" in headers:
        left = int(headers["content-length"])
        if left > MAX_BODY:
            raise ValueError(f"body of {left} bytes is too large")
        if left:
            yield await reader.readexactly(left)
    else:
        while data := await reader.read(65536):
            yield data


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in _body_chunks(reader, headers):
        size += len(chunk)
        if size > MAX_BODY:
            raise ValueError(f"body larger than {MAX_BODY} bytes")
        parts.append(chunk)
    return b"".join(parts)


def negotiate(manager: str, info: Any) -> str:
    """The API version to speak to an engine, from its ``GET /version`` (ApiVersion, MinAPIVersion)."""

    def parse(v: Any) -> tuple[int, int] | None:
        try:
            major, minor = str(v).split(".", 1)
            return int(major), int(minor)
        except ValueError:
            return None

    top = parse(info.get("ApiVersion")) if isinstance(info, dict) else None
    if top is None:
        raise APIError(manager, 200, "GET /version: no ApiVersion")
    low = parse(info.get("MinAPIVersion")) or (1, 12)
    major, minor = min(top, max(low, PREFERRED_VERSION))
    return f"{major}.{minor}"


def _message(body: bytes) -> str:
    """The engine's error text: {"message": "..."} or the raw body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return body.decode("utf-8", "replace").strip()[:500]
