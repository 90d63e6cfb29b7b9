"""medulla-pxe: TFTP server (and, later, boot menus and proxyDHCP) of a Medulla site."""

import sys

from ..core.runtime import run_daemon
from .config import DEFAULT_CONFIG, SCHEMA


def build(cfg, reactor):
    from .service import PXEService
    return PXEService(cfg, reactor)


def main(argv=None):
    return run_daemon(prog="medulla-pxe", description=__doc__,
                      default_config=DEFAULT_CONFIG, schema=SCHEMA, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
