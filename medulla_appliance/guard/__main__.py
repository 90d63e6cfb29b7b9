"""medulla-guard: follows logs, counts authentication failures per address, bans through
an nftables set with timeouts (default: 5 failures within 10 minutes ban for 10 minutes)."""

import sys

from ..core import config as config_mod
from ..core.runtime import EXIT_CONFIG, parse_args, run_daemon
from .config import DEFAULT_CONFIG, SCHEMA, load_rules

PROG = "medulla-guard"


def build(cfg, reactor):
    from .service import build as build_service
    return build_service(cfg, reactor)


def check_rules(argv):
    """Jail and filter files are checked before start, like guard.ini: exit 78 if bad."""
    args = parse_args(PROG, __doc__, DEFAULT_CONFIG, argv)
    try:
        cfg = config_mod.load(args.config, SCHEMA)
        jails = load_rules(cfg["guard"]["rules_dir"])
    except config_mod.ConfigError as e:
        sys.stderr.write("%s: bad configuration: %s\n" % (PROG, e))
        return EXIT_CONFIG
    if args.check_config:
        names = ", ".join(j.name for j in jails) or "none"
        sys.stdout.write("%s: configuration OK (%s; jails: %s)\n" % (
            PROG, ", ".join(cfg.files), names))
        return 0
    return None


def main(argv=None):
    code = check_rules(argv)
    if code is not None:
        return code
    return run_daemon(prog=PROG, description=__doc__, default_config=DEFAULT_CONFIG,
                      schema=SCHEMA, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
