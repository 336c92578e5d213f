"""Config loader: any bytes give a ``Config`` or a ``ConfigError`` (never another exception, never
the loader's last-resort "internal error"), every error line is ``FILE:LINE: ...``, and libyaml and
the pure-Python parser give the same result (the same ``Config``, or the same errors).

One difference is allowed, in one direction: PyYAML's pure-Python scanner is stricter than libyaml
on a few constructs (a ``?`` inside a plain scalar in flow context, ``{acce?s: x}``, found here), so
it may answer "YAML syntax error" where libyaml reads the file. Every file libyaml refuses is read
again by the pure-Python parser (config/yamltree.py), so refusals always read the same.
"""

from __future__ import annotations

import errno
import re

from edgeproxy.config import Config, ConfigError, parse_config
from edgeproxy.config.yamltree import have_libyaml

_LINE = re.compile(r"fuzz\.yaml:[1-9][0-9]*: ")

# The files a fuzzed config may name (a backend's ``tls.ca``): a fixed set, so that a run never
# reads the machine's files and gives the same outcome everywhere.
_FILES = {
    "empty.pem": b"",
    "junk.pem": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    "text.pem": b"# a comment only\n",
}


def read_file(path: str) -> bytes:
    found = _FILES.get(path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    return found


def outcome(data: bytes, *, libyaml: bool) -> Config | str:
    try:
        return parse_config(data, "fuzz.yaml", libyaml=libyaml, read_file=read_file)
    except ConfigError as e:
        internal = [i for i in e.issues if i.internal]
        if internal:
            raise AssertionError(f"the loader broke: {internal[0].message}") from None
        text = str(e)
        for line in text.splitlines():
            if not _LINE.match(line):
                raise AssertionError(f"an error line without FILE:LINE: {line!r}") from None
        return text


def test_one_input(data: bytes) -> None:
    pure = outcome(data, libyaml=False)
    if have_libyaml():
        fast = outcome(data, libyaml=True)
        stricter = isinstance(pure, str) and pure.count("\n") == 0 and ": YAML syntax error: " in pure
        if fast != pure and not stricter:
            raise AssertionError(f"libyaml and pure-Python parsers differ:\n{fast!r}\n{pure!r}")


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
