"""``edgeproxy certs``: every certificate name, its issuer, expiry, source (file/acme), last renewal
attempt and error, read from the config and the ACME storage without the running proxy.

The swarm storage is read with the encryption key when this host can read it, and without it
otherwise (certificates and statuses are not secret; only the keys are sealed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from cryptography import x509

from edgeproxy.acme.build import build_storage
from edgeproxy.acme.ids import cert_id
from edgeproxy.acme.sealed import SealError
from edgeproxy.acme.storage import Storage, StorageError
from edgeproxy.acme.swarm_api import SwarmConfigs
from edgeproxy.acme.swarm_storage import SwarmStorage
from edgeproxy.config import Config
from edgeproxy.config.model import AcmeConfig
from edgeproxy.discovery.docker_api import Endpoint
from edgeproxy.tls.certificates import CertificateError
from edgeproxy.tls.pem import read_certificate


def _storage(acme: AcmeConfig, config: Config) -> Storage:
    try:
        return build_storage(acme, config.swarm, "edgeproxy-certs")
    except SealError:
        assert config.swarm is not None
        endpoints = [Endpoint.parse(u, config.swarm.tls) for u in config.swarm.managers]
        return SwarmStorage(SwarmConfigs(endpoints, config.swarm.timeout), acme.directory, None, "edgeproxy-certs")


def _leaf(chain_pem: bytes) -> dict[str, Any]:
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return {
            "names": san.get_values_for_type(x509.DNSName),
            "issuer": leaf.issuer.rfc4514_string(),
            "not_after": leaf.not_valid_after_utc.timestamp(),
        }
    except Exception as e:  # a damaged stored chain is a line of the report, not a crash
        return {"error": f"unreadable certificate: {e}"}


def _file_rows(config: Config) -> Iterable[dict[str, Any]]:
    """Certificates from files (``listeners[].tls.certificates``, TLS termination's key)."""
    for lst in config.listeners:
        for entry in getattr(lst.tls, "certificates", ()) or ():
            path = str(getattr(entry, "cert", ""))
            row: dict[str, Any] = {"source": "file", "listener": lst.name, "file": path}
            try:
                c = read_certificate(path, getattr(entry, "key", None))
                row.update(names=list(c.names), issuer=c.issuer, not_after=c.not_after)
            except CertificateError as e:
                row["error"] = str(e)
            yield row


async def collect(config: Config) -> dict[str, Any]:
    rows = list(_file_rows(config))
    report: dict[str, Any] = {"certificates": rows}
    acme = config.acme
    if acme is None:
        return report
    storage = _storage(acme, config)
    report["acme"] = {"directory": acme.directory, "storage": storage.description}
    try:
        stored = await storage.load_certificates()
        statuses = await storage.load_statuses()
    except StorageError as e:
        report["acme"]["error"] = str(e)
        stored, statuses = {}, {}
    finally:
        await storage.close()
    wanted = {cert_id([n]): [n] for n in config.acme_names()}
    for cid in sorted(set(wanted) | set(stored) | set(statuses)):
        row = {"source": "acme", "id": cid, "configured": cid in wanted, "names": wanted.get(cid, [cid])}
        if cid in stored:
            row.update(_leaf(stored[cid].chain_pem))
        st = statuses.get(cid)
        if st is not None:
            row.update(
                last_attempt=st.last_attempt,
                last_success=st.last_success,
                last_error=st.last_error,
                failures=st.failures,
                next_attempt=st.next_attempt,
                by=st.by,
            )
        rows.append(row)
    return report


def render(report: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    out = [f"{'NAME':32} {'SOURCE':6} {'EXPIRES':20} {'IN':>6} {'LAST ATTEMPT':20} ISSUER / ERROR"]
    for row in report["certificates"]:
        names = ",".join(row.get("names") or [row.get("file", "?")])
        expires = _when(row.get("not_after"))
        left = f"{(row['not_after'] - now) / 86400:.0f}d" if row.get("not_after") else "-"
        if not row.get("not_after") and row.get("source") == "acme":
            expires = "no certificate yet"
        last = _when(row.get("last_attempt"))
        detail = row.get("error") or row.get("issuer") or ""
        if row.get("last_error"):
            detail = f"{detail}; last error: {row['last_error']}" if detail else f"last error: {row['last_error']}"
        out.append(f"{names:32} {row['source']:6} {expires:20} {left:>6} {last:20} {detail}")
    if "acme" in report:
        acme = report["acme"]
        out.append(
            f"acme: {acme['directory']}, storage {acme['storage']}" + (f": {acme['error']}" if "error" in acme else "")
        )
    return "\n".join(out)


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t)) if isinstance(t, int | float) else "-"


def main(config: Config, as_json: bool) -> int:
    report = asyncio.run(collect(config))
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 2 if "error" in report.get("acme", {}) else 0
