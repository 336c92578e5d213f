"""One ``docker run --network host`` of the built image on a lab node: the node's network
namespace is the container's "host", its config a directory of ours mounted at /etc/edgeproxy."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.image.conftest import TAG
from tests.swarm.lab import Lab

NODE = 3  # single containers run on node3; node1 and node2 are test_stack_lab's edge nodes


class Container:
    """``config`` None: the image's own (config/image/edgeproxy.yaml)."""

    def __init__(self, lab: Lab, config: dict[str, Any] | None, *run_args: str) -> None:
        self.lab = lab
        self.name = f"ep-{secrets.token_hex(3)}"
        self.dir = Path(tempfile.mkdtemp(prefix="epc-"))
        self.dir.chmod(0o755)
        mount = []
        if config is not None:
            self.write(config)
            mount = ["-v", f"{self.dir}:/etc/edgeproxy:ro"]
        self.docker("run", "-d", "--name", self.name, "--network", "host", *mount, *run_args, TAG)

    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["docker", "-H", self.lab.url(NODE), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {r.stderr}\n{self.logs()}")
        return r

    def write(self, config: dict[str, Any] | str) -> None:
        """Replace the config file (renamed into place, as an editor or a config tool does)."""
        tmp = self.dir / "edgeproxy.yaml.tmp"
        tmp.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
        tmp.chmod(0o644)
        tmp.replace(self.dir / "edgeproxy.yaml")

    def logs(self) -> str:
        r = subprocess.run(["docker", "-H", self.lab.url(NODE), "logs", self.name], capture_output=True, text=True)
        return r.stdout + r.stderr

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_log(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.log_lines():
                if predicate(rec):
                    return rec
            if not self.state()["Running"]:
                break
            time.sleep(0.1)
        raise AssertionError(f"no matching log line within {timeout}s; state {self.state()}:\n{self.logs()}")

    def wait_started(self) -> None:
        self.wait_log(lambda r: r.get("msg") == "edgeproxy started")

    def pids(self) -> tuple[int, list[int]]:
        """Host pids of edgeproxy's supervisor (the container's first process) and its workers."""
        pid = int(self.docker("inspect", "-f", "{{.State.Pid}}", self.name).stdout)
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return pid, [int(c) for c in children]

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.docker("inspect", "-f", "{{json .State}}", self.name).stdout))

    def remove(self) -> None:
        self.docker("rm", "-f", self.name, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def container(lab: Lab, config: dict[str, Any] | None, *run_args: str) -> Iterator[Container]:
    c = Container(lab, config, *run_args)
    try:
        yield c
    finally:
        c.remove()
