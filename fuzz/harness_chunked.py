"""Chunked body reader: any bytes give body bytes and the rest, or HttpError, never another
exception, and the same answer however the bytes are cut into reads (the chunk-size line limit
included: issue 10 defect 7). The first two bytes pick the cut points and the forbidden trailers."""

from __future__ import annotations

import itertools

from edgeproxy.proto.http1 import ChunkedReader, HttpError

_FORBIDDEN = frozenset({b"x-forwarded-for", b"host"})


def _feed(body: bytes, cuts: list[int], forbidden: frozenset[bytes]) -> tuple[bytes, bytes | None] | str:
    reader = ChunkedReader(forbidden)
    out = b""
    points = [0, *sorted(c for c in cuts if 0 < c < len(body)), len(body)]
    try:
        for a, b in itertools.pairwise(points):
            got, rest = reader.feed(body[a:b])
            out += got
            if rest is not None:
                return out, rest + body[b:]
    except HttpError as e:
        return e.end
    return out, None


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    step, flags, body = data[0] + 1, data[1], data[2:]
    forbidden = _FORBIDDEN if flags & 1 else frozenset()
    whole = _feed(body, [], forbidden)
    pieces = _feed(body, list(range(step, len(body), step)), forbidden)
    if whole != pieces:
        raise AssertionError(f"cut into {step}-byte reads: {pieces!r}, in one read: {whole!r}")
    if isinstance(whole, tuple) and whole[1] is not None and whole[0] + whole[1] != body:
        raise AssertionError("body bytes + rest are not the input")


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
