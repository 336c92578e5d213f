"""Where the ACME certificates are served: merged into the TLS listeners' certificate set.

A listener serves its certificate files first (the first file stays its default, as written),
then the ACME certificates of its ``tls.acme`` names in the order listed; the names of services
labelled ``edgeproxy.tls=true`` are served on the first TLS listener (SPEC.md, "TLS"). A listener
with only ACME names has the first one obtained as its default. Certificates are by ``cert_id``
(one name per certificate: ``build.acme_name_sets``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from edgeproxy.acme.ids import cert_id
from edgeproxy.config import Config
from edgeproxy.tls.certificates import Certificate
from edgeproxy.tls.files import CertificateSet

ACME_SOURCE = "acme"  # Certificate.source of what the manager obtained (a file's is its path)


def place_certificates(
    config: Config, certs: CertificateSet, obtained: Mapping[str, Certificate], labelled: Iterable[str] = ()
) -> CertificateSet:
    """``certs`` (the files of ``config``, or a set placed earlier: its ACME certificates are
    replaced) with the ``obtained`` certificates placed on the listeners that name them."""
    first_tls = next((lst.name for lst in config.listeners if lst.tls is not None), None)
    labelled = tuple(labelled)
    out: dict[str, tuple[Certificate, ...]] = {}
    for lst in config.listeners:
        if lst.tls is None:
            continue
        served = [c for c in certs.listeners.get(lst.name, ()) if c.source != ACME_SOURCE]
        names = (*lst.tls.acme, *(labelled if lst.name == first_tls else ()))
        for name in dict.fromkeys(names):
            cert = obtained.get(cert_id((name,)))
            if cert is not None and cert not in served:
                served.append(cert)
        out[lst.name] = tuple(served)
    return CertificateSet(MappingProxyType(out))
