"""``edgeproxy healthcheck``: ask the running proxy's admin ``/healthz`` whether it serves.

The image's HEALTHCHECK runs this (no curl in the image). It finds the admin address in the
config file and sends one ``GET /healthz``: exit 0 on ``200`` (serving), 1 otherwise (``503``
while draining, nothing listening, a timeout), as Docker's HEALTHCHECK expects.

Only ``admin.bind`` is read from the file, not the whole config: the running proxy keeps serving
its last valid config when an edited file is invalid (a reload is refused), and that proxy is
healthy. Without ``admin.bind`` there is nothing to ask: exit 0 and say so, rather than have an
orchestrator restart a proxy that serves fine.
"""

from __future__ import annotations

import socket
import sys

import yaml

from edgeproxy.config.values import Address, parse_address

# A wildcard bind answers on loopback too; connect there.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class HealthcheckError(Exception):
    """Why the health could not be read (the message is for the operator)."""


def admin_address(config_path: str) -> Address | None:
    """``admin.bind`` of the config file, or None when the file has no admin endpoint."""
    try:
        with open(config_path, "rb") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise HealthcheckError(f"{config_path}: cannot read the config: {e}") from None
    admin = doc.get("admin") if isinstance(doc, dict) else None
    if admin is None:
        return None
    bind = admin.get("bind") if isinstance(admin, dict) else None
    if not isinstance(bind, str):
        raise HealthcheckError(f"{config_path}: admin.bind is not a host:port")
    try:
        return parse_address(bind)
    except ValueError as e:
        raise HealthcheckError(f"{config_path}: admin.bind: {e}") from None


def probe(address: Address, timeout: float) -> tuple[bool, str]:
    """One ``GET /healthz`` (the admin server answers one request per connection, then closes):
    (healthy, what it answered)."""
    host = _LOOPBACK.get(address.host, address.host)
    try:
        with socket.create_connection((host, address.port), timeout=timeout) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\nHost: edgeproxy\r\n\r\n")
            answer = b""
            while len(answer) < 4096 and (chunk := s.recv(4096)):
                answer += chunk
    except OSError as e:
        return False, f"{host}:{address.port}: {e.strerror or e}"
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    body = answer.partition(b"\r\n\r\n")[2].decode("latin-1").strip()
    return status_line.split(" ")[1:2] == ["200"], f"{status_line} {body}".strip()


def main(config_path: str, timeout: float) -> int:
    try:
        address = admin_address(config_path)
    except HealthcheckError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    if address is None:
        print(f"{config_path} has no admin.bind: /healthz not checked")
        return 0
    healthy, said = probe(address, timeout)
    print(f"{'healthy' if healthy else 'unhealthy'}: {said}", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1
