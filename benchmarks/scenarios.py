"""The scenarios of issue 6 (1-7), of TLS termination (issue 13: 8-11) and SNI passthrough (issue 13:
12), and the bar each ratio is held to: issue 15's (the compiled hot path) for 1, 2, 3 and 5, which
raised issue 6's."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """The key figure of a scenario, with the issue's first bar and goal."""

    metric: str  # "cpu_ratio" | "throughput_ratio" | "rss_mib" | "scaling" | "errors"
    first_bar: float
    goal: float
    lower_is_better: bool = True

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "n/a"

        def ok(bar: float) -> bool:
            return value <= bar if self.lower_is_better else value >= bar

        if ok(self.goal):
            return "meets goal"
        return "meets first bar" if ok(self.first_bar) else "misses first bar"


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    title: str
    mode: str  # proxy mode: http | tcp
    target: Target
    kind: str = "wrk"  # wrk | idle
    path: str = "/small"
    backend: str = "http"  # http | proxy_protocol | tls_proxy_protocol (which nginx server)
    send_proxy: bool = False
    connections: int = 50
    headers: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    reload_every: float | None = None
    idle_count: int = 10_000
    tls: str | None = None  # terminate HTTPS with this key type's certificate (benchmarks/tls_certs.py)
    # TLS through the proxy, not terminated: wrk speaks HTTPS to this server name, which an SNI
    # route sends to the backend (the listener's default backend is a dead one).
    sni: str | None = None


SCENARIOS = [
    Scenario("1", "http-keepalive", "HTTP keep-alive, small response, X-Forwarded-For", "http",
             Target("cpu_ratio", 1.3, 1.0)),
    Scenario("2", "http-close", "HTTP, new connection per request", "http", Target("cpu_ratio", 1.2, 1.0),
             headers={"Connection": "close"}),
    Scenario("3", "tcp-proxy-v2", "TCP + PROXY v2, keep-alive small requests", "tcp", Target("cpu_ratio", 1.1, 1.0),
             backend="proxy_protocol", send_proxy=True),
    Scenario("4", "tcp-bulk", "TCP bulk, 10 MiB responses", "tcp",
             Target("throughput_ratio", 0.9, 1.2, lower_is_better=False), path="/10m", connections=4),
    Scenario("5", "idle-10k", "10,000 idle keep-alive connections", "http", Target("rss_mib", 45, 31),
             kind="idle"),  # goal: HAProxy 2.6's own figure on this machine (31 MiB)
    Scenario("6", "http-2-workers", "scenario 1 with 2 workers / nbthread 2", "http",
             Target("scaling", 1.8, 1.8, lower_is_better=False), workers=2),
    Scenario("7", "http-reload", "scenario 1 with a reload every second", "http", Target("errors", 0, 0),
             reload_every=1.0),
    # TLS termination (issue 13): the same certificate in both proxies; wrk does a full handshake
    # on each new connection (it keeps no session), so 10/11 measure handshakes without resumption.
    Scenario("8", "https-keepalive-ecdsa", "HTTPS keep-alive + XFF, ECDSA P-256", "http",
             Target("cpu_ratio", 1.5, 1.0), tls="ecdsa"),
    Scenario("9", "https-keepalive-rsa", "HTTPS keep-alive + XFF, RSA 2048", "http",
             Target("cpu_ratio", 1.5, 1.0), tls="rsa"),
    Scenario("10", "https-handshake-ecdsa", "HTTPS, new TLS connection per request, ECDSA P-256", "http",
             Target("cpu_ratio", 1.2, 1.0), headers={"Connection": "close"}, tls="ecdsa"),
    Scenario("11", "https-handshake-rsa", "HTTPS, new TLS connection per request, RSA 2048", "http",
             Target("cpu_ratio", 1.2, 1.0), headers={"Connection": "close"}, tls="rsa"),
    Scenario("12", "tls-passthrough", "TLS passthrough by SNI + PROXY v2, new TLS connection per request", "tcp",
             Target("cpu_ratio", 1.2, 1.0), backend="tls_proxy_protocol", send_proxy=True, sni="localhost",
             headers={"Connection": "close"}),
]  # fmt: skip


def select(wanted: list[str] | None) -> list[Scenario]:
    """Scenarios by number or name (``1 3``, ``1,3``, ``tcp-bulk``), in their own order."""
    if not wanted:
        return list(SCENARIOS)
    keys = {w.strip() for item in wanted for w in item.split(",") if w.strip()}
    unknown = keys - {s.key for s in SCENARIOS} - {s.name for s in SCENARIOS}
    if unknown:
        names = ", ".join(f"{s.key}={s.name}" for s in SCENARIOS)
        raise ValueError(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {names}")
    return [s for s in SCENARIOS if s.key in keys or s.name in keys]
