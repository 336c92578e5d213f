"""Files a config names that the data plane needs (a backend's ``tls.ca``): read once, by the
loader, where the YAML path of any error is known, and kept in the ``Config`` as bytes.

The process that owns the config file (the single process or the supervisor) reads them from
disk; a worker, which does not open files (ARCHITECTURE.md: it runs as ``user``), parses the same
config with the contents the supervisor sends (``FileReader`` over ``Config.files()``).
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from collections.abc import Callable, Mapping

FileReader = Callable[[str], bytes]
"""A path -> its bytes; raises OSError (or ValueError) with a message for the operator."""

MAX_FILE_BYTES = 4 << 20
"""A CA bundle is a few hundred KiB (Debian's, 146 certificates: 220 KiB); 4 MiB keeps a wrong
path (a log file, a disk image) from being read whole."""

_OPENSSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] | \(_ssl\.c:\d+\)$")


def openssl_reason(e: ssl.SSLError) -> str:
    """OpenSSL's reason without its library code and Python's source line (which differ between
    builds): ``[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)`` -> ``wrong version
    number``."""
    return _OPENSSL_NOISE.sub("", str(e.args[1] if len(e.args) > 1 else e))


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n[^-]*?-----END CERTIFICATE-----")


def read_from_disk(path: str) -> bytes:
    """A regular file's bytes, at most ``MAX_FILE_BYTES``. Opened without blocking and checked
    to be a regular file first, so that a path to a FIFO or a device (a typo, or a fuzzed config)
    can neither hang nor flood the loader."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_from(files: Mapping[str, bytes]) -> FileReader:
    """A reader over contents read elsewhere (a worker's, from its supervisor)."""

    def read(path: str) -> bytes:
        found = files.get(path)
        if found is None:
            raise ValueError(f"{path} was not sent by the supervisor")
        return found

    return read


def ca_certificates(read: FileReader, path: str) -> bytes:
    """The PEM certificates of a CA file, checked by OpenSSL as a TLS client will load them.

    Only the ``CERTIFICATE`` blocks are kept: bundles carry comments (names in UTF-8 in some
    distributions') that ``SSLContext.load_verify_locations(cadata=...)`` would refuse as text.
    Raises ValueError with the reason.
    """
    try:
        data = read(path)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ValueError(f"no PEM certificate (-----BEGIN CERTIFICATE-----) in {path}")
    pem = b"\n".join(blocks) + b"\n"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except ssl.SSLError as e:
        raise ValueError(f"{path} holds a certificate OpenSSL cannot read: {openssl_reason(e)}") from None
    except ValueError as e:  # non-ASCII inside a block
        raise ValueError(f"{path} holds a certificate OpenSSL cannot read: {e}") from None
    return pem
