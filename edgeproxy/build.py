"""Which build of edgeproxy is running: the hot path compiled to C by mypyc, or pure Python.

``pip install .`` compiles the modules in ``COMPILED`` with mypyc where a C compiler is there
(setup.py) and installs them next to their ``.py`` sources, which stay the fallback: a machine
without a compiler, or ``EDGEPROXY_PURE_PYTHON=1`` at install time, gets the pure-Python modules
only. The build writes ``STAMP`` beside them: the digest of the sources it compiled.

At run time the compiled modules are used unless
- ``EDGEPROXY_PURE_PYTHON=1`` is set (the same code, interpreted: CI runs the tests both ways), or
- the sources changed since the build (an editable install whose .py files were edited: Python
  would otherwise load the stale compiled module, which shadows the edited source).
Then an import hook loads every module of ``COMPILED`` from its ``.py`` file, all of them or none
(compiled modules call one another directly, so a mix would run the stale code anyway).

A leaf module: nothing of edgeproxy, imported by ``edgeproxy/__init__.py`` before anything else.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from _blake2 import blake2b  # not hashlib: see sources_digest
from collections.abc import Sequence
from types import ModuleType

# The hot path of a request (issue 15). Not the package __init__ files: they stay Python.
COMPILED = (
    "edgeproxy.proto.http1",
    "edgeproxy.proto.http_request",
    "edgeproxy.proto.http_response",
    "edgeproxy.proto.forwarded",
    "edgeproxy.proto.routing",
    "edgeproxy.proto.names",
    "edgeproxy.balance.server",
    "edgeproxy.balance.algorithms",
    "edgeproxy.pools.pool",
    "edgeproxy.net.upstream_pool",
    "edgeproxy.net.deadlines",
    "edgeproxy.net.http_upstream",
    "edgeproxy.net.http_relay",
    "edgeproxy.net.tcp_relay",
    # what the relay reads per request: the listener's context (routing) and its counters
    "edgeproxy.net.context",
    "edgeproxy.stats",
    # TLS termination (issue 13): the record layer between the socket and the relay, and the
    # HTTPS additions (HSTS, redirects)
    "edgeproxy.net.tls",
    "edgeproxy.proto.https",
)
STAMP = "compiled.stamp"  # beside this file: "<compiler> <version> <sources digest>"
PURE_ENV = "EDGEPROXY_PURE_PYTHON"

# (os.path, not pathlib: that would load pathlib and urllib.parse, ~0.3 MiB, into every process)
_ROOT = os.path.dirname(os.path.realpath(__file__))
Root = str | os.PathLike[str]


def source_path(module: str, root: Root = _ROOT) -> str:
    """``edgeproxy.proto.http1`` -> ``<root>/proto/http1.py``."""
    return os.path.join(root, *module.split(".")[1:]) + ".py"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def sources_digest(root: Root = _ROOT, modules: Sequence[str] = COMPILED) -> str:
    # CPython's own BLAKE2 rather than hashlib, which initialises OpenSSL's digests (_hashlib):
    # ~0.6 MiB of RSS in every process, for this one digest at start (issue 15). (The hash ring,
    # balance/algorithms.py, needs BLAKE2 anyway.)
    h = blake2b(digest_size=32)
    for module in modules:
        h.update(module.encode() + b"\0" + _read(source_path(module, root)) + b"\0")
    return h.hexdigest()


def _compiled_present(root: Root) -> bool:
    first = source_path(COMPILED[0], root).removesuffix(".py")
    return any(os.path.exists(first + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _decide(root: Root = _ROOT) -> tuple[bool, str]:
    """(use the compiled modules?, what to say about the build)."""
    if not _compiled_present(root):
        return False, "pure Python"
    try:
        compiler, version, digest = _read(os.path.join(root, STAMP)).decode().split()
    except (OSError, ValueError):
        return False, "pure Python: compiled modules without a build stamp"
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return False, f"pure Python: {PURE_ENV} set"
    try:
        current = sources_digest(root)
    except OSError:
        current = digest  # an install without the sources: the compiled modules are all there is
    if current != digest:
        return False, f"pure Python: sources changed since the {compiler} build"
    return True, f"compiled: {compiler} {version}, {len(COMPILED)} modules"


class _SourceFirst:
    """Loads the modules of ``COMPILED`` from their .py files even where a compiled one exists.
    (A meta path finder by its ``find_spec`` alone: ``importlib.abc`` would import
    ``importlib.resources`` and with it tempfile, shutil and the compression modules, some 1.5
    MiB of RSS in every process.)"""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _PURE_SET:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


_PURE_SET = frozenset(COMPILED)
compiled, description = _decide()
if not compiled and _compiled_present(_ROOT) and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceFirst())
