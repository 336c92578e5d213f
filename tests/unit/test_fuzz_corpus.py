"""Every committed fuzz seed and past crash, replayed through its harness (no atheris needed)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
CASES = sorted(
    (p.parent.name, p)
    for p in (FUZZ / "corpus").glob("*/*")
    if p.is_file() and (FUZZ / f"harness_{p.parent.name}.py").exists()
)


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_corpus_file(name: str, path: Path) -> None:
    harness = importlib.import_module(f"fuzz.harness_{name}")
    harness.test_one_input(path.read_bytes())
