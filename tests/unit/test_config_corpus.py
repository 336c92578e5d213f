"""The corpus of bad and odd config files (tests/data/configs, issue 10), file by file:
every bad one is refused with FILE:LINE: errors and no traceback, by both YAML parsers alike;
every odd one loads as exactly the base configuration. (tests/integration/test_config_corpus.py
sends them all to a running proxy.)"""

from __future__ import annotations

import dataclasses
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from edgeproxy.cli import main as cli_main
from edgeproxy.config import Config, parse_config
from fuzz.harness_config import test_one_input as loader_contract
from tests.data.configs import make_corpus

HERE = Path(make_corpus.__file__).parent
BAD = sorted((HERE / "bad").iterdir())
ODD = sorted((HERE / "odd").iterdir())


def comparable(config: Config) -> Config:
    return dataclasses.replace(config, path="", digest="")


def check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(["check", "-c", str(path)])
    return code, out.getvalue(), err.getvalue()


def test_the_corpus_is_large_and_made_by_its_script(tmp_path: Path) -> None:
    assert len(BAD) >= 300 and len(ODD) >= 30
    make_corpus.main(tmp_path)
    for kind, committed in (("bad", BAD), ("odd", ODD)):
        made = sorted((tmp_path / kind).iterdir())
        assert [p.name for p in made] == [p.name for p in committed]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(made, committed, strict=True))


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_file_is_refused_with_lines(path: Path, tmp_path: Path) -> None:
    raw = make_corpus.filled(path.read_bytes())
    loader_contract(raw)  # Config or ConfigError only, FILE:LINE: lines, libyaml == pure Python
    filled = tmp_path / "bad.yaml"
    filled.write_bytes(raw)
    code, out, err = check(filled)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[-1].endswith("configuration NOT valid") and all(ln.startswith(f"{filled}:") for ln in lines)


def test_odd_files_are_the_base_configuration(tmp_path: Path) -> None:
    base = comparable(parse_config(make_corpus.filled((HERE / "odd" / "base.yaml").read_bytes())))
    for path in ODD:
        raw = make_corpus.filled(path.read_bytes())
        loader_contract(raw)
        assert comparable(parse_config(raw)) == base, path.name
        filled = tmp_path / path.name
        filled.write_bytes(raw)
        assert check(filled)[0] == 0
