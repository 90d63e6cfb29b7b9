"""medulla-relay: serves this relay's complete packages to agents over HTTP(S), with
range requests (resume), per-deployment download tokens and SHA-256 checksums."""

import sys

from ..core.runtime import run_daemon
from .config import DEFAULT_CONFIG, RELAY_SCHEMA


def build(cfg, reactor):
    from .service import RelayService
    return RelayService(cfg, reactor)


def main(argv=None):
    return run_daemon(prog="medulla-relay", description=__doc__,
                      default_config=DEFAULT_CONFIG, schema=RELAY_SCHEMA, build=build,
                      argv=argv)


if __name__ == "__main__":
    sys.exit(main())
