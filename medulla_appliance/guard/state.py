"""What medulla-guard keeps and finds on the host: its state file (ban history, read
positions, journal cursors, failures still counting), the machine's own addresses, the
fleet hosts the master's configuration names, and a stale control socket to clear."""

import json
import os
import socket
import stat

from twisted.logger import Logger

MAX_STATE_BYTES = 64 * 1024 * 1024

log = Logger(namespace="medulla_appliance.guard.state")


def read_state(path):
    """The saved state, or {} when missing or unreadable (which is logged)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
        state = json.loads(data) if len(data) <= MAX_STATE_BYTES else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warn("state file {path} unreadable ({error}); starting afresh", path=path,
                 error=exc)
        return {}
    return state if isinstance(state, dict) else {}


def write_state(path, state):
    """Write the state atomically (a crash leaves the old file or the new, never half)."""
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, path)
    except OSError as exc:
        log.error("cannot write {path}: {error}", path=path, error=exc)


def local_addresses():
    """Every address of this machine's interfaces (never banned)."""
    import psutil
    found = []
    for addresses in psutil.net_if_addrs().values():
        for item in addresses:
            if item.family in (socket.AF_INET, socket.AF_INET6):
                found.append(item.address.split("%", 1)[0])
    return found


def master_fleet_hosts(path):
    """The relays' hosts and the XMPP server named in the master's configuration."""
    if not path or not os.path.exists(path):
        return []
    from ..core.config import ConfigError, load
    from ..master.config import SCHEMA as MASTER_SCHEMA
    try:
        cfg = load(path, MASTER_SCHEMA, required=False)
    except ConfigError as exc:
        log.warn("fleet hosts: {path} unreadable: {error}", path=path,
                 error=str(exc).splitlines()[0])
        return []
    hosts = [cfg["xmpp"]["server"]]
    for relay in cfg["assessor"]["relays"]:
        # 'NAME HOST:PORT' (IPv6 in brackets)
        endpoint = relay.split()[-1] if relay.split() else ""
        host = endpoint.rsplit(":", 1)[0] if ":" in endpoint else endpoint
        hosts.append(host.strip("[]"))
    return [h for h in hosts if h]


def remove_stale_socket(path):
    """Remove a socket file nobody listens on (left by a killed daemon)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError("%s exists and is not a socket" % path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:  # refused: nobody listens
            os.unlink(path)
            return
    raise OSError("another medulla-guard listens on %s" % path)
