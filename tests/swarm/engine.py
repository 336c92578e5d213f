"""A private Docker engine in swarm mode for the tests, kept off everything else on the host.

- its own data root, exec root, pid file and unix socket under a temp dir: any other dockerd on
  the machine is left alone;
- its own bridge (``ep<hex>``, a private /24) instead of docker0, its own ``docker_gwbridge`` name,
  ``--iptables=false --ip-forward=false``: the host's firewall and sysctls are not touched;
- ``--ip 127.0.0.1``: host-mode published ports bind loopback only, so all data traffic stays on
  127.0.0.0/8 (the swarm itself is initialised on 127.0.0.1 too);
- an image made with ``docker import`` from Debian's static busybox (no registry is reachable):
  ``httpd`` and a CGI ``/cgi-bin/ip`` printing ``remote=$REMOTE_ADDR xff=$HTTP_X_FORWARDED_FOR``;
- a TLS listener on 127.0.0.1 with a throw-away CA, for ``tcp://`` managers with client certs.

Teardown stops dockerd by its pid, kills what is left under its exec root, unmounts and removes
everything it created.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import free_port

IMAGE = "local/bb:2"
CGI = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "remote=$REMOTE_ADDR xff=$HTTP_X_FORWARDED_FOR"\n'


def missing_requirements() -> str | None:
    """Why a real swarm cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root to run a private dockerd"
    for tool, package in (
        ("dockerd", "docker.io"),
        ("docker", "docker.io"),
        ("ip", "iproute2"),
        ("openssl", "openssl"),
    ):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH (apt-get install {package})"
    busybox = shutil.which("busybox")
    if busybox is None or not is_static(busybox):
        return "needs a static busybox for the test image (apt-get install busybox-static)"
    return None


def is_static(path: str) -> bool:
    """An ELF binary without PT_INTERP (no dynamic loader): it runs in an empty image."""
    data = Path(path).read_bytes()[:4096]
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off : off + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def image_tar() -> bytes:
    """The test image's root: busybox (sh, httpd) and the CGI, as a tar for ``docker import``."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, data: bytes = b"", mode: int = 0o755, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.linkname, info.size = mode, kind, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "www", "www/cgi-bin", "tmp"):
            add(d, kind=tarfile.DIRTYPE)
        add("bin/busybox", busybox)
        for applet in ("sh", "httpd", "echo", "cat", "sleep"):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("www/index.html", b"hi\n", 0o644)
        add("www/cgi-bin/ip", CGI.encode())
    return buf.getvalue()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def run(cmd: list[str], timeout: float = 60.0, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def make_tls(d: Path) -> dict[str, str]:
    """A throw-away CA, a server cert for 127.0.0.1 and a client cert (EC P-256, 2 days)."""
    d.mkdir(parents=True, exist_ok=True)

    def key(name: str) -> str:
        path = str(d / f"{name}-key.pem")
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path])
        return path

    ca_key = key("ca")
    ca = str(d / "ca.pem")
    run(["openssl", "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=edgeproxy-test-ca", "-days", "2", "-out", ca])
    out = {"ca": ca}
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        k = key(name)
        csr, cert, extfile = d / f"{name}.csr", str(d / f"{name}-cert.pem"), d / f"{name}.ext"
        extfile.write_text(ext)
        run(["openssl", "req", "-new", "-key", k, "-subj", f"/CN={name}", "-out", str(csr)])
        sign = ["openssl", "x509", "-req", "-in", str(csr), "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"]
        run([*sign, "-days", "2", "-out", cert, "-extfile", str(extfile)])
        out[f"{name}_cert"], out[f"{name}_key"] = cert, k
    return out


def _pick_subnet(taken: set[str]) -> str:
    for _ in range(100):
        net = f"172.29.{random.randrange(256)}"
        if net not in taken:
            taken.add(net)
            return net
    raise RuntimeError("no free 172.29.x.0/24")


@dataclass
class Engine:
    """One private dockerd. ``swarm=True``: initialised as a single-node swarm with the test image."""

    swarm: bool = True
    tls: bool = True
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ep-dockerd-")))
    proc: subprocess.Popen[bytes] | None = None
    links: list[str] = field(default_factory=list)
    tls_files: dict[str, str] = field(default_factory=dict)
    tls_port: int = 0
    node_id: str = ""
    hostname: str = ""
    frozen: bool = False
    startup_s: float = 0.0

    @property
    def sock(self) -> str:
        return str(self.dir / "docker.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    @property
    def tls_url(self) -> str:
        return f"tcp://127.0.0.1:{self.tls_port}"

    # -- life --------------------------------------------------------------------------------------
    def start(self) -> Engine:
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _start(self) -> None:
        tag = self.dir.name[-6:].lower().replace("_", "0")
        addrs = run(["ip", "-4", "-o", "addr"]).stdout.split()
        taken = {a.split("/")[0].rsplit(".", 1)[0] for a in addrs if a.count(".") == 3}
        args = [
            "dockerd",
            "--config-file", str(self.dir / "daemon.json"),
            "--data-root", str(self.dir / "data"),
            "--exec-root", str(self.dir / "exec"),
            "--pidfile", str(self.dir / "dockerd.pid"),
            "-H", self.url,
            "--storage-driver", "vfs",
            "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--ip", "127.0.0.1",
            "--shutdown-timeout", "2",
        ]  # fmt: skip
        (self.dir / "daemon.json").write_text("{}")
        if self.swarm:
            bridge = f"epbr{tag}"
            net = _pick_subnet(taken)
            run(["ip", "link", "add", bridge, "type", "bridge"])
            self.links.append(bridge)
            run(["ip", "addr", "add", f"{net}.1/24", "dev", bridge])
            run(["ip", "link", "set", bridge, "up"])
            args += ["--bridge", bridge]
        else:
            args += ["--bridge", "none"]
        if self.tls:
            self.tls_files = make_tls(self.dir / "tls")
            self.tls_port = free_port()
            args += ["-H", self.tls_url, "--tlsverify", "--tlscacert", self.tls_files["ca"]]
            args += ["--tlscert", self.tls_files["server_cert"], "--tlskey", self.tls_files["server_key"]]
        env = dict(os.environ, DOCKER_SERVICE_PREFER_OFFLINE_IMAGE="1")  # else each task tries a registry first
        with open(self.dir / "dockerd.log", "wb") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.api("/_ping", raw=True) == b"OK":
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        if not self.swarm:
            return
        gw = f"epgw{tag}"
        self.links.append(gw)
        self.docker(
            "network", "create", "--driver", "bridge", "--subnet", f"{_pick_subnet(taken)}.0/24",
            "-o", f"com.docker.network.bridge.name={gw}",
            "-o", "com.docker.network.bridge.enable_icc=false",
            "-o", "com.docker.network.bridge.enable_ip_masquerade=false",
            "docker_gwbridge",
        )  # fmt: skip
        self.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        info = self.api("/info")
        self.node_id, self.hostname = info["Swarm"]["NodeID"], info["Name"]
        proc = subprocess.run(
            ["docker", "-H", self.url, "import", "-", IMAGE], input=image_tar(), capture_output=True, timeout=60
        )
        if proc.returncode != 0:
            raise RuntimeError(f"docker import failed: {proc.stderr.decode(errors='replace')}")

    def stop(self) -> None:
        """Stop dockerd and remove everything it made. Safe to call twice."""
        self.thaw()
        if self.proc is not None and self.proc.poll() is None:
            if self.swarm:
                with contextlib.suppress(Exception):
                    run(["docker", "-H", self.url, "swarm", "leave", "--force"], timeout=20, check=False)
                    run(["docker", "-H", self.url, "network", "rm", "docker_gwbridge"], timeout=20, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_leftovers()
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(self.dir) + "/")
        ]
        for m in sorted(mounts, reverse=True):
            run(["umount", "-l", m], check=False)
        for link in self.links:
            run(["ip", "link", "del", link], check=False)
        self.links.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """containerd, shims and docker-proxy started for this engine: their command lines name our dir."""
        me = os.getpid()
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit() or int(pid_dir.name) == me:
                continue
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.dir).encode() in cmdline:
                with contextlib.suppress(OSError):
                    os.kill(int(pid_dir.name), signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP dockerd: its API hangs like a manager without quorum; tasks keep serving."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def log(self) -> str:
        try:
            return (self.dir / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- API and CLI ---------------------------------------------------------------------------------
    def api(self, path: str, filters: dict[str, list[str]] | None = None, raw: bool = False) -> Any:
        if filters:
            path += "?" + urllib.parse.urlencode({"filters": json.dumps(filters)})
        conn = _UnixHTTPConnection(self.sock)
        try:
            conn.request("GET", path)
            body = conn.getresponse().read()
        finally:
            conn.close()
        return body if raw else json.loads(body)

    def docker(self, *args: str, timeout: float = 60.0) -> str:
        return run(["docker", "-H", self.url, *args], timeout=timeout).stdout.strip()

    def create_service(
        self,
        name: str,
        target: int = 80,
        published: int | None = None,
        *,
        labels: dict[str, str] | None = None,
        replicas: int = 1,
        mode: str = "host",
        wait: bool = True,
    ) -> int:
        """A busybox httpd service publishing ``target`` on ``published`` (host mode by default)."""
        published = published or free_port()
        args = ["service", "create", "--detach", "--name", name, "--no-resolve-image", "--stop-grace-period", "1s"]
        args += ["--replicas", str(replicas), "--publish", f"mode={mode},target={target},published={published}"]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        self.docker(*args, IMAGE, "/bin/httpd", "-f", "-p", str(target), "-h", "/www")
        if wait and replicas and mode == "host":
            wait_http(published)
        return published

    def running_tasks(self, service: str) -> list[dict[str, Any]]:
        tasks = self.api("/tasks", {"service": [service], "desired-state": ["running"]})
        return [t for t in tasks if t["Status"]["State"] == "running"]


def http_get(port: int, path: str = "/cgi-bin/ip", host: str = "127.0.0.1", source: str | None = None,
             headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, str]:  # fmt: skip
    """A plain HTTP/1.0 GET with a raw socket (optionally from a chosen 127.0.0.x source)."""
    s = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None)
    with s:
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n{head}\r\n".encode())
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks).decode(errors="replace")
    if not raw:
        raise ConnectionError("connection closed without a response")
    status = int(raw.split(" ", 2)[1])
    # busybox httpd relays its CGI's bare-LF header lines as they are
    return status, re.split(r"\r?\n\r?\n", raw, maxsplit=1)[-1]


def wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http_get(port, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on 127.0.0.1:{port}")
        time.sleep(0.2)


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> float:
    """Poll until ``predicate()`` is true; return the seconds it took."""
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


@dataclass
class Lab:
    """3 managers + 1 worker, one dockerd per network namespace on a private bridge (lab.sh)."""

    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ep-lab-")))
    tag: str = field(default_factory=lambda: f"{random.randrange(16**5):05x}")
    net: str = ""
    nodes: int = 4

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, LAB=str(self.dir), TAG=self.tag, NET=self.net, NODES=str(self.nodes))

    def sh(self, *args: str, timeout: float = 120.0) -> str:
        script = str(Path(__file__).with_name("lab.sh"))
        return run([script, *args], timeout=timeout, env=self.env).stdout

    def start(self) -> Lab:
        addrs = run(["ip", "-4", "-o", "addr"]).stdout.split()
        taken = {a.split("/")[0].rsplit(".", 1)[0] for a in addrs if a.count(".") == 3}
        self.net = next(n for n in (f"10.77.{random.randrange(1, 255)}" for _ in range(100)) if n not in taken)
        root = self.dir / "rootfs"
        with tarfile.open(fileobj=io.BytesIO(image_tar())) as tar:
            tar.extractall(root, filter="tar")
        try:
            self.sh("setup")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.sh("teardown", timeout=120)

    def url(self, n: int) -> str:
        return f"unix://{self.dir}/node{n}/docker.sock"

    def addr(self, n: int) -> str:
        return f"{self.net}.{10 + n}"

    def docker(self, n: int, *args: str) -> str:
        return run(["docker", "-H", self.url(n), *args]).stdout.strip()

    def kill(self, n: int) -> None:
        """The manager's dockerd dies (SIGKILL): its control plane is gone, its task keeps running."""
        self.sh("stop", str(n), "KILL")
