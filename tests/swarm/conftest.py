"""A real single-node Docker Swarm for the session: a private dockerd (own data/exec root, socket,
bridge and swarm ports; any other dockerd on the machine is left alone), ``docker swarm init``,
and a busybox image made with ``docker import`` (no registry is reachable) holding ``httpd`` and
a CGI that prints the client address it sees. Host-mode published ports bind 127.0.0.1
(``--ip``), so all data traffic stays on loopback.

Skipped with a reason when not root or when dockerd/docker/busybox are not installed
(``apt-get install docker.io busybox-static``; .ci/run installs them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, reserve_name

IMAGE = "local/bb:2"
CGI = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "remote=$REMOTE_ADDR xff=$HTTP_X_FORWARDED_FOR"\n'


def _missing(extra: dict[str, str]) -> str | None:
    if os.geteuid() != 0:
        return "swarm tests need root (they start a private dockerd)"
    for tool in ("dockerd", "docker", "busybox", "ip", "openssl"):
        if shutil.which(tool) is None:
            return f"swarm tests need {tool} (apt-get install docker.io busybox-static iproute2 openssl)"
    for tool, package in extra.items():
        if shutil.which(tool) is None:
            return f"these tests also need {tool} (apt-get install {package})"
    return None


def need_swarm(**extra: str) -> None:
    """Skip, saying why, where a real swarm cannot run; fail instead under
    EDGEPROXY_SWARM_TESTS=require (.ci/run), so CI cannot pass by skipping them.
    ``extra``: more tools these tests need, tool=package."""
    reason = _missing(extra)
    if reason is None:
        return
    if os.environ.get("EDGEPROXY_SWARM_TESTS") == "require":
        pytest.fail(f"EDGEPROXY_SWARM_TESTS=require: {reason}")
    pytest.skip(reason)


def make_tls(d: Path) -> dict[str, str]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (EC P-256)."""
    d.mkdir(parents=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    def key(name: str) -> str:
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(d / f"{name}-key.pem"))
        return str(d / f"{name}-key.pem")

    out = {"ca": str(d / "ca.pem"), "ca_key": key("ca")}
    run(
        "req", "-x509", "-new", "-key", out["ca_key"], "-subj", "/CN=edgeproxy test CA", "-days", "2", "-out", out["ca"]
    )
    exts = {
        "server": "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in exts.items():
        (d / f"{name}.ext").write_text(ext)
        out[f"{name}_key"] = key(name)
        run("req", "-new", "-key", out[f"{name}_key"], "-subj", f"/CN={name}", "-out", str(d / f"{name}.csr"))
        out[f"{name}_cert"] = str(d / f"{name}-cert.pem")
        run(
            *("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", out["ca"], "-CAkey", out["ca_key"]),
            *("-CAcreateserial", "-days", "2", "-out", out[f"{name}_cert"], "-extfile", str(d / f"{name}.ext")),
        )
    return out


def _rootfs_tar() -> bytes:
    """busybox + httpd + the CGI, as a tar for ``docker import``."""
    buf = io.BytesIO()
    busybox = shutil.which("busybox")
    assert busybox is not None
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "www", "www/cgi-bin", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        for cmd in ("sh", "httpd", "echo", "sleep", "cat"):
            info = tarfile.TarInfo(f"bin/{cmd}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for name, text, mode in (("www/index.html", "hi\n", 0o644), ("www/cgi-bin/ip", CGI, 0o755)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Swarm:
    dir: Path
    sock: str
    pid: int
    hostname: str = ""
    node_id: str = ""
    tls_port: int = 0  # the API also on tcp://127.0.0.1:<tls_port>, TLS with client certificates
    tls: dict[str, str] = field(default_factory=dict)  # ca, client_cert, client_key, ...

    @property
    def tls_url(self) -> str:
        return f"tcp://127.0.0.1:{self.tls_port}"

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def docker(self, *args: str, check: bool = True, input: bytes | None = None) -> str:
        r = subprocess.run(["docker", "-H", self.url, *args], input=input, capture_output=True, timeout=60, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode()

    def api(self, path: str) -> Any:
        out = subprocess.run(
            ["curl", "-sf", "--unix-socket", self.sock, f"http://docker/v1.41{path}"],
            capture_output=True,
            timeout=10,
            check=True,
        )
        return json.loads(out.stdout)

    def service(
        self, name: str, published: int, *, labels: dict[str, str] | None = None, replicas: int = 1, mode: str = "host"
    ) -> None:
        """A busybox httpd service publishing target port 80 at ``published`` (host mode)."""
        args = ["service", "create", "--detach", "--name", name, "--no-resolve-image", "--replicas", str(replicas)]
        # httpd as PID 1 ignores SIGTERM: without this every stop waits the default 10 s grace period
        args += ["--stop-grace-period", "1s"]
        args += ["--publish", f"mode={mode},target=80,published={published}"]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        self.docker(*args, IMAGE, "/bin/httpd", "-f", "-p", "80", "-h", "/www")

    def wait_task_answers(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if b"remote=" in http_get("127.0.0.1", port, "/cgi-bin/ip"):
                    return
            time.sleep(0.2)
        raise AssertionError(f"no task answered on 127.0.0.1:{port}")

    def pause(self) -> None:
        """Freeze the engine: its API stops answering, the tasks (own processes) keep serving."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def http_get(host: str, port: int, path: str, source: str | None = None, headers: str = "") -> bytes:
    from tests.helpers import connect, recv_all

    with connect(host, port, source=source, timeout=5) as c:
        c.sendall(f"GET {path} HTTP/1.0\r\nHost: test\r\n{headers}\r\n".encode())
        return recv_all(c)


@pytest.fixture(scope="session")
def swarm() -> Iterator[Swarm]:
    need_swarm()
    tag = secrets.token_hex(3)
    d = Path(tempfile.mkdtemp(prefix="eps-", dir="/tmp"))  # short: a unix socket path has 108 bytes
    bridge, gw = f"epsb{tag}", f"epsg{tag}"
    # its subnets 172.29.N / 172.28.N: none another test run's swarm holds (released at the end)
    net_text, net_lock = reserve_name("swarm-net", (str(100 + n) for n in random.sample(range(100), 100)))
    net = int(net_text)
    subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", f"172.29.{net}.1/24", "dev", bridge], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    sock = str(d / "docker.sock")
    tls, tls_port = make_tls(d / "tls"), free_port()
    log = open(d / "dockerd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            *("dockerd", "--storage-driver=vfs", "--data-root", str(d / "data"), "--exec-root", str(d / "exec")),
            *("-H", f"unix://{sock}", "--pidfile", str(d / "dockerd.pid"), "--bridge", bridge, "--ip", "127.0.0.1"),
            *("--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--shutdown-timeout=2"),
            *("-H", f"tcp://127.0.0.1:{tls_port}", "--tlsverify", "--tlscacert", tls["ca"]),
            *("--tlscert", tls["server_cert"], "--tlskey", tls["server_key"]),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, DOCKER_SERVICE_PREFER_OFFLINE_IMAGE="1"),
        start_new_session=True,
    )
    sw = Swarm(d, sock, proc.pid, tls_port=tls_port, tls=tls)
    try:
        deadline = time.monotonic() + 30
        while sw.docker("version", check=False) == "" or not Path(sock).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{(d / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.3)
        # Swarm's own bridge for task gateways, under a name of ours (docker_gwbridge is shared
        # by every dockerd of the host otherwise).
        sw.docker(
            "network", "create", "--subnet", f"172.28.{net}.0/24", "-o", f"com.docker.network.bridge.name={gw}",
            "-o", "com.docker.network.bridge.enable_ip_masquerade=false", "docker_gwbridge",
        )  # fmt: skip
        port = free_port()
        sw.docker(
            "swarm", "init", "--advertise-addr", f"127.0.0.1:{port}", "--listen-addr", f"127.0.0.1:{port}",
            "--data-path-port", str(40000 + secrets.randbelow(9000)),  # VXLAN; 1024-49151 only
        )  # fmt: skip
        sw.docker("import", "-", IMAGE, input=_rootfs_tar())
        node = sw.api("/nodes")[0]
        sw.hostname, sw.node_id = node["Description"]["Hostname"], node["ID"]
        yield sw
    finally:
        if sw.pid:
            with contextlib.suppress(OSError):
                os.kill(sw.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mnt = line.split()[1]
            if mnt.startswith(str(d)):
                subprocess.run(["umount", "-l", mnt], check=False)
        for link in (bridge, gw):
            subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
        net_lock.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def plain_engine() -> Iterator[str]:
    """A second real dockerd that is in no swarm (its API answers 503 "This node is not a swarm
    manager"), with no bridge and no iptables: ~2 s. Yields its unix:// URL."""
    need_swarm()
    d = Path(tempfile.mkdtemp(prefix="epn-", dir="/tmp"))
    sock = str(d / "docker.sock")
    with open(d / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(
            [
                *("dockerd", "--storage-driver=vfs", "--data-root", str(d / "data"), "--exec-root", str(d / "exec")),
                *("-H", f"unix://{sock}", "--pidfile", str(d / "dockerd.pid"), "--bridge", "none"),
                *("--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["docker", "-H", f"unix://{sock}", "version"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{(d / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            if line.split()[1].startswith(str(d)):
                subprocess.run(["umount", "-l", line.split()[1]], check=False)
        shutil.rmtree(d, ignore_errors=True)
