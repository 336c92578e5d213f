"""A private ACME CA on loopback for the tests: Debian's ``pebble`` with ``pebble-challtestsrv`` as
its DNS (every A query -> 127.0.0.1), on free ports (TESTBED.md, "A private ACME CA on loopback").

``httpPort``/``tlsPort`` in pebble's config are where its validation authority connects for
HTTP-01 and TLS-ALPN-01: the test's responders listen there. Missing pebble skips, saying why,
and fails under EDGEPROXY_SWARM_TESTS=require (.ci/run installs the package), as the swarm tests do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from tests.helpers import free_port


def need_pebble() -> None:
    for tool in ("pebble", "pebble-challtestsrv"):
        if shutil.which(tool) is None:
            reason = f"the ACME tests need {tool} (apt-get install pebble)"
            if os.environ.get("EDGEPROXY_SWARM_TESTS") == "require":
                pytest.fail(f"EDGEPROXY_SWARM_TESTS=require: {reason}")
            pytest.skip(reason)


@dataclass
class Pebble:
    dir: Path
    validity: int | None = None  # seconds; None: pebble's default (5 years)
    port: int = field(default_factory=free_port)
    mgmt_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=lambda: free_port(kind=socket.SOCK_DGRAM))  # UDP (and TCP)
    http01_port: int = field(default_factory=free_port)
    tlsalpn01_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def ca(self) -> str:
        """Trust for pebble's own HTTPS (the directory), not for what it issues."""
        return str(self.dir / "ca.pem")

    @property
    def log(self) -> Path:
        return self.dir / "pebble.log"

    def count(self, needle: str) -> int:
        """How many lines of pebble's log hold ``needle`` (``POST /order-plz`` = orders placed,
        ``POST /sign-me-up`` = accounts registered)."""
        return sum(needle in line for line in self.log.read_text(errors="replace").splitlines())

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "ca.pem").exists():
            ca = trustme.CA()
            ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))
            leaf = ca.issue_cert("127.0.0.1", "localhost")
            leaf.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
            leaf.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.dir / "cert.pem"),
            "privateKey": str(self.dir / "key.pem"),
            "httpPort": self.http01_port,
            "tlsPort": self.tlsalpn01_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity is not None:
            config["certificateValidityPeriod"] = self.validity
        (self.dir / "pebble-config.json").write_text(json.dumps({"pebble": config}))
        dns = [
            *("pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", ""),
            *("-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}", "-defaultIPv4", "127.0.0.1"),
            *("-defaultIPv6", ""),
        ]
        # No sleeps before validating, no fake bad nonces, and no reuse of valid authorizations:
        # every order is validated, so a test sees its responders asked.
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        pebble = [
            *("pebble", "-config", str(self.dir / "pebble-config.json")),
            *("-dnsserver", f"127.0.0.1:{self.dns_port}", "-strict=false"),
        ]
        with open(self.dir / "dns.log", "ab") as dlog, open(self.log, "ab") as plog:
            self.procs = [
                subprocess.Popen(dns, stdout=dlog, stderr=subprocess.STDOUT, start_new_session=True),
                subprocess.Popen(pebble, stdout=plog, stderr=subprocess.STDOUT, env=env, start_new_session=True),
            ]
        deadline = time.monotonic() + 20
        while not self.up():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.stop()
                raise RuntimeError(f"pebble did not come up:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def up(self) -> bool:
        try:
            self.get(self.directory)
            return True
        except OSError:
            return False

    def get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cafile=self.ca)
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return bytes(r.read())

    def root_pem(self) -> bytes:
        """The root of what pebble issues (new at every start)."""
        return self.get(f"https://127.0.0.1:{self.mgmt_port}/roots/0")

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []


@contextlib.contextmanager
def running_pebble(d: Path, validity: int | None = None) -> Iterator[Pebble]:
    need_pebble()
    peb = Pebble(d, validity=validity)
    peb.start()
    try:
        yield peb
    finally:
        peb.stop()
