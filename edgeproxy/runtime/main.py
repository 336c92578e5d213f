"""Process entry for ``edgeproxy run``."""

from __future__ import annotations

import sys

from edgeproxy.config import Config
from edgeproxy.log import log
from edgeproxy.net.loop import loop_name, run
from edgeproxy.runtime.proxy import Proxy
from edgeproxy.runtime.supervisor import Supervisor


def serve(config: Config) -> int:
    """Run one proxy process until stopped; 0 on a clean stop, 1 if it could not start."""

    async def main() -> int:
        # workers: 1 runs in this one process, with no supervisor (SPEC.md, issue 4).
        proxy = Proxy(config) if config.workers <= 1 else Supervisor(config)
        try:
            await proxy.run()
        except OSError as e:
            log.error("cannot start", error=str(e.strerror or e), loop=loop_name())
            return 1
        return 0

    try:
        return run(main())
    except KeyboardInterrupt:
        return 1
    finally:
        log.flush()
        sys.stderr.flush()
