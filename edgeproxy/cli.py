"""Command line: ``edgeproxy run | check | healthcheck | certs | demo | swarm status``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from edgeproxy import __version__, build
from edgeproxy.config import Config, ConfigError, load_config
from edgeproxy.config.values import printable

DEFAULT_CONFIG = "/etc/edgeproxy/edgeproxy.yaml"


def _load_or_report(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as e:
        _report(path, e.issues)
        return None


def _report(path: str, issues: Sequence[object]) -> None:
    for issue in issues:
        print(issue, file=sys.stderr)
    n = len(issues)
    print(f"{printable(path)}: {n} error{'s' if n != 1 else ''}; configuration NOT valid", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None or not _certificates_or_report(config):
        return 1
    print(config.summary())
    return 0


def _certificates_or_report(config: Config) -> bool:
    """The TLS certificate files read and checked as a start or reload would (missing, unreadable,
    key not matching, expired: errors; expiring within 14 days: a warning)."""
    from edgeproxy.tls.files import CertificateFilesError, read_certificates

    try:
        _, warnings = read_certificates(config)
    except CertificateFilesError as e:
        _report(config.path, e.issues)
        return False
    for w in warnings:
        print(w, file=sys.stderr)
    return True


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    from edgeproxy.runtime.main import serve

    return serve(config)


def cmd_swarm_status(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    from edgeproxy.discovery.status_report import main as swarm_status

    return swarm_status(config, args.json)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from edgeproxy.healthcheck import main as healthcheck

    return healthcheck(args.config, args.timeout)


def cmd_certs(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    from edgeproxy.acme.report import main as certs

    return certs(config, args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from edgeproxy.demo import main as demo

    return demo(args.base_port)


class _Formatter(argparse.HelpFormatter):
    """argparse's, told the terminal's width: left to find it, it imports shutil, and with it bz2
    and lzma, ~0.5 MiB of RSS kept by the running proxy (argparse makes a formatter for every
    argument added, to check it). The width as shutil.get_terminal_size finds it."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


def _columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """Its subcommands' parsers are of its class too (argparse makes them with ``type(self)``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeproxy",
        description="Edge load balancer for Docker Swarm host-mode ports that hands backends "
        "the real client address (X-Forwarded-For, PROXY protocol v1/v2).",
    )
    parser.add_argument("--version", action="version", version=f"edgeproxy {__version__} ({build.description})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run in the foreground until SIGTERM/SIGINT (SIGHUP reloads)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", help="validate a config file and exit (0 valid, 1 invalid)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("healthcheck", help="GET the admin /healthz of a running edgeproxy: exit 0 healthy, 1 not")
    p.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"its config file, for admin.bind (default {DEFAULT_CONFIG})"
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    p.set_defaults(func=cmd_healthcheck)
    p = sub.add_parser("swarm", help="swarm discovery tools")
    swarm_sub = p.add_subparsers(dest="swarm_command", required=True, metavar="SUBCOMMAND")
    p = swarm_sub.add_parser("status", help="managers, quorum, services, tasks and the servers discovery finds")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help="JSON for scripts instead of the table")
    p.set_defaults(func=cmd_swarm_status)
    p = sub.add_parser("certs", help="TLS certificates: names, issuer, expiry, source, last ACME attempt and error")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help="JSON for scripts instead of the table")
    p.set_defaults(func=cmd_certs)
    p = sub.add_parser("demo", help="run demo apps behind edgeproxy on loopback and show what they see")
    p.add_argument(
        "--base-port", type=int, default=18000, help="first port (default 18000; uses base..base+3, base+10, base+11)"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
