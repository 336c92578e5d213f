"""A multi-node swarm for the tests: 3 managers + 1 worker, one dockerd per network namespace on a
private bridge, and a client host in a namespace of its own (lab.sh does the namespace work).
Names and the 10.77.X.0/24 subnet are chosen per run so two test runs on one machine cannot
collide; teardown removes everything it made."""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path

from tests.helpers import reserve_name

SCRIPT = Path(__file__).with_name("lab.sh")


_random = random.Random()  # our own: pytest-randomly and hypothesis seed the global one


def _reserve_subnet() -> tuple[str, socket.socket]:
    """A 10.77.X subnet no interface of the machine has and no other lab of a test process holds
    (the swarm and image groups start theirs at the same time in two xdist workers, before either
    has an address to see), held until the lab stops."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    taken = {a.split("/")[0].rsplit(".", 1)[0] for a in out.split() if a.count(".") == 3}
    free = [f"10.77.{x}" for x in _random.sample(range(1, 255), 254) if f"10.77.{x}" not in taken]
    return reserve_name("lab-net", free)


class Lab:
    def __init__(self, rootfs_tar: bytes, nodes: int = 4, storage: str = "vfs", parent: str = "/tmp") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ep-lab-", dir=parent))  # short: unix socket paths
        self.tag = f"{_random.randrange(16**5):05x}"
        self.nodes = nodes
        self.storage = storage
        self.net, self._net_lock = _reserve_subnet()
        with tarfile.open(fileobj=io.BytesIO(rootfs_tar)) as tar:
            tar.extractall(self.dir / "rootfs", filter="tar")

    def sh(self, *args: str, timeout: float = 120.0) -> None:
        env = dict(
            os.environ, LAB=str(self.dir), TAG=self.tag, NET=self.net, NODES=str(self.nodes), STORAGE=self.storage
        )
        r = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"lab.sh {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")

    def start(self) -> Lab:
        try:
            self.sh("setup")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.sh("teardown")
            left = self._processes()
            for pid in left:  # the machine is cleaned all the same; the test fails
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if left:
                raise RuntimeError(f"lab.sh teardown left processes of the lab running: {left}")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._net_lock.close()

    def _processes(self) -> dict[int, str]:
        """The processes whose command line names the lab's directory (containerd shims: their
        -address), read from /proc: a check of lab.sh's sweep, which reads ps."""
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if f"{self.dir}/" in cmdline:
                        out[int(entry.name)] = cmdline[:200]
        return out

    def url(self, n: int) -> str:
        return f"unix://{self.dir}/node{n}/docker.sock"

    def addr(self, n: int) -> str:
        return f"{self.net}.{10 + n}"

    @property
    def gateway(self) -> str:
        """The bridge's address: this (the test's) host as the nodes see it."""
        return f"{self.net}.1"

    @property
    def client_netns(self) -> str:
        """A namespace of its own on the lab bridge, address ``client_addr``."""
        return f"ep{self.tag}-c"

    @property
    def client_addr(self) -> str:
        return f"{self.net}.100"

    @property
    def engine_sock(self) -> str:
        """On every node, the path of that node's own engine socket (a bind mount of lab.sh)."""
        return f"{self.dir}/engine/docker.sock"

    def node_netns(self, n: int) -> str:
        return f"ep{self.tag}-n{n}"

    def docker(self, n: int, *args: str) -> str:
        r = subprocess.run(["docker", "-H", self.url(n), *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {r.stderr}")
        return r.stdout

    def kill(self, n: int) -> None:
        """The node's dockerd dies (SIGKILL): its control plane is gone, its task keeps running."""
        self.sh("stop", str(n), "KILL")
