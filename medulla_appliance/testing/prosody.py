"""Prosody 0.12 as a test server: one config file, data and logs in the work directory."""

from __future__ import annotations

from pathlib import Path

from medulla_appliance.testing.ports import LOOPBACK
from medulla_appliance.testing.xmppserver import XMPPServer

# Big enough for inventory envelopes; prosody's default is 256 KiB.
STANZA_SIZE_LIMIT = 2 * 1024 * 1024
# Accept queue for connection storms (the kernel caps it at net.core.somaxconn).
TCP_BACKLOG = 4096
# The modules the agents use. Everything else is off: no s2s, offline storage, HTTP.
MODULES = ("roster", "saslauth", "tls", "disco", "ping", "register", "posix")
LEVELS = {"warning": "warn"}

CONFIG = """\
-- Written by medulla_appliance.testing.prosody for one test instance; regenerated on start.
pidfile = {pidfile}
data_path = {data_path}
plugin_paths = {{}}
log = {{ {{ levels = {{ min = {level} }}, to = "file", filename = {log_path} }} }}
network_backend = "epoll"
network_settings = {{ tcp_backlog = {backlog} }}

interfaces = {{ {interfaces} }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
-- Every other listener off, so that nothing binds 5222/5269/5280 of the host.
c2s_direct_tls_ports = {{}}
legacy_ssl_ports = {{}}
s2s_ports = {{}}
component_ports = {{}}
http_ports = {{}}
https_ports = {{}}

modules_enabled = {{ {modules} }}
modules_disabled = {{ "s2s", "s2s_auth_certs", "offline" }}

authentication = "internal_hashed" -- stores SCRAM keys, so SCRAM-SHA-1 is offered
storage = "internal"
c2s_require_encryption = true
c2s_stanza_size_limit = {stanza_limit}

allow_registration = true
-- No throttle on in-band registration: leaving min_seconds_between_registrations unset keeps
-- mod_register_limits from creating one (0 would mean a rate of 1/0 in util.throttle), and
-- loopback is on the allowlist that bypasses it anyway.
registration_allowlist = {{ "127.0.0.1", "::1" }}

certificates = {tls_dir} -- else it looks for a certs/ folder beside the config

VirtualHost {domain}
    ssl = {{ certificate = {cert}, key = {key} }}
"""


def lua_string(value: object) -> str:
    """A Lua string literal holding ``value``."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


class ProsodyServer(XMPPServer):
    """Prosody run in the foreground (``-F``) as user ``prosody``, so its PID is ours."""

    kind = "prosody"
    system_user = "prosody"
    log_name = "prosody.log"
    # Prosody keeps running when it cannot bind its port; without this we would wait for
    # the whole start timeout.
    fatal_log_lines = ("Failed to open server port",)

    def __init__(self, *args, interfaces=(LOOPBACK,), **options) -> None:
        super().__init__(*args, **options)
        # Where prosody listens: loopback, plus an address a test's network namespace
        # reaches this host by (testing.netboot's uplink). The probes use loopback.
        self.interfaces = tuple(interfaces)

    @property
    def config_path(self) -> Path:
        return self.root / "prosody.cfg.lua"

    def _write_config(self, cert_path: Path, key_path: Path) -> None:
        (self.root / "data").mkdir(exist_ok=True)
        self.config_path.write_text(CONFIG.format(
            pidfile=lua_string(self.root / "prosody.pid"),
            data_path=lua_string(self.root / "data"),
            level=lua_string(LEVELS.get(self.log_level, self.log_level)),
            log_path=lua_string(self.log_path),
            backlog=TCP_BACKLOG,
            port=self.c2s_port,
            interfaces=", ".join(lua_string(a) for a in self.interfaces),
            modules=", ".join(lua_string(name) for name in MODULES),
            stanza_limit=STANZA_SIZE_LIMIT,
            domain=lua_string(self.domain),
            tls_dir=lua_string(cert_path.parent),
            cert=lua_string(cert_path),
            key=lua_string(key_path),
        ))

    def _server_argv(self) -> list[str]:
        # Started as root, prosody refuses to run (mod_posix) yet lingers bound to nothing;
        # the base class drops to user prosody first.
        return ["prosody", "--config", str(self.config_path), "-F"]

    def _register_argv(self, user: str, password: str) -> list[str]:
        return ["prosodyctl", "--config", str(self.config_path),
                "register", user, self.domain, password]
