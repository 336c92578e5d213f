"""The ACME wiring's parts without a CA: where obtained certificates are served
(``place_certificates``), the labelled hosts in the registry, and the control-plane component's
reload behaviour (``AcmeService``: which manager runs, the names it wants, what it pushes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import MappingProxyType
from typing import Any

import trustme

from edgeproxy.acme.placement import place_certificates
from edgeproxy.config import Config, parse_config
from edgeproxy.pools import Change, PoolRegistry
from edgeproxy.runtime.acme_service import AcmeService, challenge_types
from edgeproxy.tls.certificates import Certificate
from edgeproxy.tls.files import NO_CERTIFICATES, CertificateSet
from edgeproxy.tls.pem import parse_certificate

CA = trustme.CA()


def cert(name: str, source: str) -> Certificate:
    leaf = CA.issue_cert(name)
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    return parse_certificate(chain, leaf.private_key_pem.bytes(), source=source)


def config(tmp: Path, acme_names: str = "[a.test, b.test]", acme: str | None = None) -> Config:
    other = "[b.test, c.test]" if acme != "" else "[]"
    acme = acme if acme is not None else f"acme: {{directory: 'https://127.0.0.1:1/dir', storage: {tmp}}}\n"
    return parse_config(
        f"""
listeners:
  - {{name: plain, bind: "127.0.0.1:1", mode: http, backend: app}}
  - name: web
    bind: "127.0.0.1:2"
    mode: http
    backend: app
    tls: {{acme: {acme_names}}}
  - {{name: other, bind: "127.0.0.1:3", mode: http, backend: app, tls: {{acme: {other}}}}}
backends:
  app: {{servers: ["127.0.0.1:9"]}}
{acme}""".encode(),
        str(tmp / "edgeproxy.yaml"),
    )


def test_place_certificates_files_first_then_acme_names_labels_on_the_first_tls_listener(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    f = cert("file.test", "/etc/f.pem")
    old_a = cert("a.test", "acme")
    files = CertificateSet(MappingProxyType({"web": (f, old_a), "other": ()}))  # old_a: placed earlier
    a, b, lab = cert("a.test", "acme"), cert("b.test", "acme"), cert("lab.test", "acme")
    placed = place_certificates(cfg, files, {"a.test": a, "b.test": b, "lab.test": lab}, ["lab.test"])
    assert placed.listeners["web"] == (f, a, b, lab)  # the file stays the default; old_a replaced
    assert placed.listeners["other"] == (b,)  # c.test not obtained yet; labels only on the first
    assert "plain" not in placed.listeners
    assert place_certificates(cfg, NO_CERTIFICATES, {}).listeners == {"web": (), "other": ()}


def test_challenge_types_follow_the_listeners(tmp_path: Path) -> None:
    assert challenge_types(config(tmp_path)) == ("http-01", "tls-alpn-01")


def test_registry_keeps_the_labelled_tls_hosts_and_says_when_they_change() -> None:
    reg = PoolRegistry()
    changes: list[Change] = []
    reg.subscribe(changes.append)
    reg.set_label_backends({}, {}, ["b.test", "a.test", "a.test"])
    assert reg.acme_hosts == ("a.test", "b.test")
    assert changes == [Change(acme_hosts=True)]
    reg.set_label_backends({}, {}, ["a.test", "b.test"])
    assert len(changes) == 1  # unchanged: no notification
    reg.set_label_backends({}, {})
    assert reg.acme_hosts == () and changes[-1] == Change(acme_hosts=True)


class Host:
    """What AcmeService pushes to (the role): records it."""

    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        self.certs: list[CertificateSet] = []
        self.boards: list[dict[str, Any]] = []

    async def use_certificates(self, certs: CertificateSet) -> None:
        self.certs.append(certs)

    async def use_challenges(self, board: dict[str, Any]) -> None:
        self.boards.append(board)


async def reload(svc: AcmeService, host: Host, cfg: Config) -> None:
    svc.with_certificates(cfg, NO_CERTIFICATES)
    staged = await svc.prepare(cfg)
    host.config = cfg
    staged.commit()
    await asyncio.sleep(0)


def test_service_keeps_its_manager_across_reloads_and_follows_names_and_labels(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path)
        host = Host(cfg)
        reg = PoolRegistry()
        svc = AcmeService(host, reg)
        await reload(svc, host, cfg)
        manager = svc.manager
        assert manager is not None and sorted(manager.managed) == ["a.test", "b.test", "c.test"]
        await reload(svc, host, config(tmp_path, "[a.test, d.test]"))
        assert svc.manager is manager  # acme: unchanged: the same manager, other names
        assert sorted(manager.managed) == ["a.test", "b.test", "c.test", "d.test"]
        reg.set_label_backends({}, {}, ["lab.test"])
        assert "lab.test" in manager.managed
        # a certificate obtained: pushed, placed on its listener
        got = cert("a.test", "acme")
        assert manager.on_certificate is not None
        manager.on_certificate("a.test", got)
        # a reload that reads the files and then fails at a later step (never reaching this
        # component) must not make the push under way believe the certificate served
        svc.with_certificates(host.config, NO_CERTIFICATES)
        for _ in range(5):
            await asyncio.sleep(0)
        assert host.certs and host.certs[-1].listeners["web"] == (got,)
        # acme: changed: a new manager, the old one closed
        await reload(
            svc, host, config(tmp_path, acme=f"acme: {{directory: 'https://127.0.0.1:2/dir', storage: {tmp_path}}}\n")
        )
        assert svc.manager is not None and svc.manager is not manager
        # acme: removed: none
        await reload(svc, host, config(tmp_path, "[]", acme=""))
        assert svc.manager is None and svc.collect() == []
        await svc.stop()

    asyncio.run(main())
