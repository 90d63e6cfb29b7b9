"""medulla-agent: keeps this workstation connected to its Medulla server, present and
enrolled."""

import sys

from medulla_appliance.core.runtime import run_daemon

from .config import DEFAULT_CONFIG, SCHEMA


def build(cfg, reactor):
    from .service import AgentService
    return AgentService(cfg, reactor)


def main(argv=None):
    return run_daemon(prog="medulla-agent", description=__doc__,
                      default_config=DEFAULT_CONFIG, schema=SCHEMA, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
