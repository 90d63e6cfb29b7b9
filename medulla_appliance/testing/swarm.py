"""Many agents in one process, each with its own synthetic machine identity (hostname,
MAC, addresses) and its own state folder, each on its own real XMPP connection. Used by
the integration tests (50 agents) and the registration-storm benchmark (thousands).

Every line it prints is a JSON object: {"event": "registered", "n": ..., "t": ...}.
"""

import argparse
import json
import os
import sys
import time

from medulla_appliance.core import config as config_mod
from medulla_appliance.core.runtime import install_asyncio_reactor

PROGRESS_EVERY = 1.0


def synthetic_facts(prefix, index):
    """Facts of workstation number `index`: unique hostname and MAC, documentation IPs."""
    mac = "02:4d:%02x:%02x:%02x:%02x" % (
        (index >> 24) & 255, (index >> 16) & 255, (index >> 8) & 255, index & 255)
    return {"hostname": "%s-%05d" % (prefix, index), "macs": [mac],
            "ips": ["198.18.%d.%d" % ((index >> 8) & 255, index & 255)],
            "os": "Debian GNU/Linux 12 (bookworm)", "agent_version": "0.1.0",
            "inventory_tag": "", "services": {"ssh": True, "vnc": False, "rdp": False},
            "primary_mac": mac}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="ws")
    args = parser.parse_args(argv)
    from medulla_agent.config import SCHEMA
    cfg = config_mod.load(args.config, SCHEMA)
    from medulla_appliance.core import logs
    logs.start_logging("WARNING")
    install_asyncio_reactor()
    from twisted.internet import reactor, task

    from medulla_agent.service import AgentService
    from medulla_agent.state import AgentState
    root = cfg["agent"]["state_dir"]
    agents = []
    for i in range(args.count):
        state = AgentState(os.path.join(root, "%05d" % i))
        agents.append(AgentService(cfg, reactor, state=state,
                                   facts=lambda i=i: synthetic_facts(args.prefix, i)))
    started = time.monotonic()

    def progress():
        done = sum(a.registered for a in agents)
        connected = sum(bool(a.link and a.link.connected) for a in agents)
        sys.stdout.write(json.dumps({"event": "progress", "registered": done,
                                     "connected": connected, "count": len(agents),
                                     "t": round(time.monotonic() - started, 3)}) + "\n")
        sys.stdout.flush()

    for agent in agents:
        reactor.callWhenRunning(agent.startService)
    ticker = task.LoopingCall(progress)
    reactor.callWhenRunning(ticker.start, PROGRESS_EVERY)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
