"""redirect_https's Location (proto/https.py): any Host and request target give None or an
``https://`` URL whose host is the Host's name, with no byte that could end or split a header
line, and never another exception. The input's first byte splits Host from the target."""

from __future__ import annotations

import re

from edgeproxy.proto.https import https_location

_SAFE = re.compile(rb"[\x21-\x7e]*")  # visible ASCII: no CR, LF, space, NUL or control byte


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cut = 1 + data[0] * (len(data) - 1) // 256
    host, target = data[1:cut], data[cut:]
    port = 443 if data[0] & 1 else 8443
    for h in (host, None):
        location = https_location(h, target, port, "192.0.2.1")
        if location is None:
            continue
        if not location.startswith(b"https://"):
            raise AssertionError(f"not an https URL: {location!r}")
        authority, _, path = location[8:].partition(b"/")
        name = authority if port == 443 else authority.removesuffix(b":8443")
        if h is not None and not h.startswith(name):
            raise AssertionError(f"host {h!r} became {name!r}")
        if not _SAFE.fullmatch(name) or b"\r" in path or b"\n" in path:
            raise AssertionError(f"unsafe Location {location!r}")


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
