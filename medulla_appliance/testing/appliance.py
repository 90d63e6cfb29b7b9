"""A whole appliance in a folder, for tests, the demo and benchmarks: the master's and
agents' configuration, keys and accounts against a running XMPP server, and the master
and agents run as real processes (stopped by PID)."""

import json
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from medulla_appliance.core import keys
from medulla_appliance.guard import control
from medulla_appliance.testing.ports import free_tcp_port

MASTER_MODULE = "medulla_appliance.master"
AGENT_MODULE = "medulla_agent"
SWARM_MODULE = "medulla_appliance.testing.swarm"
RELAY_MODULE = "medulla_appliance.relay"
CONNECTION_KEYS = ("max_reconnect_delay", "keepalive_interval", "keepalive_timeout")
ETC = Path(__file__).resolve().parents[2] / "etc"  # the shipped guard.d filters


def _write_secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _enrolment_key():
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


class Appliance:
    """A master configured in `workdir` for `server` (a testing.xmppserver instance)."""

    def __init__(self, workdir, server, *, presence=None, registry=None, log_level="INFO"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = server
        self.domain = server.domain
        self.api_port = free_tcp_port()
        self.relay_port = free_tcp_port()
        self.packages_root = self.workdir / "packages"
        self.packages_root.mkdir(exist_ok=True)
        self.state = self.workdir / "master-state"
        self.state.mkdir(mode=0o700, exist_ok=True)
        self.enrolment_key = _enrolment_key()
        self.master_password = secrets.token_urlsafe(18)
        _write_secret(self.workdir / "enrolment.key", self.enrolment_key)
        _write_secret(self.workdir / "master-xmpp.password", self.master_password)
        self.master_key = keys.load_or_create_private_key(self.state / "master.key")
        self.master_public_key = keys.public_key_text(self.master_key)
        self.config_path = self.workdir / "master.ini"
        sections = {
            "global": {"log_level": log_level},
            "xmpp": {"jid": "master@%s/master" % self.domain,
                     "password_file": self.workdir / "master-xmpp.password",
                     "server": "127.0.0.1", "port": server.c2s_port,
                     "ca_file": server.ca.cert_path},
            "keys": {"private_key": self.state / "master.key",
                     "enrolment_key_file": self.workdir / "enrolment.key"},
            "store": {"url": "sqlite:%s" % (self.state / "master.sqlite")},
            "api": {"listen": "tcp:%d:interface=127.0.0.1" % self.api_port,
                    "token_file": self.state / "api-token"},
            "presence": presence or {},
            "deploy": {"packages_root": self.packages_root, "pass_interval": "0.5s",
                       "relay_urls": "master http://127.0.0.1:%d" % self.relay_port},
            "registry": registry or {},
        }
        self.config_path.write_text(render_ini(sections))
        server.register("master", self.master_password)
        self.master = self.relay = None
        self.master_log = self.workdir / "master.log"

    # -- master --------------------------------------------------------------------------

    def start_master(self, timeout=30):
        """Start medulla-master as a process; returns once its API answers."""
        log = open(self.master_log, "ab")
        self.master = subprocess.Popen(
            [sys.executable, "-m", MASTER_MODULE, "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master.poll() is not None:
                raise RuntimeError("medulla-master exited with %s:\n%s"
                                   % (self.master.returncode, self.master_log.read_text()[-3000:]))
            try:
                self.api("/api/v1/status")
                return self.master
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("medulla-master API not up after %ss" % timeout)

    def stop_master(self, sig=signal.SIGTERM, timeout=20):
        stop_process(self.master, sig, timeout)
        self.master = None

    @property
    def token(self):
        return (self.state / "api-token").read_text().strip()

    def api(self, path):
        request = urllib.request.Request(
            "http://127.0.0.1:%d%s" % (self.api_port, path),
            headers={"Authorization": "Bearer " + self.token})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def machines(self):
        return self.api("/api/v1/machines")["machines"]

    def ctl_env(self):
        """Environment for running medullactl against this master."""
        return dict(os.environ, MEDULLA_API_URL="http://127.0.0.1:%d" % self.api_port,
                    MEDULLA_API_TOKEN_FILE=str(self.state / "api-token"))

    # -- relay ---------------------------------------------------------------------------

    def start_relay(self, timeout=30):
        """medulla-relay serving this master's package store (the master host's relay)."""
        config = self.workdir / "relay.ini"
        config.write_text(render_ini({
            "http": {"listen": "tcp:%d:interface=127.0.0.1" % self.relay_port},
            "packages": {"root": self.packages_root},
            "keys": {"master_public_key": self.master_public_key}}))
        self.relay = self._spawn("relay", [RELAY_MODULE], config)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.relay.poll() is not None:
                raise RuntimeError("medulla-relay exited: %s" % (
                    self.workdir / "relay.log").read_text()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.relay_port), 1).close()
                return self.relay
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("medulla-relay not listening after %ss" % timeout)

    def start_pxe(self, tftp_root, *, tftp_port, http_port, log_level="INFO"):
        """medulla-pxe of the master host: TFTP and boot menus on 127.0.0.1, logged in as
        the master's own account (resource ``pxe``) and signing with the master's key."""
        config = self.workdir / "pxe.ini"
        config.write_text(render_ini({
            "global": {"log_level": log_level},
            "tftp": {"listen": "udp:%d:interface=127.0.0.1" % tftp_port, "root": tftp_root,
                     "menu_url": "http://{server}:%d/medulla/bootmenu" % http_port},
            "http": {"listen": "tcp:%d:interface=127.0.0.1" % http_port},
            **self.pxe_link_sections()}))
        return self._spawn("pxe", ["medulla_appliance.pxe"], config)

    def pxe_link_sections(self, server="127.0.0.1"):
        """medulla-pxe's ``[xmpp]`` and ``[keys]``: the master's own account (resource
        ``pxe``) on the XMPP server at ``server``, signing with the master's key."""
        return self.master_link_sections("pxe", server)

    def master_link_sections(self, resource, server="127.0.0.1"):
        """``[xmpp]`` and ``[keys]`` of a daemon of the master host (medulla-pxe,
        medulla-guard): the master's own account with ``resource``, the master's key."""
        return {"xmpp": {"jid": "master@%s/%s" % (self.domain, resource),
                         "password_file": self.workdir / "master-xmpp.password",
                         "server": server, "port": self.server.c2s_port,
                         "ca_file": self.server.ca.cert_path,
                         "master_jid": "master@%s/master" % self.domain},
                "keys": {"private_key": self.state / "master.key"}}

    def start_guard(self, log_file, *, timeout=30):
        """medulla-guard of the master host: the dry-run backend (bans are only listed),
        one jail ``sshd`` following ``log_file`` with the shipped OpenSSH filter and the
        seeds' rule (5 failures in 10 minutes ban for 10 minutes), its control socket at
        ``self.guard_socket``, and bans reported to the master as ``master@DOMAIN/guard``.
        Returns once the control socket answers."""
        rules = self.workdir / "guard.d"
        (rules / "jails").mkdir(parents=True, exist_ok=True)
        (rules / "filters").mkdir(exist_ok=True)
        (rules / "jails" / "sshd.ini").write_text(render_ini(
            {"jail": {"sources": "file:%s" % log_file}}))
        (rules / "filters" / "sshd.ini").write_bytes((ETC / "guard.d" / "filters" /
                                                      "sshd.ini").read_bytes())
        config = self.workdir / "guard.ini"
        config.write_text(render_ini({
            "guard": {"backend": "dryrun", "rules_dir": rules,
                      "state_dir": self.workdir / "guard-state",
                      "control_socket": self.guard_socket,
                      "fleet_from_master": self.config_path},
            **self.master_link_sections("guard")}))
        process = self._spawn("guard", ["medulla_appliance.guard"], config)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("medulla-guard exited: %s" % (
                    self.workdir / "guard.log").read_text()[-2000:])
            try:
                control.status(socket_path=str(self.guard_socket), timeout=2)
                return process
            except control.ControlClientError:
                time.sleep(0.1)
        stop_process(process)
        raise RuntimeError("medulla-guard's control socket not up after %ss" % timeout)

    @property
    def guard_socket(self):
        """Where start_guard's medulla-guard listens for ``medullactl guard --socket``."""
        return self.workdir / "guard.sock"

    def ctl(self, *argv):
        """Run medullactl against this master; returns the CompletedProcess."""
        return subprocess.run([sys.executable, "-m", "medulla_appliance.ctl", *argv],
                              env=self.ctl_env(), capture_output=True, text=True, timeout=120)

    # -- agents --------------------------------------------------------------------------

    def agent_config(self, name, connection=None, **agent):
        """Write an agentconf.ini for an agent named `name`; returns its path.

        `connection` overrides keys of [connection]; other keywords go to [agent]."""
        connection = dict(connection or {})
        for key in CONNECTION_KEYS:  # accepted as plain keywords too
            if key in agent:
                connection[key] = agent.pop(key)
        folder = self.workdir / "agents" / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "agentconf.ini"
        path.write_text(render_ini({
            "global": {"log_level": agent.pop("log_level", "INFO")},
            "connection": {"server": "127.0.0.1", "port": self.server.c2s_port,
                           "domain": self.domain, "ca_file": self.server.ca.cert_path,
                           "max_reconnect_delay": "10s", **connection},
            "enrolment": {"enrolment_key": self.enrolment_key,
                          "master_public_key": self.master_public_key},
            "agent": {"state_dir": folder / "state", **agent},
        }))
        os.chmod(path, 0o600)
        return path

    def start_agent(self, name, connection=None, **agent):
        """A real medulla-agent process (facts of this machine)."""
        return self._spawn(name, [AGENT_MODULE], self.agent_config(name, connection, **agent))

    def start_swarm(self, name, count, prefix=None, **agent):
        """`count` agents with synthetic identities in one process (real connections)."""
        return self._spawn(name, [SWARM_MODULE, "--count", str(count),
                                  "--prefix", prefix or name],
                           self.agent_config(name, **agent))

    def _spawn(self, name, module, config):
        log = open(self.workdir / ("%s.log" % name), "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", *module, "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return process

    def wait_for(self, predicate, timeout, interval=0.2):
        """Poll the machine list until predicate(machines) is true; returns the list."""
        deadline = time.monotonic() + timeout
        machines = []
        while time.monotonic() < deadline:
            machines = self.machines()
            if predicate(machines):
                return machines
            time.sleep(interval)
        raise AssertionError("condition not met in %ss; machines: %s" % (
            timeout, [(m["hostname"], m["online"]) for m in machines][:20]))


def stop_process(process, sig=signal.SIGTERM, timeout=20):
    """Stop a process we started, by PID: `sig`, then SIGKILL after `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _escape(value):
    return str(value).replace("\\", "\\\\").replace(",", "\\,")


def render_ini(sections):
    """INI text from {section: {key: value}} (values escaped as Medulla does)."""
    out = []
    for section, values in sections.items():
        out.append("[%s]" % section)
        for key, value in values.items():
            items = value if isinstance(value, (list, tuple)) else [value]
            out.append("%s = %s" % (key, ", ".join(_escape(v) for v in items)))
        out.append("")
    return "\n".join(out)
