"""Results: the Markdown tables, the JSON with every raw figure, the PNG chart of the ratios."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.scenarios import SCENARIOS, Scenario

A, B = "edgeproxy", "haproxy"
# (label in the chart and ratio table, key in a median, key when the scenario holds idle connections)
RATIOS = [
    ("CPU/request", "cpu_us_per_req", "cpu_us_per_conn"),
    ("throughput", "req_per_s", None),
    ("p99 latency", "p99_ms", None),
    ("peak RSS", "peak_rss_mib", "held_rss_mib"),
]


def round_ratios(entry: dict[str, Any], key: str | None) -> list[float]:
    """edgeproxy/HAProxy of one figure, round by round: the rounds alternate (A B A B), so each
    pair ran under the same drift of a shared machine."""
    if key is None:
        return []
    theirs = {r["round"]: r for r in entry["proxies"][B]["rounds"] if "error" not in r}
    out = []
    for r in entry["proxies"][A]["rounds"]:
        other = theirs.get(r.get("round"))
        if "error" not in r and other is not None and r.get(key) and other.get(key):
            out.append(r[key] / other[key])
    return out


def ratios(entry: dict[str, Any]) -> dict[str, float | None]:
    """edgeproxy/HAProxy for each compared figure of one scenario: the median of the rounds' ratios
    (one noisy round cannot make or break a verdict)."""
    idle = entry["kind"] == "idle"
    out: dict[str, float | None] = {}
    for label, key, idle_key in RATIOS:
        per_round = round_ratios(entry, idle_key if idle else key)
        out[label] = round(statistics.median(per_round), 3) if per_round else None
    return out


def spreads(entry: dict[str, Any]) -> dict[str, tuple[float, float] | None]:
    """The min and max of the rounds' ratios behind each median of ``ratios``."""
    idle = entry["kind"] == "idle"
    out: dict[str, tuple[float, float] | None] = {}
    for label, key, idle_key in RATIOS:
        per_round = round_ratios(entry, idle_key if idle else key)
        out[label] = (round(min(per_round), 3), round(max(per_round), 3)) if per_round else None
    return out


def key_figure(entry: dict[str, Any], by_key: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
    """The scenario's figure that its target is about, and the goal as text."""
    sc = _scenario(entry["key"])
    t = sc.target
    a = entry["proxies"][A]
    med = a["median"]
    if t.metric == "cpu_ratio":
        return entry["ratios"]["CPU/request"], f"<= {t.goal}x"
    if t.metric == "throughput_ratio":
        return entry["ratios"]["throughput"], f">= {t.goal}x"
    if t.metric == "rss_mib":
        return med.get("held_rss_mib"), f"<= {t.goal:g} MiB"
    if t.metric == "errors":
        if a["status"] != "ok":
            return None, "0"
        return float(sum(r.get("errors", 0) for r in a["rounds"])), "0"
    # scaling: req/s with 2 workers over req/s with 1 (scenario 1 of the same run); goal: as HAProxy
    one = by_key.get("1")
    if one is None or not one["proxies"][A]["median"] or not med:
        return None, "as HAProxy"
    scale = round(med["req_per_s"] / one["proxies"][A]["median"]["req_per_s"], 2)
    hb, hb1 = entry["proxies"][B]["median"], one["proxies"][B]["median"]
    goal = round(hb["req_per_s"] / hb1["req_per_s"], 2) if hb and hb1 else None
    return scale, f">= {goal}x (HAProxy's)" if goal else "as HAProxy"


def verdict(entry: dict[str, Any], value: float | None, goal_text: str) -> str:
    sc = _scenario(entry["key"])
    if value is None:
        return "n/a"
    if sc.target.metric == "scaling" and "HAProxy's" in goal_text:
        goal = float(goal_text.split()[1].rstrip("x"))
        if value >= goal and value >= sc.target.first_bar:
            return "meets goal"
        return "meets first bar" if value >= sc.target.first_bar else "misses first bar"
    return sc.target.verdict(value)


def _scenario(key: str) -> Scenario:
    return next(s for s in SCENARIOS if s.key == key)


def finish(entries: list[dict[str, Any]]) -> None:
    """Add ratios, key figure and verdict to each scenario entry (in place)."""
    by_key = {e["key"]: e for e in entries}
    for e in entries:
        both = all(e["proxies"][p]["status"] == "ok" for p in (A, B))
        e["ratios"] = ratios(e) if both else {label: None for label, _, _ in RATIOS}
        e["spreads"] = spreads(e) if both else {label: None for label, _, _ in RATIOS}
        value, goal_text = key_figure(e, by_key)
        t = _scenario(e["key"]).target
        e["target"] = {"metric": t.metric, "value": value, "first_bar": t.first_bar, "goal": goal_text,
                       "verdict": verdict(e, value, goal_text)}  # fmt: skip


def _cell(v: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ratio_cell(e: dict[str, Any], label: str) -> str:
    """The median ratio and, over more than one round, its min-max across rounds."""
    v, spread = e["ratios"][label], e.get("spreads", {}).get(label)
    if v is None or spread is None or spread[0] == spread[1]:
        return _cell(v)
    return f"{v:.2f} ({spread[0]:.2f}-{spread[1]:.2f})"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    opts = result["options"]
    lines = [
        f"edgeproxy {m['edgeproxy']} ({m['git']['commit'][:10]}) vs {m['haproxy']}, "
        f"{result['date']} on {m['host']}: {m['cpu_model']}, {m['cpus_online']} CPUs, {m['kernel']}; "
        f"{opts['rounds']} round(s) of {opts['seconds']:g} s, medians; proxies on CPU {opts['proxy_cpus']}, "
        f"wrk and nginx on CPU {opts['load_cpus']}.",
        "",
        "| # | scenario | proxy | req/s | MiB/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in result["scenarios"]:
        for name in (A, B):
            p = e["proxies"][name]
            head = f"| {e['key']} | {e['name']} | {name} |"
            if p["status"] != "ok":
                lines.append(f"{head} {p['status']}: {p['reason']} | | | | | | |")
                continue
            med = p["median"]
            errors = int(sum(r.get("errors", 0) for r in p["rounds"]))
            if e["kind"] == "idle":
                lines.append(
                    f"{head} {int(med['established'])} held | — | — | — | {med['cpu_us_per_conn']:.1f} /conn "
                    f"| {med['held_rss_mib']:.1f} (idle {med['base_rss_mib']:.1f}) | {errors} |"
                )
            else:
                lines.append(
                    f"{head} {med['req_per_s']:.0f} | {med['mib_per_s']:.1f} | {med['p50_ms']:.2f} | "
                    f"{med['p99_ms']:.2f} | {med['cpu_us_per_req']:.1f} | {med['peak_rss_mib']:.1f} | {errors} |"
                )
    lines += [
        "",
        "Ratios edgeproxy / HAProxy, the median of the rounds' ratios (min-max across rounds in brackets; "
        "CPU, latency, RSS: lower is better; throughput: higher is better):",
        "",
        "| # | scenario | CPU/request | throughput | p99 | peak RSS | key figure | first bar | goal | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for e in result["scenarios"]:
        t = e["target"]
        first = _first_bar_text(e["key"])
        lines.append(
            f"| {e['key']} | {e['title']} | {_ratio_cell(e, 'CPU/request')} | {_ratio_cell(e, 'throughput')} | "
            f"{_ratio_cell(e, 'p99 latency')} | {_ratio_cell(e, 'peak RSS')} | {_cell(t['value'], '{:g}')} | {first} | "
            f"{t['goal']} | {t['verdict']} |"
        )
    shared = opts["load_cpus"] is not None and opts["load_cpus"] in str(opts["two_worker_cpus"]).split(",")
    if shared and any(e["workers"] > 1 for e in result["scenarios"]):
        lines += [
            "",
            f"Scenario 6 runs the proxies on CPUs {opts['two_worker_cpus']}, which wrk and nginx also use: "
            "its scaling figure says how a proxy shares a busy machine, not how it scales on idle cores.",
        ]
    return "\n".join(lines) + "\n"


def _first_bar_text(key: str) -> str:
    t = _scenario(key).target
    if t.metric == "errors":
        return "0"
    unit = {"cpu_ratio": "x", "throughput_ratio": "x", "rss_mib": " MiB", "scaling": "x"}[t.metric]
    return f"{'<=' if t.lower_is_better else '>='} {t.first_bar:g}{unit}"


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


def chart(result: dict[str, Any], path: Path) -> str | None:
    """The ratios as grouped bars per scenario; None, or why no chart was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    entries = result["scenarios"]
    labels = [f"{e['key']} {e['name']}" for e in entries]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(entries) + 2), 4.8), dpi=100)
    width = 0.8 / len(RATIOS)
    for i, (label, _, _) in enumerate(RATIOS):
        xs = [j + (i - (len(RATIOS) - 1) / 2) * width for j in range(len(entries))]
        ys = [e["ratios"][label] or 0.0 for e in entries]
        ax.bar(xs, ys, width, label=label)
    for j, e in enumerate(entries):
        if all(v is None for v in e["ratios"].values()):
            ax.text(j, 0.05, "skipped", ha="center", va="bottom", rotation=90, fontsize=8, color="gray")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(entries)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("edgeproxy / HAProxy")
    m = result["machine"]
    ax.set_title(f"edgeproxy vs HAProxy, {result['date']}, {m['host']} ({m['cpus_online']} CPUs)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
