"""Configuration: YAML in, frozen validated objects out (see SPEC.md "Configuration")."""

from edgeproxy.config.loader import ConfigError, ConfigIssue, load_config, parse_config
from edgeproxy.config.model import (
    AcceptProxy,
    AdminConfig,
    Backend,
    BackendTLS,
    Config,
    Forwarded,
    Health,
    Listener,
    LogConfig,
    Route,
    ServerConfig,
    SwarmConfig,
    SwarmRef,
    Timeouts,
)
from edgeproxy.config.user import User, parse_user
from edgeproxy.config.values import Address, parse_address, parse_duration, parse_network

__all__ = [
    "AcceptProxy",
    "Address",
    "AdminConfig",
    "Backend",
    "BackendTLS",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Forwarded",
    "Health",
    "Listener",
    "LogConfig",
    "Route",
    "ServerConfig",
    "SwarmConfig",
    "SwarmRef",
    "Timeouts",
    "User",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_network",
    "parse_user",
]
