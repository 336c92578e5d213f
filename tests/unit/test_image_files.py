"""requirements/image.txt and requirements/build.txt, what the Dockerfile installs with
``--require-hashes``, stay in step with pyproject.toml: every dependency pinned to a version its
specifier allows, nothing pinned that nothing needs. (A transitive dependency missing from a file
fails the image build itself: pip's hash mode refuses anything unpinned. tests/image checks that
the image holds exactly these versions.)"""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from tests.helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _entries(name: str) -> list[tuple[Requirement, list[str], list[str]]]:
    """(requirement, its hashes, the '# via' names) of each pin, continuation lines joined."""
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    out: list[tuple[Requirement, list[str], list[str]]] = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):  # a pin starts a line; its hashes and 'via' follow
        lines = [ln for ln in block.splitlines() if not ln.startswith("#")]
        if not lines:
            continue
        spec = " ".join(ln.strip().rstrip("\\") for ln in lines if not ln.strip().startswith("#"))
        req_text, *hashes = spec.split("--hash=")
        via = [
            v.strip()
            for ln in lines
            if ln.strip().startswith("#")
            for v in ln.strip("# ").removeprefix("via").split(",")
        ]
        out.append((Requirement(req_text.strip()), [h.strip() for h in hashes], [v for v in via if v]))
    return out


def pins(name: str) -> dict[NormalizedName, Version]:
    """Package -> pinned version in requirements/NAME.txt."""
    return {canonicalize_name(req.name): Version(next(iter(req.specifier)).version) for req, _, _ in _entries(name)}


def _check(name: str, direct: list[str]) -> None:
    entries = _entries(name)
    pinned = pins(name)
    for req, hashes, _ in entries:
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}.txt: {req} is not pinned with =="
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{name}.txt: {req.name}"
    needed = {canonicalize_name(Requirement(d).name) for d in direct}
    for dep in map(Requirement, direct):
        if dep.marker is not None and not dep.marker.evaluate({"sys_platform": "linux"}):
            continue
        version = pinned.get(canonicalize_name(dep.name))
        assert version is not None, f"{name}.txt does not pin {dep.name} (pyproject.toml: {dep})"
        assert dep.specifier.contains(version, prereleases=True), (
            f"{name}.txt: {dep.name}=={version} but pyproject says {dep}"
        )
    for req, _, via in entries:
        # pip-compile's annotation: who needs this pin; each must be pyproject or another pin.
        assert via, f"{name}.txt: {req.name} has no '# via'"
        for who in via:
            assert who.startswith("edgeproxy") or canonicalize_name(who) in pinned, f"{name}.txt: {req.name} via {who}"
        if any(who.startswith("edgeproxy") for who in via):
            assert canonicalize_name(req.name) in needed, f"{name}.txt: {req.name} is no longer in pyproject.toml"


def test_image_pins_match_the_dependencies() -> None:
    _check("image", PYPROJECT["project"]["dependencies"])


def test_build_pins_match_the_build_system() -> None:
    _check("build", PYPROJECT["build-system"]["requires"])


def test_the_dockerfile_installs_from_the_pins_only() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip [^&\n]*\binstall\b[^&\n]*", dockerfile)
    assert installs, dockerfile
    for cmd in installs:
        assert "--require-hashes" in cmd or "--no-deps --no-index" in cmd, cmd
    assert "-r requirements/image.txt" in dockerfile and "-r requirements/build.txt" in dockerfile


def test_the_version_label_is_the_package_version() -> None:
    from edgeproxy import __version__

    assert f"ARG VERSION={__version__}\n" in (ROOT / "Dockerfile").read_text()


def _seconds(text: str) -> float:
    from edgeproxy.config.values import parse_duration

    return parse_duration(text)


def test_docker_waits_longer_than_the_drain_everywhere_it_is_documented() -> None:
    """docker stop / a service update kill the container after the grace period: it must
    outlast timeouts.drain (the default and the image's shipped config), or open connections are
    cut and the exit is 137 instead of a clean 0."""
    from edgeproxy.config.model import Timeouts

    # config/image/ holds the image's default, which names a user only the image has: checked in
    # the image itself (tests/image), not by test_config's loading of config/*.yaml.
    shipped = [
        yaml.safe_load((ROOT / "config" / f).read_text())["timeouts"]["drain"]
        for f in ("edgeproxy.yaml", "image/edgeproxy.yaml")
    ]
    drain = max(Timeouts().drain, *map(_seconds, shipped))
    stack = yaml.safe_load((ROOT / "config" / "edgeproxy-stack.yml").read_text())
    assert _seconds(stack["services"]["edgeproxy"]["stop_grace_period"]) > drain
    for doc in ("README.md", "Dockerfile"):
        # the run commands (a line of their own, or a comment's), continuation lines joined
        text = re.sub(r"\\\n[# ]*", " ", (ROOT / doc).read_text())
        runs = re.findall(r"^[# ]*docker run [^\n]*", text, re.M)
        assert runs, doc
        for run in runs:
            m = re.search(r"--stop-timeout (\d+)", run)
            assert m and int(m.group(1)) > drain, f"{doc}: {run}"
