"""Many agents in one process, each with its own synthetic machine identity (hostname,
MAC, addresses) and its own state folder, each on its own real XMPP connection. Used by
the integration tests (50 agents) and the registration-storm benchmark (thousands).

Every line it prints is a JSON object: {"event": "progress", "registered": ..., "t": ...}.
Options for benchmarks (none changes the default behaviour):

- ``--events``: one more line per agent and step, with wall-clock ``t`` (epoch seconds,
  comparable with the master's history): ``start`` (connecting), ``session`` (logged in),
  ``online`` (``--login-only``: the server echoed our initial presence), ``registered``
  (the master answered agent.register), ``reset``.
- ``--login-only``: no enrolment and no master: in-band registration of the account if it
  does not exist yet, SCRAM login, bind, initial presence. The same state folders (so the
  same accounts and passwords) as the agents that enrol later.
- ``--first N``: agents N, N+1, ... (several swarm processes share one fleet).
- ``--start-rate R``: start R agents a second instead of all at once.
- ``--reset-count K``: on SIGUSR1, reset the TCP connections (RST, no XMPP or TLS goodbye)
  of K logged-in agents, which then stay down.
- ``--no-fsync``: agents save their state without fsync. Each real agent syncs one small
  file on its own disk; thousands of them syncing in turn in one event loop measure this
  machine's disk, not the fleet.
"""

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time

from medulla_appliance.core import config as config_mod
from medulla_appliance.core.runtime import install_asyncio_reactor

PROGRESS_EVERY = 1.0
# After the RST, the agent's service is stopped once its connection is gone, before its
# reconnection delay (at least half of 1 s) runs out.
STOP_AFTER_RESET = 0.05


def synthetic_facts(prefix, index):
    """Facts of workstation number `index`: unique hostname and MAC, documentation IPs."""
    mac = "02:4d:%02x:%02x:%02x:%02x" % (
        (index >> 24) & 255, (index >> 16) & 255, (index >> 8) & 255, index & 255)
    return {"hostname": "%s-%05d" % (prefix, index), "macs": [mac],
            "ips": ["198.18.%d.%d" % ((index >> 8) & 255, index & 255)],
            "os": "Debian GNU/Linux 12 (bookworm)", "agent_version": "0.1.0",
            "inventory_tag": "", "services": {"ssh": True, "vnc": False, "rdp": False},
            "primary_mac": mac}


def emit(record):
    sys.stdout.write(json.dumps(record) + "\n")


def _login_only_agent(cfg, reactor, state, facts, on_online):
    """An XMPP link as an agent would open it (same client code), minus the enrolment."""
    from twisted.internet import endpoints
    from wokkel.subprotocols import XMPPHandler

    from medulla_agent.service import agent_jid
    from medulla_appliance.core.xmpp.auth import tls_options
    from medulla_appliance.core.xmpp.client import XMPPClientService

    conn = cfg["connection"]
    facts = dict(facts)
    jid = agent_jid(facts, state["suffix"], facts.pop("primary_mac"), conn["domain"])
    link = XMPPClientService(
        jid, state["password"], endpoints.HostnameEndpoint(reactor, conn["server"], conn["port"]),
        tls_options(conn["ca_file"], conn["domain"]), clock=reactor,
        register_wanted=lambda: not state["account_created"],
        max_delay=conn["max_reconnect_delay"])

    class InitialPresence(XMPPHandler):
        def connectionInitialized(self):
            if not state["account_created"]:
                state.update(account_created=True)
            self.xmlstream.addOnetimeObserver(
                "/presence[@from='%s']" % self.xmlstream.authenticator.jid.full(),
                lambda _: on_online())
            self.send("<presence/>")

    link.addHandler(InitialPresence())
    link.jid = jid
    link.registered = False
    return link


def _reset(link):
    """Send a TCP RST on `link`'s connection (nothing else goes out), then stop it."""
    xs = link.manager.xmlstream
    transport = xs.transport if xs is not None else None
    if transport is None or not link.connected:
        return False
    # Below the TLS layer, so that not even a TLS close_notify is queued.
    while not hasattr(transport, "socket") and hasattr(transport, "transport"):
        transport = transport.transport
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abortConnection()  # closes the socket at the next reactor turn: RST
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="ws")
    parser.add_argument("--first", type=int, default=0, help="index of the first agent")
    parser.add_argument("--events", action="store_true", help="one line per agent and step")
    parser.add_argument("--login-only", action="store_true",
                        help="log in and send presence only (no master involved)")
    parser.add_argument("--start-rate", type=float, default=0.0,
                        help="agents started per second (0: all at once)")
    parser.add_argument("--reset-count", type=int, default=0,
                        help="on SIGUSR1, reset this many agents' TCP connections")
    parser.add_argument("--no-fsync", action="store_true",
                        help="save agent state without fsync (load generation only)")
    args = parser.parse_args(argv)
    if args.no_fsync:
        os.fsync = lambda fd: None  # this process only runs synthetic agents
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
    online = set()

    def event(name, i, **extra):
        if args.events:
            emit({"event": name, "i": i, "t": time.time(), **extra})

    def went_online(i):
        online.add(i)
        event("online", i)

    for i in range(args.first, args.first + args.count):
        state = AgentState(os.path.join(root, "%05d" % i))
        facts = synthetic_facts(args.prefix, i)
        if args.login_only:
            agent = _login_only_agent(cfg, reactor, state, facts, lambda i=i: went_online(i))
        else:
            agent = AgentService(cfg, reactor, state=state, facts=lambda f=facts: f)
            if args.events:
                agent._session_changed = _tap(agent._session_changed, lambda up, i=i: (
                    event("session", i) if up else None))
                agent.enrolment.on_registered = _tap(agent.enrolment.on_registered,
                                                     lambda _data, i=i: event("registered", i))
        agent.index, agent.hostname = i, facts["hostname"]
        agents.append(agent)
    started = time.monotonic()

    def progress():
        done = sum(a.registered for a in agents)
        connected = sum(bool(a.link and a.link.connected) if not args.login_only
                        else a.connected for a in agents)
        record = {"event": "progress", "registered": done, "connected": connected,
                  "count": len(agents), "t": round(time.monotonic() - started, 3)}
        if args.login_only:
            record["online"] = len(online)
        emit(record)
        sys.stdout.flush()

    def start(agent):
        event("start", agent.index, host=agent.hostname)
        agent.startService()

    if args.start_rate > 0:
        for n, agent in enumerate(agents):
            reactor.callWhenRunning(reactor.callLater, n / args.start_rate, start, agent)
    else:
        for agent in agents:
            reactor.callWhenRunning(start, agent)

    if args.reset_count > 0:
        reset_done = set()

        def reset():
            chosen = 0
            for agent in agents:
                if chosen >= args.reset_count:
                    break
                link = agent if args.login_only else agent.link
                if agent.index in reset_done or link is None:
                    continue
                jid = link.jid.full() if args.login_only else agent.jid.full()
                t = time.time()
                if _reset(link):
                    reset_done.add(agent.index)
                    chosen += 1
                    reactor.callLater(STOP_AFTER_RESET, agent.stopService)
                    emit({"event": "reset", "i": agent.index, "jid": jid,
                          "host": agent.hostname, "t": t})
            sys.stdout.flush()

        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(reset))

    ticker = task.LoopingCall(progress)
    reactor.callWhenRunning(ticker.start, PROGRESS_EVERY)
    reactor.run()
    return 0


def _tap(method, observer):
    """`method`, which also tells `observer` its arguments first."""
    def tapped(*args):
        observer(*args)
        return method(*args)
    return tapped


if __name__ == "__main__":
    sys.exit(main())
