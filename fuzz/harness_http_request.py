"""Request head parser + rewrite: any head (bytes up to the first CRLF CRLF, as the relay cuts
them) gives a parsed request or HttpError, never another exception. What a parsed head is
rewritten into parses again (with a fresh parser) into the same request line, Host and framing,
and carries exactly one X-Forwarded-For: the client's, for an untrusted client and for a trusted
proxy alike (appended to its chain).

The first byte picks the listener's allowed upgrades and whether the peer is a trusted proxy."""

from __future__ import annotations

from edgeproxy.config import Forwarded
from edgeproxy.config.model import FORWARDED_HEADERS
from edgeproxy.config.values import parse_network
from edgeproxy.proto.forwarded import ForwardingPolicy
from edgeproxy.proto.http1 import HttpError
from edgeproxy.proto.http_request import RequestParser

_UPGRADES = (frozenset(), frozenset({b"websocket"}), frozenset({b"websocket", b"h2c"}))
_UNTRUSTED = ForwardingPolicy(Forwarded(headers=FORWARDED_HEADERS)).for_client(("192.0.2.7", 4000), ("192.0.2.1", 80))
_TRUSTED = ForwardingPolicy(Forwarded(trusted=(parse_network("192.0.2.0/24"),), headers=FORWARDED_HEADERS)).for_client(
    ("192.0.2.7", 4000), ("192.0.2.1", 80)
)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    end = data.find(b"\r\n\r\n", 1)
    if end < 0:
        return  # the relay parses complete heads only: up to the first blank line
    head = data[1 : end + 4]
    parser = RequestParser(_UPGRADES[mode % 3])
    try:
        parser.parse(head)
    except HttpError:
        return
    fwd = _TRUSTED if mode & 4 else _UNTRUSTED
    out = fwd.rewrite(head, parser)
    again = RequestParser(_UPGRADES[mode % 3])
    try:
        again.parse(out)
    except HttpError as e:
        raise AssertionError(f"our own rewrite is refused: {e.detail}: {out!r}") from None
    before = (parser.method, parser.target, parser.host, parser.content_length, parser.chunked, parser.upgrade)
    after = (again.method, again.target, again.host, again.content_length, again.chunked, again.upgrade)
    if before != after:
        raise AssertionError(f"the rewrite changed the request: {before!r} -> {after!r}")
    xff = [v for code, name, v in again.forwarding if name == b"x-forwarded-for"]
    if len(xff) != 1 or not xff[0].endswith(b"192.0.2.7"):
        raise AssertionError(f"X-Forwarded-For after the rewrite: {xff!r}")
    if [name for code, name, v in again.forwarding if b"_" in name]:
        raise AssertionError("an underscore spelling of a forwarding header went upstream")


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
