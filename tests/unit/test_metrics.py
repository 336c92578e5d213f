"""Metric families: the text /metrics serves parses with prometheus_client; sums over workers."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from edgeproxy.metrics import Family, merge, render
from edgeproxy.stats import DEFAULT_BUCKETS, Histogram


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_counter_gauge_and_histogram_render_and_parse() -> None:
    c = Family("edgeproxy_connections_total", "counter", "Connections accepted")
    c.add(3, listener="web")
    c.add(2, listener='we"ird\\name\n')
    g = Family("edgeproxy_active_connections", "gauge", "Open now")
    g.add(1, listener="web")
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    hist = Family("edgeproxy_upstream_connect_seconds", "histogram", "Connect time")
    hist.histogram(h, listener="web")
    got = parse(render([c, g, hist]))
    assert got[("edgeproxy_connections_total", frozenset({("listener", "web")}))] == 3
    assert got[("edgeproxy_connections_total", frozenset({("listener", 'we"ird\\name\n')}))] == 2
    assert got[("edgeproxy_active_connections", frozenset({("listener", "web")}))] == 1
    buckets = {dict(lbl)["le"]: v for (n, lbl), v in got.items() if n == "edgeproxy_upstream_connect_seconds_bucket"}
    assert buckets == {"0.1": 1, "1.0": 2, "+Inf": 3}
    assert got[("edgeproxy_upstream_connect_seconds_count", frozenset({("listener", "web")}))] == 3
    assert got[("edgeproxy_upstream_connect_seconds_sum", frozenset({("listener", "web")}))] == 5.55


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_histogram_buckets_as_bisect_left(values: list[float]) -> None:
    """observe() is a loop (cheaper than bisect compiled): it must count where bisect_left
    would, bounds included (a value equal to a bound is in that bound's bucket, as le= says)."""
    values += list(DEFAULT_BUCKETS)
    h = Histogram()
    for v in values:
        h.observe(v)
    want = [0] * (len(DEFAULT_BUCKETS) + 1)
    for v in values:
        want[bisect.bisect_left(DEFAULT_BUCKETS, v)] += 1
    assert h.counts == want
    assert h.count == len(values)


def test_merge_sums_workers_and_the_wire_form_round_trips() -> None:
    def worker(n: int, active: int) -> list[Family]:
        c = Family("edgeproxy_connections_total", "counter", "c")
        c.add(n, listener="web")
        g = Family("edgeproxy_active_connections", "gauge", "g")
        g.add(active, listener="web")
        return [Family.from_json(f.to_json()) for f in (c, g)]

    total = merge(merge({}, worker(10, 1)), worker(5, 2))
    assert total["edgeproxy_connections_total"].samples == {("", (("listener", "web"),)): 15}
    assert total["edgeproxy_active_connections"].samples == {("", (("listener", "web"),)): 3}
    # A worker that exited keeps its counters in the total, not its gauges.
    exited = merge({}, worker(7, 4), counters_only=True)
    assert set(exited) == {"edgeproxy_connections_total"}
