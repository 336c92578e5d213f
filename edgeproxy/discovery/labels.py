"""``edgeproxy.*`` service labels -> a backend (named after the service) and its HTTP route.

SPEC.md: ``edgeproxy.enable=true`` makes a backend; ``edgeproxy.port`` (the target port, required
when several are published), ``edgeproxy.listener`` (default: the first http listener),
``edgeproxy.host``, ``edgeproxy.path_prefix``, ``edgeproxy.balance``, ``edgeproxy.send_proxy``,
``edgeproxy.health.path``, ``edgeproxy.tls`` (true: an ACME certificate for ``edgeproxy.host``,
served on the first TLS listener). A bad label raises ``LabelError``: the caller logs it and skips that
service; it never takes the proxy down. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeproxy.config import Backend, Health, Listener, Route, SwarmRef
from edgeproxy.config.values import acme_name_error
from edgeproxy.discovery.swarm_model import INGRESS_HINT, Service

PREFIX = "edgeproxy."
KNOWN = frozenset(
    PREFIX + k
    for k in ("enable", "port", "listener", "host", "path_prefix", "balance", "send_proxy", "health.path", "tls")
)
_BALANCE = ("roundrobin", "leastconn", "source", "random")
_SEND_PROXY = ("none", "v1", "v2")


class LabelError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class LabelBackend:
    backend: Backend
    listener: str | None  # the listener whose routes get `route`; None: no http listener
    route: Route | None  # None when neither host nor path_prefix is set
    acme_host: str | None = None  # edgeproxy.tls=true: the host that gets an ACME certificate


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


def enabled(service: Service) -> bool:
    return service.labels.get(PREFIX + "enable", "").strip().lower() in _TRUE


def label_backend(service: Service, listeners: Sequence[Listener]) -> LabelBackend:
    labels = service.labels
    unknown = sorted(k for k in labels if k.startswith(PREFIX) and k not in KNOWN)
    if unknown:
        raise LabelError(f"unknown label(s) {', '.join(unknown)}")
    port = _port(service, labels.get(PREFIX + "port"))
    balance = labels.get(PREFIX + "balance", "roundrobin")
    if balance not in _BALANCE:
        raise LabelError(f"edgeproxy.balance={balance!r}: expected one of {', '.join(_BALANCE)}")
    send_proxy = labels.get(PREFIX + "send_proxy", "none")
    if send_proxy not in _SEND_PROXY:
        raise LabelError(f"edgeproxy.send_proxy={send_proxy!r}: expected one of {', '.join(_SEND_PROXY)}")
    health = Health()
    health_path = labels.get(PREFIX + "health.path")
    if health_path is not None:
        if not health_path.startswith("/"):
            raise LabelError(f"edgeproxy.health.path={health_path!r} must start with /")
        health = Health(type="http", path=health_path)
    backend = Backend(
        name=service.name,
        balance=balance,  # type: ignore[arg-type]  # checked against _BALANCE above
        send_proxy=send_proxy,  # type: ignore[arg-type]  # checked against _SEND_PROXY above
        health=health,
        swarm=SwarmRef(service=service.name, port=port),
    )
    listener = _listener(labels.get(PREFIX + "listener"), listeners)
    host = labels.get(PREFIX + "host")
    prefix = labels.get(PREFIX + "path_prefix")
    if prefix is not None and not prefix.startswith("/"):
        raise LabelError(f"edgeproxy.path_prefix={prefix!r} must start with /")
    route = None
    if host or prefix:
        route = Route(
            backend=service.name, host=host.strip().lower().split(":")[0] if host else None, path_prefix=prefix
        )
    return LabelBackend(backend, listener, route, _acme_host(labels.get(PREFIX + "tls"), route))


def _acme_host(text: str | None, route: Route | None) -> str | None:
    flag = (text or "").strip().lower()
    if flag in _FALSE:
        return None
    if flag not in _TRUE:
        raise LabelError(f"edgeproxy.tls={text!r}: expected true or false")
    host = route.host if route is not None else None
    if not host:
        raise LabelError("edgeproxy.tls=true needs edgeproxy.host (the name the certificate is for)")
    error = acme_name_error(host.rstrip("."))
    if error is not None:
        raise LabelError(f"edgeproxy.tls=true: edgeproxy.host={error}")
    return host.rstrip(".")


def _port(service: Service, text: str | None) -> int:
    host_targets = sorted({p.target for p in service.ports if p.mode == "host"})
    if text is not None:
        try:
            port = int(text)
        except ValueError:
            raise LabelError(f"edgeproxy.port={text!r} is not a port number") from None
        if port not in host_targets:
            if any(p.target == port for p in service.ingress_ports()):
                raise LabelError(f"target port {port} is published in ingress mode: {INGRESS_HINT}")
            raise LabelError(f"edgeproxy.port={port}: the service publishes no host-mode port with that target")
        return port
    if len(host_targets) == 1:
        return host_targets[0]
    if not host_targets:
        if service.ingress_ports():
            raise LabelError(f"its ports are published in ingress mode: {INGRESS_HINT}")
        raise LabelError("the service publishes no port (publish one with mode: host)")
    raise LabelError(f"it publishes several target ports {host_targets}: set edgeproxy.port")


def _listener(name: str | None, listeners: Sequence[Listener]) -> str | None:
    if name is not None:
        if not any(lst.name == name for lst in listeners):
            raise LabelError(f"edgeproxy.listener={name!r}: no such listener")
        return name
    return next((lst.name for lst in listeners if lst.mode == "http"), None)
