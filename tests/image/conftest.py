"""The project's Docker image, built from the Dockerfile unchanged and run for real.

No image registry is reachable here, so ``FROM python:3.11-slim-bookworm`` cannot be pulled:
``base.sh`` makes a stand-in under that tag from Debian packages (mmdebstrap; the root tarball
is cached in /var/cache/edgeproxy-testbed, so only the first run on a machine pays ~60-130 s)
into a private dockerd, and ``docker build`` builds this checkout (what .dockerignore lets in).
The image is saved and loaded into a 3-manager swarm lab (tests/swarm/lab.sh): one dockerd per
network namespace, a client host in a namespace of its own, this test process on the bridge.

Build and lab hold /tmp/edgeproxy-docker.lock (other sessions building images or running a lab
on this machine wait, so nobody measures anyone else). The engines keep their data on a tmpfs of
ours with overlay2: builds and loads in seconds (vfs copies the image per layer and per
container), and dropping it is instant (deleting three engines' overlay2 trees from this ext4
took 35 s: it is mounted with online discard). Without root, docker.io,
busybox-static, iproute2, iptables or mmdebstrap these tests skip and say why; they fail instead
under EDGEPROXY_SWARM_TESTS=require (.ci/run).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT
from tests.swarm.conftest import _rootfs_tar, need_swarm
from tests.swarm.lab import Lab

TAG = "edgeproxy:latest"  # what config/edgeproxy-stack.yml runs
BASE = "python:3.11-slim-bookworm"
BASE_SH = Path(__file__).with_name("base.sh")
LOCK = "/tmp/edgeproxy-docker.lock"


def need_image() -> None:
    need_swarm(mmdebstrap="mmdebstrap", iptables="iptables", gdb="gdb")


@dataclass
class BuiltImage:
    tar: Path  # `docker save` of TAG
    inspect: dict[str, Any]
    base_size: int
    build_seconds: float  # `docker build` only (the base already imported)
    base_seconds: float  # the stand-in base: cached root imported, or made
    context_bytes: int  # what the build sent to the daemon
    layers: list[tuple[str, int]]  # (created by, size) of the layers above the base, newest first

    @property
    def size(self) -> int:
        return int(self.inspect["Size"])

    def summary(self) -> str:
        mb = 1e6
        top = ", ".join(f"{size / mb:.1f} MB {by}" for by, size in self.layers if size)
        return (
            f"image {TAG}: {self.size / mb:.0f} MB total, {(self.size - self.base_size) / mb:.1f} MB above the "
            f"{self.base_size / mb:.0f} MB base ({top}); build {self.build_seconds:.1f} s, "
            f"base {self.base_seconds:.1f} s, context {self.context_bytes / 1000:.0f} kB"
        )


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


@pytest.fixture(scope="package")
def scratch() -> Iterator[Path]:
    """Under the docker lock, a tmpfs for the engines' data (removed with everything on it)."""
    need_image()
    with open(LOCK, "a") as lock:
        if not _held_by_an_ancestor(lock.fileno()):
            fcntl.flock(lock, fcntl.LOCK_EX)
        d = Path(tempfile.mkdtemp(prefix="epi-", dir="/tmp"))  # short: unix socket paths below
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,mode=0755", "edgeproxy-image", str(d)], check=True)
        try:
            yield d
        finally:
            if subprocess.run(["umount", str(d)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(d)], check=False)
            d.rmdir()


def _held_by_an_ancestor(fd: int) -> bool:
    """Whether a process this one descends from holds the lock on this file: the whole run was
    started under ``flock LOCK pytest ...``. Taking it again from here would wait for ourselves
    (a new open file, a new flock: the image tests timed out after 600 s that way)."""
    inode = os.fstat(fd).st_ino
    ancestors, pid = set(), os.getpid()
    while pid > 1:
        ancestors.add(pid)
        try:  # /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces and parentheses
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"; "->": a waiter
        if (
            len(fields) >= 6
            and fields[1] == "FLOCK"
            and int(fields[5].rsplit(":", 1)[1]) == inode
            and int(fields[4]) in ancestors
        ):
            return True
    return False


def _size_of(text: str) -> int:
    m = re.match(r"([\d.]+)\s*([kMG]?B)$", text.strip())
    assert m, text
    return int(float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)])


@pytest.fixture(scope="package")
def built_image(scratch: Path) -> Iterator[BuiltImage]:
    """The Dockerfile built from this checkout in a private dockerd (stopped and deleted after)."""
    d = scratch / "build"
    env = dict(os.environ, DOCKERD_STORAGE="overlay2", DOCKER_HOST=f"unix://{d}/docker.sock", DOCKER_BUILDKIT="0")
    try:
        _run([str(BASE_SH), "dockerd", "start", str(d)], env)
        t0 = time.monotonic()
        _run([str(BASE_SH), "build", BASE], env)
        base_seconds = time.monotonic() - t0
        t0 = time.monotonic()
        out = _run(["docker", "build", "--network", "host", "-t", TAG, str(ROOT)], env)
        build_seconds = time.monotonic() - t0
        m = re.search(r"Sending build context to Docker daemon\s+(\S+)", out)
        assert m, out[-2000:]
        inspect = json.loads(_run(["docker", "image", "inspect", TAG], env))[0]
        base_size = int(json.loads(_run(["docker", "image", "inspect", BASE], env))[0]["Size"])
        history = _run(["docker", "history", "--no-trunc", "--format", "{{.ID}}\t{{.Size}}\t{{.CreatedBy}}", TAG], env)
        layers = []
        for line in history.splitlines():
            image_id, size, created_by = line.split("\t", 2)
            if image_id.startswith("sha256:") and image_id.removeprefix("sha256:") == _image_id(BASE, env):
                break
            layers.append((" ".join(created_by.replace("/bin/sh -c #(nop) ", "").split())[:60], _size_of(size)))
        tar = scratch / "image.tar"
        t0 = time.monotonic()
        _run(["docker", "save", "-o", str(tar), TAG], env)
        _run([str(BASE_SH), "dockerd", "stop", str(d)], env)
        print(f"\nimage saved and build engine stopped in {time.monotonic() - t0:.1f} s")
        shutil.rmtree(d / "data", ignore_errors=True)
        image = BuiltImage(tar, inspect, base_size, build_seconds, base_seconds, _size_of(m.group(1)), layers)
        print(f"\n{image.summary()}")
        yield image
    finally:
        subprocess.run([str(BASE_SH), "dockerd", "stop", str(d)], capture_output=True, check=False)
        shutil.rmtree(d, ignore_errors=True)


def _image_id(tag: str, env: dict[str, str]) -> str:
    return str(json.loads(_run(["docker", "image", "inspect", tag], env))[0]["Id"]).removeprefix("sha256:")


@pytest.fixture(scope="package")
def image_lab(built_image: BuiltImage, scratch: Path) -> Iterator[Lab]:
    """3 managers with the image loaded on each (node1 and node2 become the edge nodes, node3 runs
    single containers), a client namespace, the test process on the bridge (``lab.gateway``)."""
    t0 = time.monotonic()
    lab = Lab(_rootfs_tar(), nodes=3, storage="overlay2", parent=str(scratch)).start()
    t_up = time.monotonic() - t0
    try:
        loads = [
            subprocess.Popen(
                ["docker", "-H", lab.url(n), "load", "-q", "-i", str(built_image.tar)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for n in (1, 2, 3)
        ]
        for p in loads:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()
        print(f"\nlab: 3 managers up in {t_up:.1f} s, image loaded in {time.monotonic() - t0 - t_up:.1f} s")
        yield lab
    finally:
        t0 = time.monotonic()
        lab.stop()
        print(f"\nlab: down in {time.monotonic() - t0:.1f} s")
