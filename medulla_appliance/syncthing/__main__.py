"""medulla-syncthing: drives the local Syncthing (devices, the packages folder, completion)
and tells the master when a package is complete on a relay."""

import sys

from ..core.runtime import run_daemon
from .config import DEFAULT_CONFIG, SCHEMA


def build(cfg, reactor):
    from .service import SyncthingService
    return SyncthingService(cfg, reactor)


def main(argv=None):
    return run_daemon(prog="medulla-syncthing", description=__doc__,
                      default_config=DEFAULT_CONFIG, schema=SCHEMA, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
