"""Side-by-side load benchmarks of edgeproxy against HAProxy: ``python -m benchmarks``.

See benchmarks/README.md. Everything runs on this machine, on loopback: an nginx backend, the two
proxies pinned to the same CPU, wrk (or the idle-connection client) beside the backend.
"""
