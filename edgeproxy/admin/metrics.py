"""Metric families: built at scrape time from plain counters, summed across workers, rendered in
the Prometheus text format (version 0.0.4).

Pull model: nothing on the data path knows about Prometheus. A *collector* is a function that
reads counters and returns ``Family`` objects. Two kinds:

- data-plane collectors (``DATA_COLLECTORS``) run in every process that proxies (the single
  process, or each worker) with that process's ``Proxy``; their families are **summed** across
  workers, so they may only hold counters, gauges that add up (open connections) and histograms;
- control-plane families come from the process that runs health checks, discovery and the admin
  endpoint (the single process or the supervisor): server states, reloads, and any component
  that has a ``collect() -> Iterable[Family]`` method (discovery's counters, for example).

Another module adds a data-plane collector with ``DATA_COLLECTORS.append(fn)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from edgeproxy.stats import Histogram, ListenerStats

if TYPE_CHECKING:
    from edgeproxy.runtime.proxy import Proxy

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]  # (suffix such as "_bucket" or "", labels)


class Family:
    """One metric name: its type, help text and samples by (suffix, labels)."""

    __slots__ = ("help", "kind", "name", "samples")

    def __init__(self, name: str, kind: Kind, help: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.samples: dict[SampleKey, float] = {}

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        key = (suffix, tuple(labels.items()))
        self.samples[key] = self.samples.get(key, 0) + value

    def histogram(self, h: Histogram, **labels: str) -> None:
        for bound, total in zip((*h.bounds, math.inf), h.cumulative(), strict=True):
            # le as Prometheus' own clients write it ("1.0", "+Inf"), so series match theirs
            self.add(total, "_bucket", **labels, le="+Inf" if bound == math.inf else repr(float(bound)))
        self.add(h.sum, "_sum", **labels)
        self.add(h.count, "_count", **labels)

    # -- wire form between worker and supervisor ---------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "help": self.help,
            "samples": [[suffix, [list(kv) for kv in labels], v] for (suffix, labels), v in self.samples.items()],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Family:
        f = cls(d["name"], d["kind"], d["help"])
        for suffix, labels, v in d["samples"]:
            f.samples[(suffix, tuple((str(k), str(val)) for k, val in labels))] = float(v)
        return f


Families = dict[str, Family]
DataCollector = Callable[["Proxy"], Iterable[Family]]


def merge(into: Families, families: Iterable[Family], *, counters_only: bool = False) -> Families:
    """Add ``families`` into ``into`` sample by sample (the sum over workers)."""
    for f in families:
        if counters_only and f.kind == "gauge":
            continue
        target = into.get(f.name)
        if target is None:
            target = into[f.name] = Family(f.name, f.kind, f.help)
        for key, v in f.samples.items():
            target.samples[key] = target.samples.get(key, 0) + v
    return into


def render(families: Iterable[Family]) -> str:
    out: list[str] = []
    for f in families:
        out.append(f"# HELP {f.name} {_escape_help(f.help)}")
        out.append(f"# TYPE {f.name} {f.kind}")
        for (suffix, labels), v in f.samples.items():
            if labels:
                inner = ",".join(f'{k}="{_escape_label(val)}"' for k, val in labels)
                out.append(f"{f.name}{suffix}{{{inner}}} {_num(v)}")
            else:
                out.append(f"{f.name}{suffix} {_num(v)}")
    return "\n".join(out) + "\n"


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


# -- the built-in data-plane collectors --------------------------------------------------------

# ListenerStats fields with a name and shape of their own; any other int or Histogram field a
# mode adds (udp datagrams, for example) is exported generically by ``listener_families``.
_KNOWN_FIELDS = {"connections_total", "bytes_in", "bytes_out", "ended", "requests", "request_duration", "connect_time"}


def listener_families(proxy: Proxy) -> Iterable[Family]:
    conns = Family("edgeproxy_connections_total", "counter", "Connections (tcp, http) or flows (udp) accepted")
    active = Family("edgeproxy_active_connections", "gauge", "Connections or flows open now")
    nbytes = Family("edgeproxy_bytes_total", "counter", "Bytes relayed: in = from clients, out = to clients")
    ended = Family("edgeproxy_connections_ended_total", "counter", "Connections ended, by reason")
    reqs = Family("edgeproxy_requests_total", "counter", "HTTP responses sent to clients, by status code")
    duration = Family("edgeproxy_request_duration_seconds", "histogram", "HTTP request: first byte in to last byte out")
    connect = Family("edgeproxy_upstream_connect_seconds", "histogram", "Time to connect to a server")
    extra: dict[str, Family] = {}
    for name, (stats, n_active) in proxy.listener_stats().items():
        conns.add(stats.connections_total, listener=name)
        active.add(n_active, listener=name)
        nbytes.add(stats.bytes_in, listener=name, direction="in")
        nbytes.add(stats.bytes_out, listener=name, direction="out")
        for reason, n in stats.ended.items():
            ended.add(n, listener=name, reason=reason)
        for code, n in stats.requests.items():
            reqs.add(n, listener=name, code=str(code))
        duration.histogram(stats.request_duration, listener=name)
        connect.histogram(stats.connect_time, listener=name)
        for field, value in _other_fields(stats):
            if isinstance(value, Histogram):
                metric = f"edgeproxy_listener_{field}_seconds"
                fam = extra.setdefault(metric, Family(metric, "histogram", f"listener {field}"))
                fam.histogram(value, listener=name)
            else:
                metric = f"edgeproxy_listener_{field.removesuffix('_total')}_total"
                fam = extra.setdefault(metric, Family(metric, "counter", f"listener {field}"))
                fam.add(value, listener=name)
    return [conns, active, nbytes, ended, reqs, duration, connect, *extra.values()]


def _other_fields(stats: ListenerStats) -> Iterable[tuple[str, int | float | Histogram]]:
    for field in type(stats).__slots__:
        if field in _KNOWN_FIELDS:
            continue
        value = getattr(stats, field, None)
        if isinstance(value, (int, float, Histogram)) and not isinstance(value, bool):
            yield field, value


def server_traffic_families(proxy: Proxy) -> Iterable[Family]:
    """Per-server counters kept by the data path (summed over workers)."""
    active = Family("edgeproxy_server_active_connections", "gauge", "Connections or requests open to a server")
    total = Family("edgeproxy_server_connections_total", "counter", "Connections or requests sent to a server")
    failed = Family("edgeproxy_server_connect_failures_total", "counter", "Failed connects to a server")
    for pool in proxy.pools.values():
        for s in [*pool.servers, *pool.draining]:
            labels = {"backend": pool.name, "server": s.name}
            active.add(s.active, **labels)
            total.add(s.total, **labels)
            failed.add(s.failures, **labels)
    return [active, total, failed]


DATA_COLLECTORS: list[DataCollector] = [listener_families, server_traffic_families]


def collect_data_plane(proxy: Proxy) -> list[Family]:
    out: list[Family] = []
    for fn in DATA_COLLECTORS:
        out.extend(fn(proxy))
    return out


# -- control-plane families (once per edgeproxy) ----------------------------------------------


def control_families(proxy: Proxy) -> list[Family]:
    up = Family("edgeproxy_server_up", "gauge", "1 when the server takes new connections (state up), else 0")
    state = Family("edgeproxy_server_state", "gauge", "The server's state: 1 for the current one of up, down, drain")
    for pool in proxy.pools.values():
        for s in pool.servers:
            up.add(1 if s.state.value == "up" else 0, backend=pool.name, server=s.name)
            for st in ("up", "down", "drain"):
                state.add(1 if s.state.value == st else 0, backend=pool.name, server=s.name, state=st)
    reloads = Family("edgeproxy_config_reloads_total", "counter", "Configuration reloads (SIGHUP), by result")
    reloads.add(proxy.reloads.success, result="success")
    reloads.add(proxy.reloads.failure, result="failure")
    last = Family("edgeproxy_config_last_reload_success", "gauge", "1 if the last reload succeeded (or none failed)")
    last.add(0 if proxy.reloads.last_result == "failure" else 1)
    when = Family("edgeproxy_config_last_reload_timestamp_seconds", "gauge", "When the config was last (re)loaded")
    when.add(proxy.reloads.last_time)
    info = Family("edgeproxy_config_info", "gauge", "The running configuration file and its sha256")
    info.add(1, path=proxy.config.path, sha256=proxy.config.digest)
    start = Family("edgeproxy_start_time_seconds", "gauge", "When this edgeproxy started (Unix time)")
    start.add(proxy.started)
    out = [up, state, reloads, last, when, info, start]
    for comp in proxy.components:  # components with counters of their own (swarm discovery)
        families = getattr(comp, "metric_families", None)
        if families is not None:
            out.extend(families())
    return out
