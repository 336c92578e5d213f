"""Counters the data path updates and the admin endpoint reads (pull model: a scrape reads
these plain attributes; nothing on the hot path formats or locks anything)."""

from __future__ import annotations

import time

# Prometheus-style upper bounds in seconds: 0.5 ms .. 30 s covers a loopback hop to a slow app.
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the largest bound (+Inf)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left(bounds, value), as a loop: most requests fall in the first buckets, and
        # compiled (mypyc) the loop is a tenth of the cost of calling bisect (~750 instructions).
        i = 0
        for bound in self.bounds:
            if value <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for c in self.counts:
            total += c
            out.append(total)
        return out


# ListenerStats's attributes, for the exporter (admin/metrics.py): compiled by mypyc, the class has
# no __slots__ left to list them.
FIELDS = (
    "bytes_in",
    "bytes_out",
    "connect_time",
    "connections_total",
    "datagrams_in",
    "datagrams_out",
    "dropped_oversize",
    "ended",
    "evictions",
    "request_duration",
    "requests",
    "tls_handshakes_failed",
    "tls_handshakes_ok",
    "udp_dropped",
    "udp_errors",
    "udp_refused",
)


class ListenerStats:
    """Per listener; connections for tcp/http, flows for udp."""

    __slots__ = FIELDS

    def __init__(self) -> None:
        self.connections_total = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.ended: dict[str, int] = {}  # why connections ended: client_closed, idle_timeout, ...
        self.requests: dict[int, int] = {}  # http: responses by status code
        self.request_duration = Histogram()  # http: first byte of request -> last byte of response
        self.connect_time = Histogram()  # upstream connect() duration
        # tls: handshakes completed, and those that did not (bad hello, refused, timed out, cut)
        self.tls_handshakes_ok = 0
        self.tls_handshakes_failed = 0
        # udp: connections_total counts flows; datagrams as received from / sent to clients.
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.dropped_oversize = 0  # over the listener's max_datagram_size
        self.evictions = 0  # flows ended early because max_connections (max flows) was reached
        self.udp_dropped = 0  # no usable server, per-flow queue full, or listener stopping
        self.udp_refused = 0  # ICMP port unreachable from a server (flow re-balanced)
        self.udp_errors = 0  # other socket errors reported on a flow or listening socket


class ReloadStats:
    """Configuration (re)loads of this edgeproxy, as /metrics and /status show them."""

    __slots__ = ("failure", "last_result", "last_time", "success")

    def __init__(self) -> None:
        self.success = 0
        self.failure = 0
        self.last_time = time.time()
        self.last_result = "initial"

    def count(self, ok: bool) -> None:
        if ok:
            self.success += 1
        else:
            self.failure += 1
        self.last_time = time.time()
        self.last_result = "success" if ok else "failure"
