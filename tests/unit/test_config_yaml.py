"""The config loader's YAML rules (README "YAML rules") and the files that crashed it (issue 10).

Each case here was a traceback in ``edgeproxy check`` and a dead proxy on SIGHUP on main 61a1209,
or a value silently applied where a message was due.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeproxy.config import ConfigError, parse_config, parse_duration
from edgeproxy.config.loader import ConfigIssue

BASE = """\
log: {{access: stderr}}
listeners:
  - name: web
    bind: "127.0.0.1:8080"
    backend: app
backends:
  app:
    servers: ["127.0.0.1:9000"]
{extra}"""
LINE = re.compile(r"t\.yaml:[0-9]+: ")


def issues_of(raw: bytes | str) -> list[ConfigIssue]:
    data = raw.encode() if isinstance(raw, str) else raw
    with pytest.raises(ConfigError) as e:
        parse_config(data, "t.yaml")
    issues = e.value.issues
    assert issues and not any(i.internal for i in issues), issues
    for text in str(e.value).splitlines():
        assert LINE.match(text), text
    return issues


def errors_of(raw: bytes | str) -> list[str]:
    return [str(i) for i in issues_of(raw)]


def one_error(raw: bytes | str) -> str:
    errs = errors_of(raw)
    assert len(errs) == 1, errs
    return errs[0]


def with_backend(**fields: str) -> str:
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    servers = '    servers: ["127.0.0.1:9000"]\n'
    return BASE.format(extra="").replace(servers, body + servers)


# -- numbers: decimal only ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1:30", "backends.app.retries: '1:30' is not a whole number (YAML 1.1 reads it in base 60)"),
        ("017", "backends.app.retries: '017': a leading 0 is refused (YAML 1.1 reads it as octal): write 17"),
        ("09", "backends.app.retries: '09': a leading 0 is refused: write 9"),
        ("0x1f", "backends.app.retries: expected a whole number, in decimal, got '0x1f'"),
        ("1e3", "expected a whole number, in decimal, got '1e3'"),
        (".inf", "expected a whole number, in decimal, got '.inf'"),
        (".nan", "expected a whole number, in decimal, got '.nan'"),
        ("!!int abc", "expected a whole number, in decimal, got !!int 'abc'"),
        ("!!int 1e3", "expected a whole number, in decimal, got !!int '1e3'"),
        ("!!float 2", "expected a whole number, got !!float '2'"),
        ('"2"', "expected a whole number (without quotes), got '2'"),
        ("9" * 5000, "is out of range (0-100)"),  # int() refuses > 4300 digits with a ValueError
        ("101", "101 is out of range (0-100)"),
        ("yes", "expected a whole number, in decimal, got 'yes'"),
        ("", "expected a whole number, got empty (null)"),
    ],
)
def test_numbers_are_decimal_only(value: str, message: str) -> None:
    err = one_error(with_backend(retries=value))
    assert err.startswith("t.yaml:8: ") and message in err, err


def test_numbers_that_are_fine() -> None:
    for text, value in (("3", 3), ("+3", 3), ("!!int 3", 3), ("0", 0)):
        assert parse_config(with_backend(retries=text).encode()).backends["app"].retries == value
    text = BASE.format(extra="").replace("backend: app", "backend: app\n    max_connections: 10_000")
    cfg = parse_config(text.encode())
    assert cfg.listeners[0].max_connections == 10000


# -- words: yes/no/on/off ----------------------------------------------------------------------
def test_access_off_unquoted_means_off_as_documented() -> None:
    for word in ("off", "Off", "OFF", "no", "false", '"off"'):
        cfg = parse_config(BASE.format(extra="").replace("access: stderr", f"access: {word}").encode())
        assert cfg.log.access == "off", word
    err = one_error(BASE.format(extra="").replace("access: stderr", "access: on"))
    assert "log.access: 'on' is not a log target: stderr, stdout, off or a file path" in err


def test_booleans_and_choices_take_yaml_11_words() -> None:
    cfg = parse_config(
        with_backend(send_proxy="off", health="{type: off}")
        .replace('["127.0.0.1:9000"]', '[{address: "127.0.0.1:9000", backup: yes}]')
        .encode()
    )
    assert cfg.backends["app"].send_proxy == "none" and cfg.backends["app"].health.type == "none"
    assert cfg.backends["app"].servers[0].backup is True
    assert "expected true or false, got !!bool 'maybe'" in one_error(
        with_backend().replace('["127.0.0.1:9000"]', '[{address: "127.0.0.1:9000", backup: !!bool maybe}]')
    )
    assert "backends.app.balance: 'off' is not one of: roundrobin" in one_error(with_backend(balance="off"))


def test_names_are_taken_as_written() -> None:
    """`name: on` is the name 'on', not true; a number is its digits as written (017 stays 017)."""
    text = BASE.format(extra="").replace("name: web", "name: on").replace("app", "017")
    cfg = parse_config(text.encode())
    assert cfg.listeners[0].name == "on" and cfg.listeners[0].backend == "017" and "017" in cfg.backends


# -- tags: checked, never executed -------------------------------------------------------------
def test_tags_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for tag in (
        f'!!python/object/apply:os.system ["touch {marker}"]',
        f"!!python/object/new:os.system [touch {marker}]",
        "!!python/name:os.system",
        "!!binary aGk=",
        "!!timestamp 2001-12-14",
        "!custom x",
    ):
        err = errors_of(BASE.format(extra="").replace("backend: app", f"backend: app\n    mode: {tag}"))
        assert any("is not supported: values are plain YAML (tags are never executed)" in e for e in err), err
    assert not marker.exists()


# -- references: an invalid entry does not shift the next ones ----------------------------------
def test_invalid_routes_before_valid_ones_do_not_misalign() -> None:
    """zip(lst.routes, routes_node.value) paired route 1 with node 0: KeyError / wrong line."""
    errs = errors_of("""listeners:
  - name: web
    bind: "127.0.0.1:8080"
    mode: http
    backend: app
    routes:
      - just a string
      - 42
      - {host: a.example}
      - {host: b.example, backend: app}
      - {host: c.example, backend: nope}
backends:
  app: {servers: ["127.0.0.1:9000"]}
""")
    assert errs == [
        "t.yaml:7: listeners[0].routes[0]: expected a mapping, got 'just a string'",
        "t.yaml:8: listeners[0].routes[1]: expected a mapping, got '42'",
        "t.yaml:9: listeners[0].routes[2]: missing 'backend'",
        "t.yaml:11: listeners[0].routes[4].backend: no backend named 'nope' (known: app)",
    ]


# -- bytes that are not YAML we read -----------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "t.yaml:1: the file is empty"),
        (b"# only a comment\n\n", "t.yaml:1: the file is empty"),
        (b"---\n...\n", "t.yaml:1: the file is empty"),
        (b"listeners: []\n\xff\xfe\n", "t.yaml:2: not UTF-8 text: byte 0xff at offset 14"),
        (b"a: 1\nb: \xed\xa0\x80\n", "t.yaml:2: not UTF-8 text"),  # a surrogate, UTF-8 encoded
        (b"a: 1\nb: x\x00y\n", "t.yaml:2: U+0000 (a control character) at offset 9"),
        (b"a: 1\n\nb: \x07\n", "t.yaml:3: U+0007 (a control character)"),
        ("a: 1\nb: \ufffe\n".encode(), "t.yaml:2: U+FFFE (not a character a YAML file may contain)"),
        (b"\xff\xfel\x00", "t.yaml:1: not UTF-8 text"),  # UTF-16
        (b"a: [\n", "t.yaml:2: YAML syntax error: expected the node content, but found '<stream end>'"),
        (b"a: 1\nb:\t2\n", "t.yaml:2: U+0009 (a tab: indent and separate with spaces) at offset 7"),
        (b"a: 1\n# a\tcomment\n", "t.yaml:2: U+0009 (a tab"),
        (b"a: b\n---\nc: d\n", "t.yaml:2: a second YAML document (---): the file must hold one"),
        (b"a: *nowhere\n", "t.yaml:1: alias *nowhere is not defined before this point"),
        (b"&a [*a]\n", "t.yaml:1: alias *a is not defined before this point (or contains itself)"),
        (b"[" * 100_000, "t.yaml:1: nested more than 64 levels deep"),
        (b"".join(b" " * i + b"a:\n" for i in range(300)), "t.yaml:65: nested more than 64 levels deep"),
        (b"- " * 3000 + b"x\n", "t.yaml:1: nested more than 64 levels deep"),
        (b"9" * 10, "t.yaml:1: expected a mapping, got '9999999999'"),
        (b"- a\n- b\n", "t.yaml:1: expected a mapping, got a list"),
    ],
)
def test_any_bytes_give_errors_with_file_and_line(raw: bytes, expected: str) -> None:
    errs = errors_of(raw)
    assert errs[0].startswith(expected), errs


def test_both_parsers_agree_on_a_surrogate_escape() -> None:
    """libyaml refuses "\\ud800"; the pure-Python parser reads it: the loader says the same either way."""
    text = BASE.format(extra="").replace("name: web", 'name: "a\\ud800b"').encode()
    for libyaml in (True, False):
        with pytest.raises(ConfigError) as e:
            parse_config(text, "t.yaml", libyaml=libyaml)
        assert str(e.value) == (
            "t.yaml:3: listeners[0].name: 'a\\ud800b' contains U+D800 (a lone surrogate): not allowed in a value"
        )


@pytest.mark.parametrize(
    "text",
    [
        'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
        # the bomb used as a mapping key: walking it to print the key never ended
        'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True))
        + "listeners: {*g : 1}\n",
    ],
)
def test_alias_bombs_are_refused_at_once(text: str) -> None:
    t0 = time.monotonic()
    errs = errors_of(text)
    assert time.monotonic() - t0 < 2
    assert any("aliases expand to more than 100000 values (an alias bomb?)" in e for e in errs), errs


def test_aliases_within_bounds_are_fine() -> None:
    cfg = parse_config(b"""listeners: [{name: web, bind: "127.0.0.1:8080", backend: a}]
backends:
  a: {health: &h {type: tcp, interval: 5s}, servers: ["127.0.0.1:9000"]}
  b: {health: *h, servers: ["127.0.0.1:9001"]}
""")
    assert cfg.backends["b"].health == cfg.backends["a"].health and cfg.backends["b"].health.interval == 5


def test_values_and_keys_hold_only_printable_text() -> None:
    base = BASE.format(extra="")
    for escape, what in (
        ("\\n", "U+000A (a line break)"),
        ("\\x1b", "U+001B (a control character)"),
        ("\\u200b", "U+200B (an invisible character)"),
    ):
        err = one_error(base.replace("name: web", f'name: "a{escape}b"'))
        assert f"listeners[0].name: 'a{escape}b' contains {what}: not allowed in a value" in err, err
    err = one_error(base.replace("backends:", 'backends:\n  "x\\ud800": {}'))
    assert "t.yaml:7: backends: the key 'x\\ud800' contains U+D800 (a lone surrogate)" in err, err


def test_merge_keys_say_so() -> None:
    err = one_error(with_backend(**{"<<": "{retries: 3}"}))
    assert "backends.app.<<: unknown key '<<': YAML merge keys are not supported" in err, err


def test_alias_as_a_key_is_refused() -> None:
    errs = errors_of(b"listeners: &l []\n*l : 1\n")
    assert errs == ["t.yaml:1: listeners: needs at least one listener", "t.yaml:2: a key must be a name, got a list"]


# -- values that make no sense -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("swarm: {refresh: 0s}", "t.yaml:9: swarm.refresh: '0s' is too short: at least 1ms"),
        ("swarm: {timeout: 0ms}", "swarm.timeout: '0ms' is too short"),
        ("timeouts: {connect: 0s}", "timeouts.connect: '0s' is too short"),
        ("timeouts: {client_idle: 0.0001s}", "timeouts.client_idle: '0.0001s' is too short"),
        ("timeouts: {server_idle: 0s}", "timeouts.server_idle: '0s' is too short"),
        ("timeouts: {http_request: 0s}", "timeouts.http_request: '0s' is too short"),
        ("timeouts: {connect: 1000000h}", "timeouts.connect: '1000000h' is too long: at most 2147483647ms"),
        ("timeouts: {drain: " + "9" * 400 + "h}", "is too long"),  # float() is inf here
        ("timeouts: {connect: 1:30}", "timeouts.connect: invalid duration '1:30'"),
        ("timeouts: {connect: .inf}", "timeouts.connect: invalid duration '.inf'"),
        ("timeouts: {connect: \u0665s}", "invalid duration"),  # an Arabic-Indic 5
        ("admin: {bind: '127.0.0.1:8080'}", "admin.bind: 127.0.0.1:8080 clashes with 127.0.0.1:8080 of listeners[0]"),
        ("admin: {bind: '0.0.0.0:8080', token: x}", "admin.bind: 0.0.0.0:8080 clashes with 127.0.0.1:8080 of list"),
    ],
)
def test_values_that_make_no_sense_are_refused(extra: str, message: str) -> None:
    err = one_error(BASE.format(extra=extra + "\n"))
    assert message in err, err


def test_health_interval_zero_is_refused() -> None:
    assert "backends.app.health.interval: '0s' is too short: at least 1ms" in one_error(
        with_backend(health="{interval: 0s}")
    )


def test_zero_drain_is_allowed_and_durations_parse() -> None:
    cfg = parse_config(BASE.format(extra="timeouts: {drain: 0s, connect: 1ms}\n").encode())
    assert cfg.timeouts.drain == 0 and cfg.timeouts.connect == 0.001
    assert parse_duration("2147483647ms") == pytest.approx(2147483.647)


def test_no_listeners_is_refused() -> None:
    err = one_error("listeners: []\nbackends: {app: {servers: ['127.0.0.1:9000']}}\n")
    assert err == "t.yaml:1: listeners: needs at least one listener"


def test_admin_on_another_port_of_a_wildcard_listener_or_on_udp_is_fine() -> None:
    parse_config(BASE.format(extra="admin: {bind: '127.0.0.1:8081'}\n").encode())
    udp = BASE.format(extra="admin: {bind: '127.0.0.1:8080'}\n").replace("backend: app", "backend: app\n    mode: udp")
    parse_config(udp.encode())


def test_addresses_with_unicode_digits_are_refused_not_crashed() -> None:
    err = one_error(BASE.format(extra="").replace("127.0.0.1:8080", "127.0.0.1:\u00b2"))  # '²'.isdigit()
    assert "listeners[0].bind[0]: invalid address '127.0.0.1:\u00b2': port must be 1-65535" in err


def test_huge_numbers_of_errors_are_cut() -> None:
    routes = "".join(f"      - {{host: h{i}, backend: nope{i}}}\n" for i in range(3000))
    http = f"    backend: app\n    mode: http\n    routes:\n{routes}"
    text = BASE.format(extra="").replace("    backend: app\n", http)
    t0 = time.monotonic()
    errs = errors_of(text)
    assert time.monotonic() - t0 < 10
    assert len(errs) == 101 and errs[-1].endswith("and 2900 more errors not shown"), errs[-1]


# -- the command line --------------------------------------------------------------------------
def test_check_never_prints_a_traceback(tmp_path: Path) -> None:
    """A lone surrogate reached the summary line and print() raised UnicodeEncodeError."""
    cases = {
        "surrogate.yaml": BASE.format(extra="").replace("name: web", 'name: "\\ud800"'),
        "sexagesimal.yaml": with_backend(retries="1:30"),
        "bytes.yaml": "\udcff",  # written below as the byte 0xff
        "deep.yaml": "[" * 50_000,
        "/dev/zero": "",  # endless: read up to the size limit only
    }
    for name, text in cases.items():
        path = Path(name) if name.startswith("/") else tmp_path / name
        if not name.startswith("/"):
            path.write_bytes(text.encode("utf-8", "surrogateescape"))
        proc = subprocess.run(
            [sys.executable, "-m", "edgeproxy", "check", "-c", str(path)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout == "", (name, proc.stderr)
        lines = proc.stderr.splitlines()
        assert all(ln.startswith(f"{path}:") for ln in lines), lines
        assert re.match(rf"{re.escape(str(path))}:[0-9]+: ", lines[0]) and lines[-1].endswith("configuration NOT valid")


def test_the_one_known_difference_between_the_parsers() -> None:
    """Found by the atheris harness: PyYAML's pure-Python scanner ends a flow plain scalar at '?',
    libyaml does not. Only this direction is allowed (README "YAML rules")."""
    from edgeproxy.config.yamltree import have_libyaml

    text = BASE.format(extra="").replace("log: {access: stderr}", "log: {acce?s: stderr}").encode()
    with pytest.raises(ConfigError) as pure:
        parse_config(text, "t.yaml", libyaml=False)
    assert str(pure.value) == "t.yaml:1: YAML syntax error: expected ',' or '}', but got '?'"
    if have_libyaml():
        with pytest.raises(ConfigError) as fast:
            parse_config(text, "t.yaml", libyaml=True)
        assert str(fast.value) == "t.yaml:1: log.acce?s: unknown key 'acce?s' (did you mean 'access'?)"
