"""Building the ACME side from the config: what the composition root (runtime) calls.

board = ChallengeBoard()
manager = build_manager(config, board, on_certificate=..., prefer=...)   # None: no ACME names
await manager.start()            # at start; manager.want(acme_name_sets(new_config)) on reload
...
await manager.close()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from edgeproxy.acme.board import ChallengeBoard, ChallengeType
from edgeproxy.acme.client import AcmeClient
from edgeproxy.acme.dir_storage import DirStorage
from edgeproxy.acme.manager import AcmeManager, Settings, instance_name
from edgeproxy.acme.sealed import Sealer
from edgeproxy.acme.storage import Storage
from edgeproxy.acme.swarm_api import SwarmConfigs
from edgeproxy.acme.swarm_storage import SwarmStorage
from edgeproxy.config.model import AcmeConfig, Config, SwarmConfig
from edgeproxy.discovery.docker_api import Endpoint
from edgeproxy.tls.certificates import Certificate

SWARM_PUBLISH_WAIT = 2.0
"""Seconds between publishing a challenge in the swarm and asking the CA to validate it: the other
edge nodes load it on the configs' create event, well within this on a healthy swarm."""


def acme_name_sets(config: Config, labelled: Iterable[str] = ()) -> list[list[str]]:
    """One certificate per name (as Caddy does): a name that fails does not hold back the others,
    and a name added by a label (``labelled``: services with ``edgeproxy.tls=true``) gets its own
    certificate."""
    return [[name] for name in dict.fromkeys((*config.acme_names(), *labelled))]


def build_storage(acme: AcmeConfig, swarm: SwarmConfig | None, instance: str) -> Storage:
    """``SealError`` when the swarm storage's encryption key cannot be read or is too short."""
    if acme.in_swarm:
        if swarm is None or acme.encryption_key is None:  # the loader refuses such a config
            raise ValueError("acme storage swarm needs a swarm: section and an encryption_key")
        sealer = Sealer.from_file(acme.encryption_key)
        endpoints = [Endpoint.parse(url, swarm.tls) for url in swarm.managers]
        return SwarmStorage(SwarmConfigs(endpoints, swarm.timeout), acme.directory, sealer, instance)
    return DirStorage(acme.storage, acme.directory)


def build_manager(
    config: Config,
    board: ChallengeBoard,
    *,
    on_certificate: Callable[[str, Certificate], None] | None = None,
    on_board: Callable[[], Awaitable[None]] | None = None,
    prefer: Sequence[ChallengeType] = ("http-01", "tls-alpn-01"),
) -> AcmeManager | None:
    acme = config.acme
    if acme is None:
        return None
    instance = instance_name()
    settings = Settings(
        email=acme.email,
        renew_before=acme.renew_before,
        prefer=tuple(prefer),
        publish_wait=SWARM_PUBLISH_WAIT if acme.in_swarm else 0.0,
        instance=instance,
    )
    storage = build_storage(acme, config.swarm, instance)
    manager = AcmeManager(
        AcmeClient(acme.directory, ca_file=acme.ca),
        storage,
        board,
        settings,
        on_certificate=on_certificate,
        on_board=on_board,
    )
    manager.want(acme_name_sets(config))
    return manager
