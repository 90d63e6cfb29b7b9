"""medulla-master: registry, assessor, presence and admin API of a Medulla fleet."""

import sys

from ..core.runtime import run_daemon
from .config import DEFAULT_CONFIG, SCHEMA


def build(cfg, reactor):
    from .service import MasterService
    return MasterService(cfg, reactor)


def main(argv=None):
    return run_daemon(prog="medulla-master", description=__doc__,
                      default_config=DEFAULT_CONFIG, schema=SCHEMA, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
