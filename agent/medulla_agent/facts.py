"""What the agent tells the master about its machine (Linux): hostname, MAC and IP
addresses, OS, which remote-access services listen. Read once per session."""

import ipaddress
import platform
import socket

import psutil

from . import __version__

ZERO_MAC = "00:00:00:00:00:00"
SERVICE_PORTS = {"ssh": 22, "vnc": 5900, "rdp": 3389}


def interfaces(addrs=None):
    """{interface: (mac, [ips])} for interfaces that have a real MAC address."""
    addrs = psutil.net_if_addrs() if addrs is None else addrs
    result = {}
    for name, entries in addrs.items():
        mac = next((a.address.lower() for a in entries if a.family == psutil.AF_LINK), None)
        if not mac or mac == ZERO_MAC or len(mac) != 17:
            continue
        ips = []
        for a in entries:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(a.address.split("%", 1)[0])
                if not (ip.is_loopback or ip.is_link_local):
                    ips.append(str(ip))
        result[name] = (mac, ips)
    return result


def primary_mac(ifaces):
    """The smallest MAC with an IPv4 address (Medulla's rule for the JID resource)."""
    with_v4 = sorted(mac for mac, ips in ifaces.values()
                     if any(ipaddress.ip_address(ip).version == 4 for ip in ips))
    every = sorted(mac for mac, _ in ifaces.values())
    if not (with_v4 or every):
        raise RuntimeError("no network interface with a MAC address")
    return (with_v4 or every)[0]


def os_name():
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        return "%s %s" % (platform.system(), platform.release())


def listening_services():
    """{ssh|vnc|rdp: True|False} from the TCP ports listening on this machine."""
    try:
        ports = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN"}
    except (psutil.AccessDenied, OSError):
        ports = set()
    return {name: port in ports for name, port in SERVICE_PORTS.items()}


def collect(inventory_tag=""):
    """The facts of agent.register, as a dict (see PROTOCOL.md)."""
    ifaces = interfaces()
    macs = sorted({mac for mac, _ in ifaces.values()})
    ips = [ip for _, (mac, addrs) in sorted(ifaces.items()) for ip in addrs]
    return {
        "hostname": socket.gethostname().split(".", 1)[0],
        "macs": macs, "ips": ips, "os": os_name(), "agent_version": __version__,
        "inventory_tag": inventory_tag, "services": listening_services(),
        "primary_mac": primary_mac(ifaces),
    }
