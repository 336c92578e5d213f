"""TLS ClientHello reader: any bytes, fed in one read or split at a point the input chooses, give a
ClientHello, NEED_DATA or TlsHelloError, never another exception, and the same answer either way."""

from __future__ import annotations

from edgeproxy.proto.proxy_protocol import NEED_DATA
from edgeproxy.proto.tls_hello import ClientHello, ClientHelloReader, TlsHelloError, read_client_hello


def _outcome(pieces: list[bytes]) -> object:
    reader = ClientHelloReader()
    result: object = NEED_DATA
    try:
        for piece in pieces:
            result = reader.feed(piece)
            if result is not NEED_DATA:
                break
    except TlsHelloError:
        return "error"
    if not (result is NEED_DATA or isinstance(result, ClientHello)):
        raise AssertionError(f"unexpected result {result!r}")
    return result


def test_one_input(data: bytes) -> None:
    try:
        whole: object = read_client_hello(data)
    except TlsHelloError:
        whole = "error"
    if len(data) < 2:
        return
    cut = 1 + data[0] * len(data) // 256  # the first byte picks where the read splits
    split = _outcome([data[:cut], data[cut:]])
    if whole != split and not (whole == "error" or split == "error"):
        raise AssertionError(f"one read gave {whole!r}, two reads gave {split!r}")


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
