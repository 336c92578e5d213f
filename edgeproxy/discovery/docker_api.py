"""A small async Docker Engine API client: the few GETs swarm discovery needs, and the event stream.

Why not aiodocker: it needs aiohttp (with yarl, multidict, frozenlist, aiosignal), a second HTTP stack
for three GETs and one streaming GET, while edgeproxy already ships httptools, which parses the
responses here (Content-Length and chunked alike). What discovery needs on top of any client is
its own anyway: a hard deadline per call (a leaderless manager blocks a call for 20 s, TESTBED.md)
and a classification of failures that says whether to try the next manager.

One connection per call (``Connection: close``): a refresh is three calls every few seconds, so
keep-alive would save nothing worth its state.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import httptools

from edgeproxy import __version__
from edgeproxy.config.model import TLSFiles

# The API version we were written against; newer engines are asked for the oldest version they
# still serve at or above it (Docker 29 serves >= 1.44 only), older ones for their newest.
PREFERRED_VERSION = (1, 41)
MAX_BODY = 64 << 20  # a /tasks answer is ~3 KiB per task: room for ~20k tasks
MAX_EVENT = 1 << 20

ErrorKind = Literal["unreachable", "timeout", "unavailable", "no_leader", "not_found", "http", "bad_response"]


class DockerError(Exception):
    """One engine gave no usable answer. ``kind`` tells the caller what it means:

    - ``unreachable``: connect/TLS failed or the connection broke; try the next manager.
    - ``timeout``: no answer within the deadline; a manager without quorum blocks like this.
    - ``unavailable``: HTTP 503, e.g. "This node is not a swarm manager".
    - ``no_leader``: HTTP 500 "The swarm does not have a leader" / "DeadlineExceeded".
    - ``not_found``: HTTP 404 (a service removed between two calls).
    - ``http`` / ``bad_response``: any other status, or an answer that is not the JSON expected.
    """

    def __init__(self, kind: ErrorKind, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def classify(status: int, message: str) -> ErrorKind:
    if status == 503:
        return "unavailable"
    if status == 404:
        return "not_found"
    low = message.lower()
    if status == 500 and ("does not have a leader" in low or "deadlineexceeded" in low or "deadline exceeded" in low):
        return "no_leader"
    return "http"


class _Response:
    """httptools callbacks for one response; ``on_chunk`` (event streams) receives the body."""

    __slots__ = ("body", "complete", "headers_done", "on_chunk", "parser", "size", "streaming")

    def __init__(self, on_chunk: Callable[[bytes], None] | None = None) -> None:
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.complete = False
        self.on_chunk = on_chunk
        self.parser: Any = None
        self.streaming = False

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Only a 200 is an event stream; an error's body is collected for its message.
        self.streaming = self.on_chunk is not None and self.parser.get_status_code() == 200

    def on_body(self, data: bytes) -> None:
        if self.streaming:
            assert self.on_chunk is not None
            self.on_chunk(data)
            return
        self.size += len(data)
        if self.size > MAX_BODY:
            raise DockerError("bad_response", f"response larger than {MAX_BODY} bytes")
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


def parse_url(url: str) -> tuple[str | None, str, int, bool]:
    """(unix socket path, host, port, use TLS) of a manager URL (unix://, tcp://, http://, https://)."""
    if url.startswith("unix://"):
        return url[len("unix://") :], "localhost", 0, False
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname or ""
    tls = scheme == "https"
    default = 2376 if scheme in ("https", "tcp") else 2375
    return None, host, parts.port or default, tls


def ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """Mutual TLS as ``docker --tlsverify``: the engine's cert must chain to ``ca`` and name the host."""
    ctx = ssl.create_default_context(cafile=tls.ca)
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


class DockerAPI:
    """One engine (a manager, normally). Calls raise ``DockerError`` and never hang past ``timeout``."""

    def __init__(self, url: str, tls: TLSFiles | None = None, timeout: float = 3.0) -> None:
        self.url = url
        self.timeout = timeout
        self.unix_path, self.host, self.port, use_tls = parse_url(url)
        # tcp:// speaks TLS when the config has client certs, like DOCKER_TLS_VERIFY; https:// always.
        self.tls = tls if (use_tls or (url.startswith("tcp://") and tls is not None)) else None
        self._ssl: ssl.SSLContext | None = None
        self._prefix: str | None = None  # "/v1.41", negotiated on first use

    def __repr__(self) -> str:
        return f"<DockerAPI {self.url}>"

    # -- public calls --------------------------------------------------------------------------
    async def get(self, path: str, filters: dict[str, list[str]] | None = None) -> Any:
        """GET a versioned API path (``/services``) and return the decoded JSON."""
        try:
            async with asyncio.timeout(self.timeout):
                prefix = await self._version_prefix()
                return await self._get_json(prefix + path, filters)
        except TimeoutError:
            raise DockerError("timeout", f"no answer within {self.timeout:g}s") from None

    async def watch_events(
        self,
        filters: dict[str, list[str]],
        on_event: Callable[[dict[str, Any]], None],
        on_open: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        """Follow ``GET /events`` until the engine ends the stream (returns) or it breaks (raises).

        Connecting and the response head are bounded by ``timeout``; the stream itself is not
        (it is silent while nothing changes). Cancel the task to stop watching.
        """
        buffer = bytearray()

        def on_chunk(data: bytes) -> None:
            # The engine writes one JSON object per line (Go's json.Encoder), and JSON escapes
            # newlines inside strings, so a newline always ends an event.
            buffer.extend(data)
            *lines, rest = buffer.split(b"\n")
            if len(rest) > MAX_EVENT:
                raise DockerError("bad_response", "event larger than 1 MiB")
            buffer[:] = rest
            for line in lines:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise DockerError("bad_response", f"event is not JSON: {line[:80]!r}") from None
                if isinstance(obj, dict):
                    on_event(obj)

        try:
            async with asyncio.timeout(self.timeout):
                prefix = await self._version_prefix()
                reader, writer = await self._open()
        except TimeoutError:
            raise DockerError("timeout", f"no answer within {self.timeout:g}s") from None
        resp = _Response(on_chunk)
        parser = httptools.HttpResponseParser(resp)
        resp.parser = parser
        try:
            writer.write(self._request(prefix + "/events", filters))
            try:
                async with asyncio.timeout(self.timeout):
                    while not resp.headers_done:
                        await self._feed(reader, parser)
            except TimeoutError:
                raise DockerError("timeout", f"no event stream within {self.timeout:g}s") from None
            status = parser.get_status_code()
            if status != 200:
                while not resp.complete:
                    await self._feed(reader, parser)
                raise self._status_error(status, b"".join(resp.body))
            if on_open is not None:
                opened = on_open()
                if opened is not None:
                    await opened
            while not resp.complete:
                if not await self._feed(reader, parser, eof_ok=True):
                    return
        finally:
            writer.close()

    # -- plumbing ------------------------------------------------------------------------------
    async def _version_prefix(self) -> str:
        if self._prefix is None:
            info = await self._get_json("/version", None)
            self._prefix = "/v" + negotiate(info)
        return self._prefix

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.unix_path is not None:
                return await asyncio.open_unix_connection(self.unix_path)
            if self.tls is not None and self._ssl is None:
                self._ssl = ssl_context(self.tls)
            return await asyncio.open_connection(
                self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
            )
        except (OSError, ssl.SSLError) as e:
            self._prefix = None  # the engine may come back as another version
            raise DockerError("unreachable", _oserror_text(e)) from None

    def _request(self, path: str, filters: dict[str, list[str]] | None) -> bytes:
        if filters:
            path += "?" + urllib.parse.urlencode({"filters": json.dumps(filters, separators=(",", ":"))})
        host = self.host if self.unix_path is None else "docker"
        return (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgeproxy/{__version__}\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        ).encode("ascii")

    async def _feed(self, reader: asyncio.StreamReader, parser: Any, eof_ok: bool = False) -> bool:
        """Read once and feed the parser; False on a clean EOF when ``eof_ok``."""
        try:
            data = await reader.read(65536)
        except (OSError, ssl.SSLError) as e:
            raise DockerError("unreachable", _oserror_text(e)) from None
        if not data:
            if eof_ok:
                return False
            raise DockerError("unreachable", "connection closed before the response ended")
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as e:
            # httptools wraps what a callback raised (a body over the limit) in its own error.
            if isinstance(e.__context__, DockerError):
                raise e.__context__ from None
            raise DockerError("bad_response", f"invalid HTTP response: {e}") from None
        return True

    async def _get_json(self, path: str, filters: dict[str, list[str]] | None) -> Any:
        reader, writer = await self._open()
        resp = _Response()
        parser = httptools.HttpResponseParser(resp)
        try:
            writer.write(self._request(path, filters))
            while not resp.complete:
                await self._feed(reader, parser)
        finally:
            writer.close()
        body = b"".join(resp.body)
        status = parser.get_status_code()
        if status != 200:
            raise self._status_error(status, body)
        try:
            return json.loads(body)
        except ValueError:
            raise DockerError("bad_response", f"not JSON: {body[:80]!r}") from None

    @staticmethod
    def _status_error(status: int, body: bytes) -> DockerError:
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = body[:200].decode("utf-8", "replace")
        return DockerError(classify(status, message), f"HTTP {status}: {message.strip()}", status)


def negotiate(version_info: Any) -> str:
    """The API version to speak, from ``GET /version`` (ApiVersion, MinAPIVersion)."""

    def parse(v: Any) -> tuple[int, int] | None:
        try:
            major, minor = str(v).split(".", 1)
            return int(major), int(minor)
        except ValueError:
            return None

    if not isinstance(version_info, dict):
        raise DockerError("bad_response", "GET /version: not an object")
    top = parse(version_info.get("ApiVersion"))
    low = parse(version_info.get("MinAPIVersion")) or (1, 12)
    if top is None:
        raise DockerError("bad_response", "GET /version: no ApiVersion")
    chosen = min(top, max(low, PREFERRED_VERSION))
    return f"{chosen[0]}.{chosen[1]}"


def _oserror_text(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, FileNotFoundError):
        return "no such socket"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
