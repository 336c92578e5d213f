"""One benchmark run: per scenario, both proxies up, rounds alternating A B A B, raw figures kept."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.backend import Nginx
from benchmarks.load import IdleClients, WrkResult, run_wrk
from benchmarks.procs import RssSampler, cpu_seconds, rss_kib
from benchmarks.proxies import PROXIES, Proxy, Setup, Skip
from benchmarks.scenarios import Scenario
from benchmarks.tls_certs import certificate_file

MIB = 1024 * 1024
IDLE_MARGIN = 100  # connections below the proxies' limit that scenario 5 stays


def max_connections(nofile: int) -> int:
    """Client connections a proxy can hold when each may also have one to the server."""
    return (nofile - 256) // 2


def idle_count(sc: Scenario, opts: Options) -> int:
    """Scenario 5's connections: 10,000, fewer with --quick or when RLIMIT_NOFILE cannot allow them."""
    return min(opts.idle_count or sc.idle_count, opts.max_conns - IDLE_MARGIN)


@dataclass(frozen=True)
class Options:
    seconds: float  # per measured run
    warmup: float
    rounds: int
    idle_count: int | None  # overrides scenario 5's 10,000 (--quick)
    max_conns: int  # what one proxy process may hold, from RLIMIT_NOFILE
    idle_hold: float
    proxy_cpus: str | None
    multi_cpus: str | None  # the proxies' CPUs in the 2-worker scenario
    load_cpus: str | None
    workdir: Path
    commands: dict[str, list[str]] = field(default_factory=dict)  # proxy name -> command (--edgeproxy)
    log: Any = print


@dataclass
class ProxyOutcome:
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def median(self) -> dict[str, float]:
        good = [r for r in self.rounds if "error" not in r]
        if not good:
            return {}
        keys = [k for k, v in good[0].items() if isinstance(v, int | float) and k not in ("round", "time")]
        return {k: statistics.median(r[k] for r in good) for k in keys}

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "rounds": self.rounds, "median": self.median()}


def run_scenario(sc: Scenario, nginx: Nginx, opts: Options) -> dict[str, ProxyOutcome]:
    port = {"proxy_protocol": nginx.pp_port, "tls_proxy_protocol": nginx.tls_pp_port}.get(sc.backend, nginx.http_port)
    count = idle_count(sc, opts)
    pem = str(certificate_file(opts.workdir, sc.tls)) if sc.tls else None
    setup = Setup(mode=sc.mode, backend_port=port, send_proxy=sc.send_proxy, workers=sc.workers,
                  max_conns=opts.max_conns, tls_pem=pem, sni=sc.sni)  # fmt: skip
    cpus = opts.multi_cpus if sc.workers > 1 else opts.proxy_cpus
    outcomes: dict[str, ProxyOutcome] = {}
    running: dict[str, Proxy] = {}

    def start(name: str) -> None:
        try:
            running[name] = PROXIES[name](setup, opts.workdir, cpus, opts.commands.get(name, []))
        except Skip as e:
            if outcomes[name].rounds:  # a restart for a fresh round: that round fails, not the scenario
                outcomes[name].rounds.append({"error": f"restart failed: {e}"})
                return
            outcomes[name] = ProxyOutcome("skipped", str(e))
            opts.log(f"  {name}: skipped: {e}")

    # Scenario 5 measures memory: each round gets fresh processes, or a round would start from
    # what the allocator kept of the previous one. The others keep both proxies up throughout.
    fresh = sc.kind == "idle"
    try:
        for name in PROXIES:
            outcomes[name] = ProxyOutcome()
            start(name)
        if sc.kind == "wrk" and opts.warmup > 0:
            for proxy in running.values():
                _wrk(sc, proxy, opts, opts.warmup)
        for rnd in range(opts.rounds):
            for name in PROXIES:
                if fresh and rnd > 0 and outcomes[name].status == "ok":
                    start(name)
                current = running.get(name)
                if current is None:
                    continue
                try:
                    fig = _measure(sc, current, opts, count)
                except (RuntimeError, OSError) as e:
                    fig = {"error": str(e)}
                fig["round"] = rnd + 1
                # How busy the machine was (others' work too): to judge a round that stands out.
                fig["loadavg_1m"] = os.getloadavg()[0]
                fig["time"] = round(time.time(), 1)
                outcomes[name].rounds.append(fig)
                opts.log(f"  round {rnd + 1} {name}: {_brief(fig)}")
                if fresh:
                    running.pop(name).stop()
        for out in outcomes.values():
            if out.status == "ok" and not out.median():
                out.status, out.reason = "failed", str(out.rounds[-1].get("error", "no result"))
    finally:
        for proxy in running.values():
            proxy.stop()
    return outcomes


def _wrk(sc: Scenario, proxy: Proxy, opts: Options, seconds: float, reload: bool = False) -> tuple[WrkResult, int]:
    """wrk against the proxy; with ``reload``, the scenario's reloads meanwhile (and their count)."""
    reloads = 0

    def do_reload() -> None:
        nonlocal reloads
        reloads += 1
        proxy.reload()

    every = (sc.reload_every, do_reload) if reload and sc.reload_every else None
    res = run_wrk(proxy.port, sc.path, connections=sc.connections, seconds=seconds, headers=sc.headers,
                  cpus=opts.load_cpus, workdir=opts.workdir, every=every,
                  https=sc.tls is not None or sc.sni is not None, host=sc.sni or "127.0.0.1")  # fmt: skip
    return res, reloads


STARVED_TRIES = 3  # runs of one round when a run neither completed nor failed a request


def _measure(sc: Scenario, proxy: Proxy, opts: Options, idle_count: int) -> dict[str, Any]:
    if sc.kind == "idle":
        return _measure_idle(proxy, opts, idle_count)
    if not proxy.proc.alive():
        raise RuntimeError(f"{proxy.name} is not running: {proxy.proc.log_tail(3)}")
    for _ in range(STARVED_TRIES):
        cpu0 = cpu_seconds(proxy.pid)
        with RssSampler(proxy.pid) as rss:
            res, reloads = _wrk(sc, proxy, opts, opts.seconds, reload=True)
        cpu = cpu_seconds(proxy.pid) - cpu0
        if res.requests or res.error_count:
            break
        # Not one request completed and none failed: every connection was still in its first
        # exchange (a TLS handshake) when the run ended. The machine gave the run no time (seen:
        # --quick's 2 s, load average 16 on 2 CPUs), which says nothing of the proxy: measure again.
        opts.log(f"  {proxy.name}: starved (nothing completed or failed, load {os.getloadavg()[0]:.1f}): again")
    if not res.requests:
        raise RuntimeError(f"no request completed; errors {res.errors}")
    return {
        "requests": res.requests,
        "seconds": round(res.seconds, 3),
        "req_per_s": round(res.requests / res.seconds, 1),
        "mib_per_s": round(res.bytes / MIB / res.seconds, 2),
        "p50_ms": res.p50_ms,
        "p90_ms": res.p90_ms,
        "p99_ms": res.p99_ms,
        "max_ms": res.max_ms,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_req": round(cpu / res.requests * 1e6, 2),
        "cpu_us_per_mib": round(cpu / (res.bytes / MIB) * 1e6, 1) if res.bytes else 0,
        "peak_rss_mib": round(rss.peak / 1024, 1),
        "errors": res.error_count,
        "error_kinds": res.errors,
        "reloads": reloads,
    }


def _measure_idle(proxy: Proxy, opts: Options, count: int) -> dict[str, Any]:
    base = rss_kib(proxy.pid)
    cpu0 = cpu_seconds(proxy.pid)
    with RssSampler(proxy.pid, interval=0.2) as rss:
        client = IdleClients(proxy.port, count, opts.idle_hold, opts.load_cpus)
        try:
            ready = client.wait_line("READY", timeout=120)
            held = rss_kib(proxy.pid)
            done = client.wait_line("DONE", timeout=opts.idle_hold + 60)
        finally:
            client.finish(timeout=30)
    cpu = cpu_seconds(proxy.pid) - cpu0
    established = int(ready["established"])
    return {
        "connections": count,
        "established": established,
        "failed": int(ready["failed"]),
        "open_seconds": ready["open_seconds"],
        "checked": int(done["checked"]),
        "checked_ok": int(done["ok"]),
        "errors": int(ready["failed"]) + int(done["checked"] - done["ok"]),
        "base_rss_mib": round(base / 1024, 1),
        "held_rss_mib": round(held / 1024, 1),
        "peak_rss_mib": round(rss.peak / 1024, 1),
        "kib_per_connection": round((held - base) / max(1, established), 2),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_conn": round(cpu / max(1, established) * 1e6, 1),
    }


def _brief(fig: dict[str, Any]) -> str:
    if "error" in fig:
        return f"error: {fig['error']}"
    if "established" in fig:
        return (f"{fig['established']} held, rss {fig['held_rss_mib']} MiB (base {fig['base_rss_mib']}), "
                f"{fig['kib_per_connection']} KiB/conn, errors {fig['errors']}")  # fmt: skip
    return (f"{fig['req_per_s']:.0f} req/s {fig['mib_per_s']:.1f} MiB/s p99 {fig['p99_ms']:.2f} ms "
            f"cpu {fig['cpu_us_per_req']:.1f} us/req rss {fig['peak_rss_mib']} MiB errors {fig['errors']}")  # fmt: skip
