#!/usr/bin/env python3
"""`make demo`: the whole appliance on loopback, from nothing, in a few seconds.

Starts a real prosody (its own CA, STARTTLS required, a free port), medulla-master, and a
medulla-agent for this very machine; waits until the agent has enrolled and is online;
shows what an admin sees with medullactl; puts that machine in a saved group and deploys a
sample package to the group through medulla-relay, with its audit; starts medulla-pxe and
shows the boot menu an unknown PXE machine gets, its registration, and the machine listed
as not imaged yet; starts medulla-guard (dry-run backend), writes five failed SSH logins
to the log it follows and shows the ban, locally and in the master's fleet view; stops
the agent; then stops everything it started, by PID. Everything listens on 127.0.0.1.

`make demo KEEP=1` (`--keep`) leaves it running and prints how to use it; `make demo-stop`
(`--stop`) stops it. What runs is written, as it starts, to `pids.json` in the demo's
folder, so a demo killed half-way is stopped by the next one or by `--stop`.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medulla_appliance.guard import control as guard_control  # noqa: E402
from medulla_appliance.testing.appliance import Appliance, stop_process  # noqa: E402
from medulla_appliance.testing.pki import CertificateAuthority  # noqa: E402
from medulla_appliance.testing.ports import free_tcp_port, free_udp_port  # noqa: E402
from medulla_appliance.testing.processes import read_stat  # noqa: E402
from medulla_appliance.testing.xmppserver import make_server  # noqa: E402

WORK = ROOT / "demo-run"
SAMPLE_PACKAGE = ROOT / "tests" / "data" / "packages" / "native-hello"
DOMAIN = "medulla.demo"
PXE_MAC = "52:54:00:de:00:07"  # a PXE machine the master has never seen
PXE_UUID = "4c4c4544-0044-3010-8044-b7c04f445031"
IPXE_AGENT = "iPXE/1.21.1+ (g4bd0)"  # what iPXE sends as User-Agent
ATTACKER = "203.0.113.7"  # a documentation address (RFC 5737)
STATE_FILE = "pids.json"


def say(text):
    print("\n== %s" % text, flush=True)


def shown(argv, *, display=None, env=None, head=None):
    """Run a command as an admin would type it: print `$ command` and its output (only its
    first `head` lines when given). Returns the output; a failure stops the demo."""
    print("$ %s" % (display or shlex.join(argv)), flush=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    print("\n".join(lines[:head] + (["  ... (%d more lines)" % (len(lines) - head)]
                                    if head and len(lines) > head else [])), flush=True)
    if done.returncode != 0:
        raise RuntimeError("%s exited with %d: %s" % (argv[0], done.returncode, done.stderr))
    return done.stdout


def ctl(app, *args):
    """medullactl against the demo's master, shown."""
    return shown([sys.executable, "-m", "medulla_appliance.ctl", *args], env=app.ctl_env(),
                 display=shlex.join(["medullactl", *args]))


def wait_until(what, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError("%s: not within %ss" % (what, timeout))


class Demo:
    """The steps, and what they started: each daemon by name with its PID and how to stop
    it. `pids.json` says the same at every moment (for `--stop` and the next demo)."""

    def __init__(self, work):
        self.work = work
        self.running = {}  # name -> (pid, stop function)
        self.stopped = []  # "name pid", in the order they were stopped
        self.folders = []  # kept outside `work` (prosody's, when its user cannot reach it)
        self.server = self.app = None
        self.agent_name = None  # the agent's machine, as the master names it
        self.tftp_port = self.http_port = None  # medulla-pxe's
        self.kept = False

    def started(self, name, pid, stop):
        self.running[name] = (pid, stop)
        self.save()

    def stop_one(self, name):
        pid, stop = self.running.pop(name)
        stop()
        self.stopped.append("%s %d" % (name, pid))
        self.save()

    def save(self):
        write_state(self.work, {n: pid for n, (pid, _) in self.running.items()},
                    self.folders)

    def run(self, keep):
        self.start_xmpp_server()
        self.start_master()
        self.start_agent()
        self.admin_view()
        self.deploy_to_group()
        self.pxe_boot()
        self.guard_ban()
        self.agent_stops()
        if keep:
            self.keep()

    def start_xmpp_server(self):
        say("A CA of the installation and a real XMPP server (prosody) on 127.0.0.1")
        ca = CertificateAuthority.create(self.work / "ca")
        self.server = make_server("prosody", self.work / "xmpp", DOMAIN, ca)
        self.server.start()
        if self.server.root != self.server.workdir:
            self.folders.append(str(self.server.root))
        self.started("prosody", self.server.pid, self.server.close)
        print("prosody pid %d, c2s on 127.0.0.1:%d, STARTTLS required, domain %s"
              % (self.server.pid, self.server.c2s_port, DOMAIN))

    def start_master(self):
        say("medulla-master (registry, assessor, presence, deployments, admin API)")
        self.app = Appliance(self.work / "appliance", self.server)
        self.app.start_master()
        self.started("medulla-master", self.app.master.pid, self.app.stop_master)
        print("medulla-master pid %d, admin API on 127.0.0.1:%d, config %s"
              % (self.app.master.pid, self.app.api_port, self.app.config_path))

    def start_agent(self, again=False):
        if not again:
            say("medulla-agent for this machine: enrols, then stays present")
        began = time.monotonic()
        agent = self.app.start_agent("this-machine")
        self.started("medulla-agent", agent.pid, lambda: stop_process(agent))
        self.app.wait_for(lambda ms: any(m["online"] for m in ms), timeout=30)
        print("medulla-agent pid %d enrolled and online after %.1f s"
              % (agent.pid, time.monotonic() - began))

    def admin_view(self):
        say("What the admin sees")
        ctl(self.app, "status")
        ctl(self.app, "machines")
        self.agent_name = next(m["hostname"] for m in self.app.machines() if m["online"])
        ctl(self.app, "machine", "show", self.agent_name)

    def deploy_to_group(self):
        say("A package, deployed to a saved group through the master host's relay")
        relay = self.app.start_relay()
        self.started("medulla-relay", relay.pid, lambda: stop_process(relay))
        print("medulla-relay pid %d, packages over HTTP on 127.0.0.1:%d"
              % (relay.pid, self.app.relay_port))
        ctl(self.app, "package", "add", str(SAMPLE_PACKAGE))
        ctl(self.app, "group", "create", "demo", self.agent_name)
        created = ctl(self.app, "deploy", "native-hello", "group:demo")
        dep = re.search(r"deployment (\S+) created", created).group(1)
        wait_until("deployment %s finished" % dep, lambda: finished(self.app, dep), 60)
        ctl(self.app, "audit", dep)
        ctl(self.app, "audit", dep, self.agent_name)

    def pxe_boot(self):
        say("medulla-pxe: an unknown machine boots from the network and registers")
        tftp_root = self.work / "tftpboot"
        tftp_root.mkdir()
        self.tftp_port, self.http_port = free_udp_port(), free_tcp_port()
        pxe = self.app.start_pxe(tftp_root, tftp_port=self.tftp_port,
                                 http_port=self.http_port)
        self.started("medulla-pxe", pxe.pid, lambda: stop_process(pxe))
        print("medulla-pxe pid %d, TFTP on 127.0.0.1:%d (UDP), boot menus over HTTP on "
              "127.0.0.1:%d, linked to the master as master@%s/pxe"
              % (pxe.pid, self.tftp_port, self.http_port, DOMAIN))
        menu = "http://127.0.0.1:%d/medulla/bootmenu?mac=%s&uuid=%s&srv=127.0.0.1" % (
            self.http_port, PXE_MAC, PXE_UUID)
        wait_until("medulla-pxe's registration menu",
                   lambda: "(registration)" in menu_heading(menu), 30)
        print("What iPXE fetches first over TFTP, then the menu it chains to:")
        shown(["curl", "-sf", "tftp://127.0.0.1:%d/autoexec.ipxe" % self.tftp_port])
        script = shown(["curl", "-sf", "-A", IPXE_AGENT, menu], head=14)
        register = next(line.split()[1] for line in script.splitlines()
                        if line.startswith("chain /medulla/register?"))
        # iPXE fills ${hostname} from DHCP; with no host name there, the master names it.
        print("Nobody at the keyboard: after 10 s iPXE takes item i1 (no DHCP host name):")
        shown(["curl", "-sf", "-A", IPXE_AGENT, "http://127.0.0.1:%d%s" % (
            self.http_port, register.replace("${hostname:uristring}", ""))], head=2)
        ctl(self.app, "machines")

    def guard_ban(self):
        say("medulla-guard: five failed SSH logins from one address, then a ban")
        auth_log = self.work / "auth.log"
        auth_log.write_text("")
        guard = self.app.start_guard(auth_log)
        self.started("medulla-guard", guard.pid, lambda: stop_process(guard))
        print("medulla-guard pid %d, dry-run backend (bans are listed, not applied), "
              "following %s, linked to the master as master@%s/guard"
              % (guard.pid, auth_log, DOMAIN))
        print("sshd (OpenSSH 9.2) writes to %s:" % auth_log.name)
        with open(auth_log, "a") as log:
            for line in failed_logins(ATTACKER):
                log.write(line + "\n")
                print("  " + line)
        wait_until("the ban at medulla-guard", lambda: ATTACKER in self.local_bans(), 15)
        ctl(self.app, "guard", "--socket", str(self.app.guard_socket), "bans")
        wait_until("the ban in the fleet view", lambda: ATTACKER in json.dumps(
            self.app.api("/api/v1/bans")), 15)
        ctl(self.app, "guard", "fleet")

    def local_bans(self):
        bans = guard_control.bans(socket_path=str(self.app.guard_socket))
        return {ban["address"] for ban in bans}

    def agent_stops(self):
        say("The agent stops: the master knows at once")
        self.stop_one("medulla-agent")
        self.app.wait_for(lambda ms: not any(m["online"] for m in ms), timeout=10)
        ctl(self.app, "machines")

    def keep(self):
        self.start_agent(again=True)
        self.server.detach()  # not stopped when this script exits
        self.kept = True
        say("Left running (KEEP=1): %s" % ", ".join(
            "%s %d" % (name, pid) for name, (pid, _) in self.running.items()))
        print("try:   export MEDULLA_API_URL=http://127.0.0.1:%d MEDULLA_API_TOKEN_FILE=%s"
              % (self.app.api_port, self.app.state / "api-token"))
        print("       .venv/bin/medullactl machines (or: audit, group list, guard fleet, "
              "pxe menu list)")
        print("boot:  curl -A iPXE 'http://127.0.0.1:%d/medulla/bootmenu?mac=52:54:00:12:34:"
              "56&uuid=&srv=127.0.0.1'" % self.http_port)
        print("       curl tftp://127.0.0.1:%d/autoexec.ipxe" % self.tftp_port)
        print("guard: for i in 1 2 3 4 5; do echo 'Failed password for root from 198.51.100.9 "
              "port 22 ssh2' >> %s; done" % (self.work / "auth.log"))
        print("       .venv/bin/medullactl guard --socket %s bans; .venv/bin/medullactl "
              "guard fleet" % self.app.guard_socket)
        print("logs:  %s/*.log" % self.app.workdir)
        print("stop:  %s" % ("make demo-stop" if self.work == WORK else
                             "%s --workdir %s --stop" % (shlex.join(sys.argv[:1]),
                                                        self.work)))

    def stop(self):
        """Stop what runs, last started first, each by PID (unless kept)."""
        if self.kept:
            return
        for name in reversed(list(self.running)):
            self.stop_one(name)
        (self.work / STATE_FILE).unlink(missing_ok=True)
        if self.stopped:
            say("Stopped everything the demo started, by PID: %s" % ", ".join(self.stopped))


def finished(app, dep):
    states = [t["state"] for t in app.api("/api/v1/deployments/%s" % dep)["targets"]]
    return all(s.startswith(("DEPLOYMENT SUCCESS", "ABORT")) for s in states)


def menu_heading(url):
    """The menu's comment line (which menu, for whom, why), or "" while medulla-pxe is
    not serving yet."""
    request = urllib.request.Request(url, headers={"User-Agent": IPXE_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return ""
    return lines[1] if len(lines) > 1 else ""


def failed_logins(address):
    """Five failures as OpenSSH 9.2 logs them to a syslog file (Debian 12's RFC 3339
    dates): wrong passwords for root, three on one connection, two on the next."""
    now = time.time()
    lines = []
    for i, (pid, port) in enumerate([(4100, 50022)] * 3 + [(4107, 50036)] * 2):
        date = datetime.fromtimestamp(now - 5 + i, timezone.utc).isoformat(
            timespec="microseconds")
        lines.append("%s demo sshd[%d]: Failed password for root from %s port %d ssh2"
                     % (date, pid, address, port))
    return lines


# -- what runs, for --stop and the next demo -----------------------------------------------

def write_state(work, pids, folders):
    """Record each PID with its start time: `--stop` never signals a PID reused since."""
    processes = {name: {"pid": pid, "start": (read_stat(pid) or (0, 0, None))[2]}
                 for name, pid in pids.items()}
    path = work / STATE_FILE
    path.with_suffix(".tmp").write_text(json.dumps(
        {"processes": processes, "folders": folders}, indent=1))
    path.with_suffix(".tmp").replace(path)


def ours(entry):
    stat = read_stat(entry["pid"])
    return stat is not None and stat[0] != "Z" and stat[2] == entry["start"]


def stop_kept(work):
    """Stop what a `make demo KEEP=1` (or a demo killed half-way) left running in `work`."""
    path = work / STATE_FILE
    if not path.exists():
        print("nothing to stop: no %s" % path)
        return 0
    state = json.loads(path.read_text())
    processes = {}
    for name, entry in state["processes"].items():
        if ours(entry):
            processes[name] = entry
            os.killpg(entry["pid"], signal.SIGTERM)  # each was started in its own session
        else:
            print("%s (pid %d) was not running any more" % (name, entry["pid"]))
    deadline = time.monotonic() + 20
    while any(ours(e) for e in processes.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name, entry in processes.items():
        if ours(entry):
            os.killpg(entry["pid"], signal.SIGKILL)
        print("stopped %s (pid %d)" % (name, entry["pid"]))
    for folder in state["folders"]:
        shutil.rmtree(folder, ignore_errors=True)
    path.unlink()
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--stop", action="store_true", help="stop a kept demo")
    parser.add_argument("--workdir", type=Path, default=WORK,
                        help="the demo's folder, emptied first (default %(default)s)")
    args = parser.parse_args()
    work = args.workdir.absolute()
    if args.stop:
        return stop_kept(work)
    if (work / STATE_FILE).exists():
        stop_kept(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    demo = Demo(work)
    try:
        demo.run(args.keep)
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
