"""ejabberd 23.01 as a test server: its own config dir, Mnesia spool, logs and Erlang node.

Debian's ``ejabberdctl`` reads ``/etc/ejabberd/ejabberdctl.cfg`` unless given
``--config-dir``; we always pass our own, so the system's ejabberd is never involved.
The node uses a fixed Erlang distribution port (``ERL_DIST_PORT``), which makes it start
without epmd: there is no shared daemon to start, find or kill.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
from pathlib import Path

from medulla_appliance.testing.ports import free_tcp_port
from medulla_appliance.testing.processes import pid_alive, process_tree
from medulla_appliance.testing.xmppserver import XMPPServer

SYSTEM_CTL = "/usr/sbin/ejabberdctl"
STANZA_SIZE_LIMIT = 2 * 1024 * 1024
TCP_BACKLOG = 4096
ERL_MAX_PORTS = 65536
ERL_PROCESSES = 1_000_000
LEVELS = {"warn": "warning"}

CTL_CONFIG = """\
# Written by medulla_appliance.testing.ejabberd; regenerated on start.
ERLANG_NODE={node}
# A fixed distribution port: the node and ejabberdctl talk without epmd.
ERL_DIST_PORT={dist_port}
ERL_MAX_PORTS={max_ports}
ERL_PROCESSES={processes}
# Distribution on loopback only. Set here rather than with INET_DIST_INTERFACE, which
# costs one more Erlang VM start on every ejabberdctl call.
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {{127,0,0,1}}"
EJABBERD_BYPASS_WARNINGS=true
"""

CONFIG = """\
# Written by medulla_appliance.testing.ejabberd; regenerated on start.
loglevel: {level}
log_rotate_count: 0
hosts:
  - {domain}
certfiles:
  - {cert}
  - {key}
ca_file: {ca}
acme:
  auto: false
auth_method: internal
auth_password_format: scram
disable_sasl_mechanisms: ["digest-md5", "x-oauth2"]
s2s_access: none
# In-band registration without the default one-per-IP-per-10-minutes limit.
registration_timeout: infinity
listen:
  -
    port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
    max_stanza_size: {stanza_limit}
    shaper: none
    access: all
    backlog: {backlog}
shaper_rules:
  c2s_shaper: none
  max_user_sessions: 1000
api_permissions:
  "console commands":
    from: [ejabberd_ctl]
    who: all
    what: "*"
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_register:
    ip_access: all
    access: all
"""

# Erlang's resolver config, as in /etc/ejabberd/inetrc: "localhost" in the node name must
# resolve even where /etc/hosts is odd.
INETRC = """\
{lookup,["file","native"]}.
{host,{127,0,0,1}, ["localhost"]}.
{file, resolv, "/etc/resolv.conf"}.
"""


def yaml_string(value: object) -> str:
    """A YAML scalar holding ``value`` (a JSON string is valid YAML)."""
    return json.dumps(str(value))


class EjabberdServer(XMPPServer):
    """ejabberd started with ``ejabberdctl foreground-quiet`` as user ``ejabberd``.

    :attr:`pid` is the ``beam.smp`` process that serves XMPP; the ``ejabberdctl`` shell
    above it is ours too and goes away with it. :meth:`stop` sends SIGTERM to beam.smp:
    Erlang/OTP answers it with ``init:stop()``, the same orderly shutdown of ejabberd and
    Mnesia as ``ejabberdctl stop``, without starting a second VM (1.0 s instead of 2.7 s).
    """

    kind = "ejabberd"
    system_user = "ejabberd"
    log_name = "logs/ejabberd.log"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dist_port = free_tcp_port()
        while self.dist_port == self.c2s_port:
            self.dist_port = free_tcp_port()
        # Mnesia binds its tables to the node name: it must stay the same across restarts.
        self.node = f"medulla_{secrets.token_hex(4)}@localhost"

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def pid(self) -> int | None:
        if not self.running:
            return None
        wrapper = self._process.pid
        for child in process_tree(wrapper)[1:]:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "beam.smp":
                    return child
            except FileNotFoundError:
                continue
        return wrapper if pid_alive(wrapper) else None

    def _write_config(self, cert_path: Path, key_path: Path) -> None:
        for name in ("etc", "logs", "spool"):
            (self.root / name).mkdir(exist_ok=True)
        (self.config_dir / "ejabberdctl.cfg").write_text(CTL_CONFIG.format(
            node=self.node, dist_port=self.dist_port, max_ports=ERL_MAX_PORTS,
            processes=ERL_PROCESSES))
        (self.config_dir / "inetrc").write_text(INETRC)
        (self.config_dir / "ejabberd.yml").write_text(CONFIG.format(
            level=LEVELS.get(self.log_level, self.log_level),
            domain=yaml_string(self.domain),
            cert=yaml_string(cert_path),
            key=yaml_string(key_path),
            ca=yaml_string(self.root / "tls" / "ca.pem"),
            port=self.c2s_port,
            stanza_limit=STANZA_SIZE_LIMIT,
            backlog=TCP_BACKLOG,
        ))
        if self._ctl != SYSTEM_CTL:
            self._write_private_ctl()

    def _write_private_ctl(self) -> None:
        # Debian's ejabberdctl only runs as root or user ejabberd. Another user gets a copy
        # that runs the node as itself.
        script = Path(SYSTEM_CTL).read_text()
        script = script.replace("INSTALLUSER=ejabberd", "INSTALLUSER=", 1)
        path = self.config_dir / "ejabberdctl"
        path.write_text(script)
        path.chmod(0o755)

    @property
    def _ctl(self) -> str:
        if os.geteuid() == 0 or pwd.getpwuid(os.geteuid()).pw_name == self.system_user:
            return SYSTEM_CTL
        return str(self.config_dir / "ejabberdctl")

    def _ctl_argv(self, *command: str) -> list[str]:
        return [self._ctl, "--config-dir", str(self.config_dir),
                "--logs", str(self.root / "logs"),
                "--spool", str(self.root / "spool"), "--node", self.node, *command]

    def _server_argv(self) -> list[str]:
        # foreground: the VM stays our child (no -detached daemon to track down);
        # -quiet: the log goes to logs/ejabberd.log only, not a second time to the console.
        return self._ctl_argv("foreground-quiet")

    def _register_argv(self, user: str, password: str) -> list[str]:
        return self._ctl_argv("register", user, self.domain, password)
