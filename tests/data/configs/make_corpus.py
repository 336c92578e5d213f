"""Writes the corpus of bad and odd config files (issue 10): ``python -m tests.data.configs.make_corpus``.

The files are committed (they double as fuzz seeds: fuzz/corpus/config/ holds a selection); this
script says how they were made and makes them again. Every file is ``base.yaml`` changed in one way:

- ``bad/``: files edgeproxy must refuse with ``FILE:LINE:`` errors, and a running proxy must keep
  its configuration on SIGHUP (tests/integration/test_config_corpus.py);
- ``odd/``: the same configuration as ``base.yaml`` written in odd but valid YAML (flow style, CRLF,
  a BOM, anchors, ``off`` unquoted, tags that agree...): loading one changes nothing.

``@LISTEN@``, ``@SERVER@`` and ``@ADMIN@`` are replaced by the test's addresses before use.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PLACES = {b"@LISTEN@": b"127.0.0.1:18080", b"@SERVER@": b"127.0.0.1:19000", b"@ADMIN@": b"127.0.0.1:19901"}

# The configuration every file is a variant of; leaves are YAML text inserted as written.
Tree = dict[str, Any]
BASE: Tree = {
    "workers": "2",
    "log": {"level": "info", "access": '"off"'},
    "timeouts": {"connect": "1s", "drain": "1s"},
    "admin": {"bind": '"@ADMIN@"'},
    "listeners": [{"name": "front", "bind": '"@LISTEN@"', "mode": "tcp", "backend": "app"}],
    "backends": {"app": {"health": {"type": "none"}, "servers": ['"@SERVER@"']}},
}


def render(node: Any, indent: int = 0) -> str:
    """Block-style YAML of a tree whose leaves are already YAML text."""
    pad = " " * indent
    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            if isinstance(value, dict | list) and value:
                out.append(f"{pad}{key}:\n{render(value, indent + 2)}")
            else:
                out.append(f"{pad}{key}: {inline(value)}\n")
        return "".join(out)
    out = []
    for item in node:
        if isinstance(item, dict) and item:
            first, *rest = render(item, indent + 2).splitlines(keepends=True)
            out.append(f"{pad}- {first.lstrip()}{''.join(rest)}")
        else:
            out.append(f"{pad}- {inline(item)}\n")
    return "".join(out)


def inline(node: Any) -> str:
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k}: {inline(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(inline(v) for v in node) + "]"
    return str(node)


def with_value(path: str, value: Any, tree: Tree | None = None) -> Tree:
    """A copy of the tree with ``value`` at ``path`` (``a.b[0].c``), created if missing."""
    import copy

    out = copy.deepcopy(BASE if tree is None else tree)
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node: Any = out
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value
    return out


def without(path: str) -> Tree:
    import copy

    out = copy.deepcopy(BASE)
    *head, last = path.split(".")
    node: Any = out
    for part in head:
        node = node[part]
    del node[last]
    return out


# -- bad values by kind of field ---------------------------------------------------------------
YAML11 = ["1:30", "017", "0x1f", "0b11", "0o17", "1e3", "1.5", ".inf", "-.inf", ".nan", "yes", "off", "on", "true"]
TAGS = ["!!int abc", "!!int 1e3", "!!bool maybe", "!!python/object:os.system x", "!!binary aGk=", "!custom x"]
EMPTY = ["~", '""', "[]", "{}", "null"]
INT_BAD = [*YAML11, *TAGS, *EMPTY, '"2"', "!!float 2", "-1", "99999999999999999999999", "9" * 5000, "two", "2 3"]
DURATION_BAD = [
    *["1:30", ".inf", "yes", "off", "1e3s", "5", "-1s", "5 sec", "5S", "1000000h", "9" * 400 + "h", "0.0001s"],
    *["!!int 5", "!!python/object/apply:os.system [echo]", "~", "[]", "{}", "\u0665s"],
]
ZERO = ["0s", "0ms", "0.0s", "0h"]
TEXT_BAD = [
    *EMPTY,
    *['"\\0"', '"a\\x07b"', '"\\ud800"', '"x\\udfffy"', '"a\\nb"', '"\\t"', '"\\x1b[31m"', '"\\u200b"'],
    *["!!int 5", "!!bool yes", "!!python/object:os.system x", "!!binary aGk=", "!custom x", "!!timestamp 2001-12-14"],
]
CHOICE_BAD = ["on", "yes", "true", "TCP", "fastest", "1:30", "017", *EMPTY, "!!bool on", "!!python/name:os.system"]
ADDRESS_BAD = [
    *["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:\u00b2", "::1:80", "[::1]80", "[::1]:99999"],
    *["1.2.3.4.5:80", "256.0.0.1:80", "127.0.0.1:-1", "127.0.0.1:1e3", "8080", "1:30", "[zz::1]:80", "'[::1'"],
    *EMPTY,
    "!!int 8080",
]


def value_cases() -> Iterator[tuple[str, Tree]]:
    fields: list[tuple[str, list[str]]] = [
        ("workers", [*INT_BAD, "0", "257"]),
        ("user", [*TEXT_BAD, "root", "0", "0:0", "nobody:root", "no-such-user-ep", "nobody:no-such-group-ep", ":x"]),
        ("listeners[0].max_connections", [*INT_BAD, "0"]),
        ("backends.app.retries", [*INT_BAD, "101"]),
        ("backends.app.health.rise", ["0", "1:30", "017", "yes", "!!int abc", ".nan"]),
        ("backends.app.health.port", ["0", "65536", "017", "1:30", "0x50"]),
        ("timeouts.connect", DURATION_BAD + ZERO),
        ("timeouts.drain", DURATION_BAD),
        ("timeouts.client_idle", ["0s", "1:30", "1000000h", ".inf"]),
        ("timeouts.server_idle", ["0s", "0ms", ".nan"]),
        ("timeouts.http_request", ["0s", "017"]),
        ("backends.app.health.interval", [*ZERO, "1:30", ".inf", "1000000h"]),
        ("backends.app.health.timeout", ["0s", "yes"]),
        ("listeners[0].name", TEXT_BAD),
        ("listeners[0].backend", [*TEXT_BAD, "nope", "ap", "on", "017"]),
        ("log.access", ["on", "yes", "true", "True", "ON", *TEXT_BAD]),
        ("admin.token", TEXT_BAD),
        ("listeners[0].mode", CHOICE_BAD),
        ("backends.app.balance", [*CHOICE_BAD, "off", "no"]),
        ("backends.app.send_proxy", [*CHOICE_BAD, "v3", "1"]),
        ("log.level", [*CHOICE_BAD, "off", "loud"]),
        ("log.format", ["yaml", "on", "off"]),
        ("backends.app.health.type", ["on", "yes", "udp", "~"]),
        ("listeners[0].bind", [*ADDRESS_BAD, "host.example:80", "[]"]),
        ("admin.bind", [*ADDRESS_BAD, '"@LISTEN@"', "10.0.0.1:9901"]),
        ("backends.app.servers[0]", [*ADDRESS_BAD[:-1], "bad_host!:80", "-x:80"]),
    ]
    for path, values in fields:
        for value in values:
            yield f"{path}={value}", with_value(path, value)


def structure_cases() -> Iterator[tuple[str, Tree | str]]:
    http = with_value("listeners[0].mode", "http")
    routes = [
        "just a string",
        "42",
        "{host: a.example}",
        "{path_prefix: /x, backend: app}",
        "{host: c.example, backend: nope}",
    ]
    yield "routes-misaligned", with_value("listeners[0].routes", routes, http)
    yield "routes-number-first", with_value("listeners[0].routes", ["7", "{host: b, backend: app}"], http)
    yield "routes-list-entry", with_value("listeners[0].routes", ["[a, b]", "{host: b, backend: app}"], http)
    yield "routes-null-entry", with_value("listeners[0].routes", ["~", "{host: b, backend: app}"], http)
    yield "routes-on-tcp", with_value("listeners[0].routes", ["{host: b, backend: app}"])
    yield "routes-no-host-no-prefix", with_value("listeners[0].routes", ["{backend: app}"], http)
    yield "routes-prefix-without-slash", with_value("listeners[0].routes", ["{path_prefix: x, backend: app}"], http)
    yield "routes-mapping", with_value("listeners[0].routes", "{host: b, backend: app}", http)
    yield "forwarded-on-tcp", with_value("listeners[0].forwarded", "{trusted: [10.0.0.0/8]}")
    yield "forwarded-bad-header", with_value("listeners[0].forwarded", "{headers: [x-evil]}", http)
    yield "forwarded-bad-network", with_value("listeners[0].forwarded", "{trusted: [10.0.0.1/8]}", http)
    yield "accept-proxy-on-udp", with_value("listeners[0].accept_proxy", "{trusted: [10.0.0.0/8]}", udp())
    yield "accept-proxy-no-trusted", with_value("listeners[0].accept_proxy", "{}")
    yield "accept-proxy-bad-network", with_value("listeners[0].accept_proxy", "{trusted: [10.0.0.0/33]}")
    yield "accept-proxy-network-sexagesimal", with_value("listeners[0].accept_proxy", "{trusted: 1:30}")
    yield "udp-send-proxy-v1", with_value("backends.app.send_proxy", "v1", udp())
    yield "listeners-empty", with_value("listeners", "[]")
    yield "listeners-mapping", with_value("listeners", "{front: {bind: x}}")
    yield "listeners-null", with_value("listeners", "~")
    yield "listeners-off", with_value("listeners", "off")
    yield "listeners-missing", without("listeners")
    yield "backends-missing", without("backends")
    yield "backends-list", with_value("backends", "[app]")
    yield "backend-null", with_value("backends.app", "~")
    yield "listener-missing-name", without_listener_key("name")
    yield "listener-missing-bind", without_listener_key("bind")
    yield "listener-missing-backend", without_listener_key("backend")
    yield "listener-bind-empty-list", with_value("listeners[0].bind", "[]")
    yield "listener-twice-same-bind", two_listeners("second", '"@LISTEN@"')
    yield "listener-duplicate-name", two_listeners("front", '"127.0.0.1:1"')
    yield "listener-bind-twice", with_value("listeners[0].bind", '["@LISTEN@", "@LISTEN@"]')
    yield "admin-equals-listener", with_value("admin.bind", '"@LISTEN@"')
    yield "admin-missing-bind", with_value("admin", "{token: x}")
    yield "admin-not-loopback-no-token", with_value("admin.bind", "0.0.0.0:19901")
    yield "admin-off", with_value("admin", "off")
    yield "swarm-ref-without-swarm", with_value("backends.app.swarm", "{service: web, port: 80}")
    yield "swarm-ref-port-sexagesimal", with_value("backends.app.swarm", "{service: web, port: 1:20}")
    yield "swarm-refresh-zero", with_value("swarm.refresh", "0s")
    yield "swarm-timeout-zero", with_value("swarm.timeout", "0ms")
    yield "swarm-refresh-huge", with_value("swarm.refresh", "100000000h")
    yield "swarm-managers-empty", with_value("swarm.managers", "[]")
    yield "swarm-managers-ftp", with_value("swarm.managers", "[ftp://x]")
    yield "swarm-labels-maybe", with_value("swarm.labels", "maybe")
    yield "swarm-tls-missing-key", with_value("swarm.tls", "{ca: a, cert: b}")
    yield "swarm-node-addresses-bad", with_value("swarm.node_addresses", "{n1: 10.0.0.300}")
    yield "health-expect-600", with_value("backends.app.health", "{type: http, expect: 600}")
    yield "health-expect-6xx", with_value("backends.app.health", "{type: http, expect: 6xx}")
    yield "health-expect-range-backwards", with_value("backends.app.health", '{type: http, expect: "399-200"}')
    yield "health-expect-unicode-digits", with_value("backends.app.health", "{type: http, expect: \u0662\u0660\u0660}")
    yield "server-weight-zero", with_value("backends.app.servers", ['{address: "@SERVER@", weight: 0}'])
    yield "server-weight-octal", with_value("backends.app.servers", ['{address: "@SERVER@", weight: 010}'])
    yield "server-backup-maybe", with_value("backends.app.servers", ['{address: "@SERVER@", backup: maybe}'])
    yield "server-no-address", with_value("backends.app.servers", ["{weight: 1}"])
    yield "unknown-top-key", with_value("listner", "[]")
    yield "unknown-backend-key", with_value("backends.app.balanse", "leastconn")
    yield "unknown-listener-key", with_value("listeners[0].bakend", "app")
    yield "merge-key", with_value("backends.app.<<", "{retries: 3}")
    yield "top-level-list", "- listeners\n- backends\n"
    yield "top-level-scalar", "edgeproxy\n"
    yield "top-level-number", "1:30\n"
    yield "duplicate-backend", render(BASE) + "  app:\n    servers: ['@SERVER@']\n"
    yield "duplicate-top-key", render(BASE) + "workers: 3\n"
    yield "key-is-a-list", render(BASE) + "? [a, b]\n: c\n"
    yield "key-is-a-mapping", render(BASE).replace("backends:\n", "backends:\n  {x: 1}: {}\n")


def udp() -> Tree:
    return with_value("listeners[0].mode", "udp")


def without_listener_key(key: str) -> Tree:
    import copy

    out = copy.deepcopy(BASE)
    del out["listeners"][0][key]
    return out


def two_listeners(name: str, bind: str) -> Tree:
    import copy

    out = copy.deepcopy(BASE)
    out["listeners"].append({"name": name, "bind": bind, "mode": "tcp", "backend": "app"})
    return out


def yaml_cases() -> Iterator[tuple[str, bytes]]:
    """Whole files that are not YAML we read, or are YAML with a trap in it."""
    base = render(BASE).encode()
    laughs = b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + b"".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    yield "empty", b""
    yield "only-comments", b"# nothing here\n# at all\n"
    yield "only-document-start", b"---\n"
    yield "only-document-end", b"...\n"
    yield "null-document", b"~\n"
    yield "two-documents", base + b"---\n" + base
    yield "nul-byte", base.replace(b"front", b"fr\x00nt")
    yield "bel-byte", base.replace(b"front", b"fr\x07nt")
    yield "esc-byte", base + b"# \x1b[2J\n"
    yield "del-byte", base.replace(b"app\n", b"ap\x7fp\n", 1)
    yield "c1-control", base.replace(b"front", "fr\u0085nt\u0080".encode())
    yield "u-fffe", base.replace(b"front", "fr\ufffent".encode())
    yield "u-ffff", base + "# \uffff\n".encode()
    yield "nul-at-start", b"\x00" + base
    yield "invalid-utf8-ff", base.replace(b"front", b"fr\xffnt")
    yield "invalid-utf8-truncated", base + b"# \xe2\x82\n"
    yield "invalid-utf8-overlong", base.replace(b"front", b"fr\xc0\xafnt")
    yield "invalid-utf8-surrogate", base.replace(b"front", b"fr\xed\xa0\x80nt")
    yield "invalid-utf8-latin1", base + "# caf\xe9\n".encode("latin-1")
    yield "utf16-le", base.decode().encode("utf-16")
    yield "utf16-be-bom", b"\xfe\xff" + base.decode().encode("utf-16-be")
    yield "utf32", base.decode().encode("utf-32")
    yield "binary-garbage", bytes(range(256)) * 4
    yield "gzip-magic", b"\x1f\x8b\x08\x00" + base
    yield "tab-indent", base.replace(b"\n  ", b"\n\t")
    yield "tab-after-colon", base.replace(b"mode: tcp", b"mode:\ttcp")
    yield "tab-in-comment", base + b"# a\tcomment\n"
    yield "tab-in-quotes", base.replace(b'"@LISTEN@"', b'"@LISTEN@\t"')
    yield "unclosed-flow", base.replace(b'- "@SERVER@"', b'- ["@SERVER@"')
    yield "unclosed-quote", base.replace(b'"@LISTEN@"', b'"@LISTEN@')
    yield "unclosed-single-quote", base.replace(b'"@LISTEN@"', b"'@LISTEN@")
    yield "bad-indentation", base.replace(b"    mode: tcp", b"   mode: tcp")
    yield "colon-colon", base.replace(b"mode: tcp", b"mode: tcp: udp")
    yield "dash-then-key", base + b"- stray\n"
    yield "yaml-directive-2", b"%YAML 2.0\n---\n" + base
    yield (
        "tag-directive-python",
        b"%TAG !p! tag:yaml.org,2002:python/\n---\n" + base.replace(b"name: front", b"name: !p!object:os.system front"),
    )
    yield "verbatim-tag", base.replace(b"name: front", b"name: !<tag:example.com,2000:x> front")
    yield "anchor-without-node", base + b"x: &a\n"
    yield "alias-undefined", base.replace(b"backend: app", b"backend: *app")
    yield "alias-recursive", b"listeners: &l [*l]\n" + base.split(b"\n", 1)[1]
    yield "alias-self-mapping", b"a: &a {b: *a}\n" + base
    yield "billion-laughs", laughs + base
    yield "billion-laughs-as-key", laughs + base.replace(b"backends:\n", b"backends:\n  *i : {}\n")
    yield "billion-laughs-in-listeners", laughs + base.replace(b"listeners:\n", b"listeners: *i\nx:\n")
    yield "billion-laughs-as-servers", laughs + base.replace(b'servers:\n      - "@SERVER@"', b"servers: *i")
    yield "quadratic-aliases", b"a: &a [" + b",".join([b"x"] * 2000) + b"]\nb: [" + b",".join([b"*a"] * 2000) + b"]\n"
    yield "deep-flow-100", b"listeners: " + b"[" * 100 + b"]" * 100 + b"\n"
    yield "deep-flow-100k", b"[" * 100_000
    yield "deep-flow-mapping", b"{a: " * 5000 + b"1" + b"}" * 5000
    yield "deep-block-mapping", b"".join(b"  " * i + b"a:\n" for i in range(200))
    yield "deep-block-sequence", b"- " * 3000 + b"x\n"
    yield "deep-in-a-backend", base.replace(b"type: none", b"type: " + b"[" * 20_000)
    yield "long-line", b"listeners: " + b"x" * 300_000 + b"\n"
    yield "long-key", base + b"k" * 100_000 + b": 1\n"
    yield "long-number", base.replace(b"workers: 2", b"workers: " + b"7" * 100_000)
    yield (
        "many-errors",
        base.replace(
            b"backend: app\n",
            b"backend: app\n    mode: http\n    routes:\n"
            + b"".join(b"      - {host: h%d, backend: nope%d}\n" % (i, i) for i in range(1500)),
        ),
    )
    yield "big-with-error-at-end", big_config() + b"typo: 1\n"
    yield "windows-1252-quote", base.replace(b"front", b"\x93front\x94")


def big_config(backends: int = 1000) -> bytes:
    """~75 KB: many backends, one listener; valid on its own."""
    out = [render(BASE)]
    for i in range(backends):
        out.append(f"  b{i}:\n    health: {{type: none}}\n    servers: [10.{i // 250}.{i % 250}.1:80, 10.0.0.2:80]\n")
    return "".join(out).encode()


def truncations() -> Iterator[tuple[str, bytes]]:
    """The base file cut short at many points (kept only where the result is invalid)."""
    base = render(BASE).encode()
    for n in range(1, len(base), 9):
        yield f"truncated-{n:03d}", base[:n]


def odd_cases() -> Iterator[tuple[str, bytes]]:
    """The base configuration, written differently: each must load as exactly the same Config."""
    base = render(BASE)
    yield "base", base.encode()
    yield "flow-style", b"{" + inline(BASE).encode()[1:]
    yield (
        "json",
        (
            b'{"workers": 2, "log": {"level": "info", "access": "off"}, "timeouts": {"connect": "1s", "drain": "1s"},'
            b' "admin": {"bind": "@ADMIN@"}, "listeners": [{"name": "front", "bind": "@LISTEN@", "mode": "tcp",'
            b' "backend": "app"}], "backends": {"app": {"health": {"type": "none"}, "servers": ["@SERVER@"]}}}'
        ),
    )
    yield "crlf", base.replace("\n", "\r\n").encode()
    yield "bom", b"\xef\xbb\xbf" + base.encode()
    yield "document-markers", b"%YAML 1.1\n---\n" + base.encode() + b"...\n"
    noted = [f"{line}  # note {i} \u00e9\u2603\n" for i, line in enumerate(base.splitlines())]
    yield "comments-everywhere", "".join(noted).encode()
    for word in ("off", "Off", "OFF", "no", "false", "'off'"):
        yield f"access-{word.strip(chr(39))}", base.replace('access: "off"', f"access: {word}").encode()
    for word in ("off", "no", "false", "none"):
        yield f"health-type-{word}", base.replace("type: none", f"type: {word}").encode()
        yield f"send-proxy-{word}", base.replace("health:", f"send_proxy: {word}\n    health:").encode()
    yield "quoted-keys", re.sub(r"^(\s*-?\s*)([a-z_]+):", r'\1"\2":', base, flags=re.M).encode()
    yield "single-quoted-values", base.replace('"', "'").encode()
    yield (
        "tags-that-agree",
        (
            base.replace("workers: 2", "workers: !!int 2")
            .replace("name: front", "name: !!str front")
            .replace("mode: tcp", "mode: ! tcp")
            .replace("log:", "log: !!map")
            .encode()
        ),
    )
    yield "workers-plus", base.replace("workers: 2", "workers: +2").encode()
    limit = "backend: app\n    max_connections: 10_000"
    yield "max-connections-underscore", base.replace("backend: app", limit).encode()
    units = base.replace("connect: 1s", "connect: 1000ms").replace("drain: 1s", "drain: 1 s")
    yield "durations-other-units", units.encode()
    yield "server-as-mapping", base.replace('- "@SERVER@"', '- {address: "@SERVER@", weight: 1, backup: no}').encode()
    yield "bind-as-list", base.replace('bind: "@LISTEN@"', 'bind: ["@LISTEN@"]').encode()
    yield "anchors-and-aliases", base.replace("backend: app", "backend: &b app").replace("  app:", "  *b :").encode()
    yield "anchor-on-health", base.replace("health:", "health: &h").encode()
    block = base[base.index("  - name") : base.index("backends:")]
    yield "sequence-not-indented", base.replace(block, re.sub(r"^  ", "", block, flags=re.M)).encode()
    yield "complex-key-syntax", base.replace("workers: 2", "? workers\n: 2").encode()
    yield "folded-name", base.replace("name: front", "name: >-\n      front").encode()
    yield "long-comment", ("#" + "x" * 20_000 + "\n" + base).encode()
    yield "blank-lines", base.replace("\n", "\n\n\n").encode()
    yield "trailing-spaces", base.replace("\n", "   \n").encode()


def slug(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", name.encode("ascii", "backslashreplace").decode()).strip("-")
    return text[:60] or "x"


def filled(raw: bytes) -> bytes:
    for place, value in PLACES.items():
        raw = raw.replace(place, value)
    return raw


def main(out: Path = HERE) -> int:
    sys.path.insert(0, str(ROOT))
    from edgeproxy.config import ConfigError, parse_config

    bad, odd = out / "bad", out / "odd"
    for d in (bad, odd):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    files: dict[str, bytes] = {}
    for name, tree in value_cases():
        files[f"value-{slug(name)}"] = render(tree).encode()
    for name, doc in structure_cases():
        files[f"struct-{slug(name)}"] = (render(doc) if isinstance(doc, dict) else doc).encode()
    for name, raw in [*yaml_cases(), *truncations()]:
        files[f"yaml-{slug(name)}"] = raw
    written = 0
    for i, (name, raw) in enumerate(sorted(files.items())):
        try:
            parse_config(filled(raw))
        except ConfigError:
            (bad / f"{i:03d}-{name}.yaml").write_bytes(raw)
            written += 1
            continue
        if not name.startswith("yaml-truncated-"):
            print(f"not refused, left out: {name}", file=sys.stderr)
    for name, raw in odd_cases():
        (odd / f"{slug(name)}.yaml").write_bytes(raw)
    print(f"{written} bad, {len(list(odd.iterdir()))} odd files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
