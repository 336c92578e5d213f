"""``ControlRole.use_certificates``, the hook ACME (issue 14) calls to serve a certificate it
obtained without a reload: in-process, a single process with a TLS listener; a real client sees
the certificate handed in, and the next reload serves what the files say again."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from types import MappingProxyType

import yaml

from edgeproxy.config import parse_config
from edgeproxy.net.upstream_pool import IdlePool
from edgeproxy.pools import PoolRegistry
from edgeproxy.runtime.dataplane import DataPlane
from edgeproxy.runtime.main import control_plane
from edgeproxy.runtime.single import SingleProcess
from edgeproxy.runtime.sockets import SocketSet
from edgeproxy.tls.files import CertificateSet
from edgeproxy.tls.pem import read_certificate
from tests.helpers import HttpBackend, free_port
from tests.integration.test_tls import Pki, get, tls_connect


def organization(port: int, ctx: ssl.SSLContext) -> str:
    with tls_connect(port, ctx, "a.test") as s:
        assert get(s)[0] == 200
        cert = s.getpeercert()
        assert cert is not None
        return str(next(v for rdn in cert["subject"] for k, v in rdn if k == "organizationName"))


def test_use_certificates_swaps_in_a_certificate_until_the_next_reload(tmp_path: Path) -> None:
    pki = Pki()
    files = pki.issue("a", "a.test", organization_name="from-file")
    other = pki.issue("b", "a.test", organization_name="from-acme")
    backend = HttpBackend()
    port = free_port()
    path = tmp_path / "edgeproxy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "log": {"access": "off"},
                "listeners": [
                    {"name": "https", "bind": f"127.0.0.1:{port}", "mode": "http", "backend": "app",
                     "tls": {"certificates": [files]}},
                ],
                "backends": {"app": {"health": {"type": "none"}, "servers": [backend.address]}},
            }
        )
    )  # fmt: skip

    async def main() -> None:
        registry, sockets = PoolRegistry(), SocketSet()
        dataplane = DataPlane(registry, sockets, IdlePool(asyncio.get_running_loop()))
        config = parse_config(path.read_bytes(), str(path))
        proxy = SingleProcess(config, registry, sockets, dataplane, lambda view: control_plane(registry, view))
        await proxy.start()
        try:
            ctx = pki.client()
            assert await asyncio.to_thread(organization, port, ctx) == "from-file"
            acme = read_certificate(other["cert"], other["key"])
            await proxy.use_certificates(CertificateSet(MappingProxyType({"https": (acme,)})))
            assert await asyncio.to_thread(organization, port, ctx) == "from-acme"
            assert proxy.certs.listeners["https"] == (acme,)
            assert await proxy.reload()
            assert await asyncio.to_thread(organization, port, ctx) == "from-file"
        finally:
            await proxy.shutdown()

    asyncio.run(main())
