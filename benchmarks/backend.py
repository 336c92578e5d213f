"""The backend: a private nginx (generated config, temp prefix) that is never the bottleneck.

Four servers: plain HTTP (``/small`` fixed response, ``/10m`` a 10 MiB file, ``/whoami`` echoes
X-Forwarded-For), a ``listen ... proxy_protocol`` one for the TCP + PROXY rows whose
``/whoami`` echoes the address the PROXY header carried, and the same behind TLS (``ssl
proxy_protocol``, a self-signed ECDSA P-256 certificate for ``localhost`` made by ``openssl``)
for the SNI passthrough row, whose ``/whoami`` adds the server name it was asked for. The
system nginx is not touched.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from benchmarks.netutil import free_port, wait_http
from benchmarks.procs import Managed, pinned

SMALL_BODY = "hello from nginx\n"
BULK_BYTES = 10 * 1024 * 1024

_CONF = """\
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections {conns}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{http_port} backlog=4096 reuseport;
        root {dir}/www;
        location = /small {{ return 200 "{small}"; }}
        location = /whoami {{ return 200 "xff=$http_x_forwarded_for\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{pp_port} proxy_protocol backlog=4096;
        root {dir}/www;
        location = /small {{ return 200 "{small}"; }}
        location = /whoami {{ return 200 "proxy=$proxy_protocol_addr\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{tls_pp_port} ssl proxy_protocol backlog=4096;
        ssl_certificate {dir}/localhost.pem;
        ssl_certificate_key {dir}/localhost.key;
        root {dir}/www;
        location = /small {{ return 200 "{small}"; }}
        location = /whoami {{ return 200 "proxy=$proxy_protocol_addr sni=$ssl_server_name\\n"; }}
    }}
}}
"""


class Nginx:
    def __init__(self, workdir: Path, cpus: str | None, nofile: int) -> None:
        self.dir = workdir / "nginx"
        for sub in ("www", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        bulk = self.dir / "www" / "10m"
        with open(bulk, "wb") as f:
            f.write(os.urandom(BULK_BYTES))
        # nginx's workers drop to an unprivileged user when started as root: let them read.
        for p in (workdir, self.dir, self.dir / "www", bulk):
            p.chmod(0o755)
        self.http_port = free_port()
        self.pp_port = free_port()
        self.tls_pp_port = free_port()
        _self_signed(self.dir, "localhost")
        conf = self.dir / "nginx.conf"
        conf.write_text(
            _CONF.format(
                dir=self.dir,
                nofile=nofile,
                conns=nofile - 100,
                http_port=self.http_port,
                pp_port=self.pp_port,
                tls_pp_port=self.tls_pp_port,
                small=SMALL_BODY.replace("\n", "\\n"),
            )
        )
        cmd = ["nginx", "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf)]
        self.proc = Managed("nginx", pinned(cmd, cpus), self.dir / "stdout.log")
        error = wait_http(self.http_port, "/small", timeout=10, alive=self.proc.alive)
        if error is not None:
            self.stop()
            raise RuntimeError(f"nginx did not start ({error}):\n{self.proc.log_tail()}\n{self._error_log()}")

    def _error_log(self) -> str:
        try:
            return (self.dir / "error.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        # SIGTERM is nginx's fast shutdown; SIGQUIT would wait for the keep-alive connections.
        self.proc.stop()


def _self_signed(directory: Path, name: str) -> None:
    """``<name>.pem`` and ``<name>.key``: a self-signed ECDSA P-256 certificate for ``name``."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.pem")],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    (directory / f"{name}.key").chmod(0o644)  # nginx's workers may run as another user
