"""The layer rules of ARCHITECTURE.md, held by walking every import of edgeproxy/ (top-level ones,
those under ``if TYPE_CHECKING:`` and those inside functions alike).

``pytest tests/unit/test_layers.py -s`` prints which layer imports which.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "edgeproxy"

# Modules any layer may import; they import only each other.
LEAF = {"version", "build", "log", "stats", "metrics", "staged"}
DOMAIN = {"admin", "discovery", "health"}
TOP = {"runtime", "cli", "demo", "main"}  # the composition root and the entry points: may import anything

# layer -> ("only", layers it may import) or ("never", layers it must not import); its own layer
# is always allowed.
RULES: dict[str, tuple[str, set[str]]] = {
    **{leaf: ("only", LEAF) for leaf in LEAF},
    "proto": ("only", set()),
    "config": ("only", set()),
    "balance": ("only", {"stats"}),
    "pools": ("only", {"balance", "config", "proto", *LEAF}),
    "net": ("never", {"runtime", "admin", "discovery", "health", "cli", "demo", "main"}),
    # certificates are built by the control plane and used by net/: neither of those comes first
    "tls": ("never", {"net", "runtime", "admin", "discovery", "health", "cli", "demo", "main"}),
    **{d: ("never", {"runtime", "cli", "demo", "main", *(DOMAIN - {d})}) for d in DOMAIN},
    # a control-plane component of the supervisor: the Engine API client (discovery.docker_api)
    # for swarm storage, the certificate checks of tls/; never the data plane nor the runtime
    "acme": ("only", {"config", "proto", "tls", "discovery", *LEAF}),
}

# Cycles that another branch removes (none left: hard-http removed net/http_relay ->
# net/http_upstream -> net/upstream_pool with the ResponseSink protocol and the idle pool handed
# in from runtime/main.py). A listed cycle that no longer exists fails the test too.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = ["edgeproxy", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "version"  # edgeproxy/__init__.py: __version__
    return "main" if parts[1] == "__main__" else parts[1]


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """Every edgeproxy module ``module`` imports, wherever the import statement is."""
    known = set(known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m == "edgeproxy" or m.startswith("edgeproxy.")}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: imports(m, p, modules) - {m} for m, p in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(edges.items()):
        src = layer(module)
        kind, listed = RULES.get(src, ("never", set()))
        for target in sorted(targets):
            dst = layer(target)
            if dst == src:
                continue
            allowed = dst in listed if kind == "only" else dst not in listed
            if dst in TOP and src not in TOP:
                allowed = False  # nothing below the composition root imports it
            if not allowed:
                out.append(f"{module} ({src}) imports {target} ({dst})")
    return out


def test_every_import_follows_the_layer_rules() -> None:
    edges = graph()
    assert len(edges) > 40 and "edgeproxy.pools.registry" in edges  # the walk found the package
    by_layer: dict[str, set[str]] = {}
    for module, targets in edges.items():
        by_layer.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    print("\nlayer imports (TYPE_CHECKING and function-level imports included):")
    for name in sorted(by_layer):
        print(f"  {name:<10} -> {', '.join(sorted(by_layer[name])) or '(nothing of edgeproxy)'}")
    assert violations(edges) == []


def test_no_import_cycles() -> None:
    found = set(cycles(graph()))
    for cycle in sorted(found, key=sorted):
        print(f"\ncycle{' (known, removed by another branch)' if cycle in KNOWN_CYCLES else ''}: {sorted(cycle)}")
    assert found - KNOWN_CYCLES == set(), "import cycles"
    assert KNOWN_CYCLES - found == set(), "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_the_walk_sees_type_checking_and_function_imports() -> None:
    """The checker itself: a TYPE_CHECKING import and one inside a function are edges, and a
    forbidden one is reported."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.py"
        path.write_text(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from edgeproxy.runtime.main import serve\n"
            "def f():\n    from ..admin import server\n"
        )
        got = imports("edgeproxy.proto.m", path, {"edgeproxy.admin.server"})
    assert got == {"edgeproxy.runtime.main", "edgeproxy.admin.server"}
    assert violations({"edgeproxy.proto.m": got}) == [
        "edgeproxy.proto.m (proto) imports edgeproxy.admin.server (admin)",
        "edgeproxy.proto.m (proto) imports edgeproxy.runtime.main (runtime)",
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
