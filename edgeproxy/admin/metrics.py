"""The families /metrics shows, built at scrape time from plain counters (the types are in
edgeproxy/metrics.py). Two kinds:

- data-plane families (``data_plane_families``) come from every process that proxies (the single
  process, or each worker) and are **summed** across workers, so they may only hold counters,
  gauges that add up (open connections) and histograms;
- control-plane families come once, from the process that runs health checks, discovery and the
  admin endpoint: server states (the registry), reloads and the config (the stats view), and the
  components' own counters (``StatsView.control_families``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from edgeproxy.admin.view import StatsView
from edgeproxy.metrics import Family
from edgeproxy.pools import BackendPool, PoolRegistry
from edgeproxy.stats import FIELDS as LISTENER_FIELDS
from edgeproxy.stats import Histogram, ListenerStats

ListenerCounts = Mapping[str, tuple[ListenerStats, int]]  # counters and open connections, by listener


# -- the built-in data-plane collectors --------------------------------------------------------

# ListenerStats fields with a name and shape of their own; any other int or Histogram field a
# mode adds (udp datagrams, for example) is exported generically by ``listener_families``.
_KNOWN_FIELDS = {
    "connections_total",
    "bytes_in",
    "bytes_out",
    "ended",
    "requests",
    "request_duration",
    "connect_time",
    "tls_handshakes_ok",
    "tls_handshakes_failed",
}


def listener_families(listeners: ListenerCounts) -> list[Family]:
    conns = Family("edgeproxy_connections_total", "counter", "Connections (tcp, http) or flows (udp) accepted")
    active = Family("edgeproxy_active_connections", "gauge", "Connections or flows open now")
    nbytes = Family("edgeproxy_bytes_total", "counter", "Bytes relayed: in = from clients, out = to clients")
    ended = Family("edgeproxy_connections_ended_total", "counter", "Connections ended, by reason")
    reqs = Family("edgeproxy_requests_total", "counter", "HTTP responses sent to clients, by status code")
    duration = Family("edgeproxy_request_duration_seconds", "histogram", "HTTP request: first byte in to last byte out")
    connect = Family("edgeproxy_upstream_connect_seconds", "histogram", "Time to connect to a server")
    handshakes = Family("edgeproxy_tls_handshakes_total", "counter", "TLS handshakes on listeners with tls, by result")
    extra: dict[str, Family] = {}
    for name, (stats, n_active) in listeners.items():
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
        if stats.tls_handshakes_ok or stats.tls_handshakes_failed:
            handshakes.add(stats.tls_handshakes_ok, listener=name, result="ok")
            handshakes.add(stats.tls_handshakes_failed, listener=name, result="failed")
        for field, value in _other_fields(stats):
            if isinstance(value, Histogram):
                metric = f"edgeproxy_listener_{field}_seconds"
                fam = extra.setdefault(metric, Family(metric, "histogram", f"listener {field}"))
                fam.histogram(value, listener=name)
            else:
                metric = f"edgeproxy_listener_{field.removesuffix('_total')}_total"
                fam = extra.setdefault(metric, Family(metric, "counter", f"listener {field}"))
                fam.add(value, listener=name)
    return [conns, active, nbytes, ended, reqs, duration, connect, handshakes, *extra.values()]


def _other_fields(stats: ListenerStats) -> Iterable[tuple[str, int | float | Histogram]]:
    for field in LISTENER_FIELDS:
        if field in _KNOWN_FIELDS:
            continue
        value = getattr(stats, field, None)
        if isinstance(value, (int, float, Histogram)) and not isinstance(value, bool):
            yield field, value


def server_traffic_families(pools: Iterable[BackendPool]) -> list[Family]:
    """Per-server counters kept by the data path (summed over workers)."""
    active = Family("edgeproxy_server_active_connections", "gauge", "Connections or requests open to a server")
    total = Family("edgeproxy_server_connections_total", "counter", "Connections or requests sent to a server")
    failed = Family("edgeproxy_server_connect_failures_total", "counter", "Failed connects to a server")
    for pool in pools:
        for s in [*pool.servers, *pool.draining]:
            labels = {"backend": pool.name, "server": s.name}
            active.add(s.active, **labels)
            total.add(s.total, **labels)
            failed.add(s.failures, **labels)
    return [active, total, failed]


def data_plane_families(listeners: ListenerCounts, pools: Iterable[BackendPool]) -> list[Family]:
    """Everything one process that proxies reports (a worker sends these to the supervisor)."""
    return [*listener_families(listeners), *server_traffic_families(pools)]


# -- control-plane families (once per edgeproxy) ----------------------------------------------


def control_families(view: StatsView, registry: PoolRegistry) -> list[Family]:
    up = Family("edgeproxy_server_up", "gauge", "1 when the server takes new connections (state up), else 0")
    state = Family("edgeproxy_server_state", "gauge", "The server's state: 1 for the current one of up, down, drain")
    for pool in registry.pools.values():
        for s in pool.servers:
            up.add(1 if s.state.value == "up" else 0, backend=pool.name, server=s.name)
            for st in ("up", "down", "drain"):
                state.add(1 if s.state.value == st else 0, backend=pool.name, server=s.name, state=st)
    r = view.reloads
    reloads = Family("edgeproxy_config_reloads_total", "counter", "Configuration reloads (SIGHUP), by result")
    reloads.add(r.success, result="success")
    reloads.add(r.failure, result="failure")
    last = Family("edgeproxy_config_last_reload_success", "gauge", "1 if the last reload succeeded (or none failed)")
    last.add(0 if r.last_result == "failure" else 1)
    when = Family("edgeproxy_config_last_reload_timestamp_seconds", "gauge", "When the config was last (re)loaded")
    when.add(r.last_time)
    info = Family("edgeproxy_config_info", "gauge", "The running configuration file and its sha256")
    info.add(1, path=view.config.path, sha256=view.config.digest)
    start = Family("edgeproxy_start_time_seconds", "gauge", "When this edgeproxy started (Unix time)")
    start.add(view.started)
    return [up, state, reloads, last, when, info, start, *view.control_families()]
