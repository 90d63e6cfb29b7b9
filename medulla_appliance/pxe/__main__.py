"""medulla-pxe: TFTP server, boot menus over HTTP and optional proxyDHCP of a Medulla
site."""

import sys

from ..core import config as config_mod
from ..core.runtime import EXIT_CONFIG, parse_args, run_daemon
from .config import DEFAULT_CONFIG, SCHEMA, check

PROG = "medulla-pxe"


def build(cfg, reactor):
    from .service import PXEService
    return PXEService(cfg, reactor)


def check_config(argv=None):
    """Listen addresses, the TFTP root and the server name are checked before the daemon
    starts, so a mistake there is a configuration error (exit 78, one line) like a bad
    value in the file, not a failed start."""
    args = parse_args(PROG, __doc__, DEFAULT_CONFIG, argv)
    try:
        cfg = config_mod.load(args.config, SCHEMA)
    except config_mod.ConfigError:
        return None  # run_daemon reports these the usual way
    try:
        check(cfg)
    except config_mod.ConfigError as e:
        sys.stderr.write("%s: bad configuration: %s\n" % (PROG, e))
        return EXIT_CONFIG
    return None


def main(argv=None):
    code = check_config(argv)
    if code is not None:
        return code
    return run_daemon(prog=PROG, description=__doc__,
                      default_config=DEFAULT_CONFIG, schema=SCHEMA, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
