"""edgeproxy/build.py: which build runs (compiled by mypyc, or pure Python) and that it is the one loaded."""

from __future__ import annotations

import importlib
import importlib.machinery
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy import __version__, build

PACKAGE = Path(build.__file__).resolve().parent


def _tree(tmp_path: Path, *, compiled: bool, stamp: str | None) -> Path:
    """A copy of the compiled modules' sources, with a (fake) extension beside the first and a stamp."""
    root = tmp_path / "edgeproxy"
    for module in build.COMPILED:
        dest = Path(build.source_path(module, root))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(build.source_path(module, PACKAGE), dest)
    if compiled:
        first = Path(build.source_path(build.COMPILED[0], root))
        first.with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0]).write_bytes(b"")
    if stamp is not None:
        (root / build.STAMP).write_text(stamp)
    return root


def test_no_extensions_is_pure_python(tmp_path: Path) -> None:
    assert build._decide(_tree(tmp_path, compiled=False, stamp=None)) == (False, "pure Python")


def test_a_stamped_build_of_these_sources_runs_compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.PURE_ENV, raising=False)
    root = _tree(tmp_path, compiled=True, stamp=None)
    (root / build.STAMP).write_text(f"mypyc 9.9 {build.sources_digest(root)}\n")
    assert build._decide(root) == (True, f"compiled: mypyc 9.9, {len(build.COMPILED)} modules")


def test_pure_python_when_asked_when_sources_changed_or_unstamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(build.PURE_ENV, raising=False)
    root = _tree(tmp_path, compiled=True, stamp=None)
    assert build._decide(root) == (False, "pure Python: compiled modules without a build stamp")
    (root / build.STAMP).write_text(f"mypyc 9.9 {build.sources_digest(root)}\n")
    monkeypatch.setenv(build.PURE_ENV, "1")
    assert build._decide(root) == (False, f"pure Python: {build.PURE_ENV} set")
    monkeypatch.setenv(build.PURE_ENV, "0")
    assert build._decide(root)[0]
    # An editable install whose source was edited after the build: the stale extension must not run.
    edited = Path(build.source_path(build.COMPILED[-1], root))
    edited.write_text(edited.read_text() + "\n# edited\n")
    assert build._decide(root) == (False, "pure Python: sources changed since the mypyc build")


def test_the_modules_loaded_are_those_of_the_build_said() -> None:
    """In this process (CI runs the suite both ways): every compiled module, or none, is an extension."""
    for module in build.COMPILED:
        origin = importlib.import_module(module).__file__ or ""
        assert origin.endswith(".py") != build.compiled, (module, origin, build.description)


def test_version_says_which_build_runs() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert r.stdout.strip() == f"edgeproxy {__version__} ({build.description})"
