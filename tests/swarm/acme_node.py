"""One edgeproxy's ACME side in a process of its own, for the tests that kill it mid-order:

    python -m tests.swarm.acme_node DOCKER_URL DIRECTORY CA_FILE KEY_FILE INSTANCE LEASE PUBLISH_WAIT NAME...

Its manager orders NAME... with the swarm storage and answers nothing itself (no responder).
"""

from __future__ import annotations

import asyncio
import sys

from edgeproxy.acme.board import ChallengeBoard
from edgeproxy.acme.client import AcmeClient
from edgeproxy.acme.manager import AcmeManager, Settings
from edgeproxy.acme.sealed import Sealer
from edgeproxy.acme.swarm_api import SwarmConfigs
from edgeproxy.acme.swarm_storage import SwarmStorage
from edgeproxy.discovery.docker_api import Endpoint


async def main(url: str, directory: str, ca: str, key: str, instance: str, lease: str, wait: str, *names: str) -> None:
    storage = SwarmStorage(SwarmConfigs([Endpoint.parse(url)]), directory, Sealer.from_file(key), instance)
    settings = Settings(
        email="ops@example.com", lock_lease=float(lease), publish_wait=float(wait), refresh=1.0, instance=instance
    )
    manager = AcmeManager(AcmeClient(directory, ca_file=ca, timeout=5), storage, ChallengeBoard(), settings)
    manager.want([[n] for n in names])
    await manager.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
