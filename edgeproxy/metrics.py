"""Metric families: the types every layer may build its own counters into (a leaf module:
it imports nothing of edgeproxy but the counters in stats.py).

Pull model: nothing on the data path knows about Prometheus. At scrape time a collector reads
plain counters and returns ``Family`` objects; the supervisor sums its workers' families with
``merge`` (their wire form is ``to_json``/``from_json``); ``render`` writes the Prometheus text
format (version 0.0.4). admin/metrics.py has the collectors of the data plane and the registry;
health checks and discovery collect their own counters with these types.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from edgeproxy.stats import Histogram

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
