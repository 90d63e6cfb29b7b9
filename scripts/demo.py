#!/usr/bin/env python3
"""`make demo`: the whole appliance on loopback, from nothing, in a few seconds.

Starts a real prosody (its own CA, STARTTLS required, a free port), medulla-master, and a
medulla-agent for this very machine; waits until the agent has enrolled and is online;
shows what an admin sees with medullactl; adds a sample package and deploys it to this
machine through medulla-relay, with its audit; then stops everything it started, by PID.
`make demo KEEP=1` leaves it running and prints how to use and stop it.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medulla_appliance.testing.appliance import Appliance, stop_process  # noqa: E402
from medulla_appliance.testing.pki import CertificateAuthority  # noqa: E402
from medulla_appliance.testing.xmppserver import make_server  # noqa: E402

WORK = ROOT / "demo-run"
SAMPLE_PACKAGE = ROOT / "tests" / "data" / "packages" / "native-hello"
DOMAIN = "medulla.demo"


def say(text):
    print("\n== %s" % text, flush=True)


def ctl(app, *args):
    """Run medullactl as an admin would, and show the command and its output."""
    print("$ medullactl %s" % " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "medulla_appliance.ctl", *args], env=app.ctl_env(),
                   check=True)


def stop_previous():
    pids = WORK / "pids.json"
    if pids.exists():
        stop_kept()
    shutil.rmtree(WORK, ignore_errors=True)


def stop_kept():
    """Stop what a `make demo KEEP=1` left running (its PIDs are in demo-run/pids.json)."""
    path = WORK / "pids.json"
    if not path.exists():
        print("nothing to stop: no %s" % path)
        return
    for name, pid in json.loads(path.read_text()).items():
        try:
            os.killpg(pid, signal.SIGTERM)  # each was started in its own session
            print("stopped %s (pid %d)" % (name, pid))
        except ProcessLookupError:
            pass
    path.unlink()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--stop", action="store_true", help="stop a kept demo")
    args = parser.parse_args()
    if args.stop:
        return stop_kept()
    stop_previous()
    WORK.mkdir(parents=True)
    started = time.monotonic()

    say("A CA of the installation and a real XMPP server (prosody) on 127.0.0.1")
    ca = CertificateAuthority.create(WORK / "ca")
    server = make_server("prosody", WORK / "xmpp", DOMAIN, ca)
    server.start()
    print("prosody pid %d, c2s on 127.0.0.1:%d, STARTTLS required, domain %s"
          % (server.pid, server.c2s_port, DOMAIN))
    app, agent = None, None
    try:
        say("medulla-master (registry, assessor, presence, admin API)")
        app = Appliance(WORK / "appliance", server)
        app.start_master()
        print("master pid %d, admin API on 127.0.0.1:%d, config %s"
              % (app.master.pid, app.api_port, app.config_path))

        say("medulla-agent for this machine: enrols, then stays present")
        agent = app.start_agent("this-machine")
        app.wait_for(lambda ms: any(m["online"] for m in ms), timeout=30)
        print("agent pid %d enrolled and online after %.1f s"
              % (agent.pid, time.monotonic() - started))

        say("What the admin sees")
        ctl(app, "status")
        ctl(app, "machines")
        name = app.machines()[0]["hostname"]
        ctl(app, "machine", "show", name)

        say("A package, deployed to this machine through the master host's relay")
        app.start_relay()
        ctl(app, "package", "add", str(SAMPLE_PACKAGE))
        result = app.ctl("--json", "deploy", "native-hello", name)
        dep = json.loads(result.stdout)["id"]
        print("$ medullactl deploy native-hello %s\n  -> deployment %s" % (name, dep))
        wait_deployment(app, dep)
        ctl(app, "audit", dep)
        ctl(app, "audit", dep, name)

        say("The agent stops: the master knows at once")
        stop_process(agent)
        agent = None
        app.wait_for(lambda ms: not any(m["online"] for m in ms), timeout=10)
        ctl(app, "machines")
        if args.keep:
            agent = app.start_agent("this-machine")
            app.wait_for(lambda ms: any(m["online"] for m in ms), timeout=30)
            keep(server, app, agent)
            server = app = agent = None
            return 0
    finally:
        stop_process(agent)
        if app is not None:
            stop_process(app.relay)
            app.stop_master()
        if server is not None:
            server.close()
            say("Stopped everything the demo started (prosody, master, relay, agent).")
    return 0


def wait_deployment(app, dep, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [t["state"] for t in app.api("/api/v1/deployments/%s" % dep)["targets"]]
        if all(s.startswith(("DEPLOYMENT SUCCESS", "ABORT")) for s in states):
            return
        time.sleep(0.5)
    raise RuntimeError("deployment %s not finished in %ss" % (dep, timeout))


def keep(server, app, agent):
    server.detach()  # not stopped when this script exits
    (WORK / "pids.json").write_text(json.dumps(
        {"prosody": server.pid, "medulla-master": app.master.pid, "medulla-agent": agent.pid,
         "medulla-relay": app.relay.pid}))
    say("Left running (KEEP=1)")
    print("try:   MEDULLA_API_URL=http://127.0.0.1:%d MEDULLA_API_TOKEN_FILE=%s "
          ".venv/bin/medullactl machines" % (app.api_port, app.state / "api-token"))
    print("logs:  %s/*.log" % app.workdir)
    print("stop:  make demo-stop")


if __name__ == "__main__":
    sys.exit(main())
