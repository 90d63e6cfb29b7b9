"""The proxyDHCP sockets: UDP 67 and 4011 on one interface, and the service that owns them.

DHCPDISCOVER is a broadcast from a machine without an address, so the socket listens on
0.0.0.0 (a socket bound to an address never sees broadcasts) and is tied to the one
configured interface with ``SO_BINDTODEVICE``: requests from other networks never reach
us, and our broadcast answers leave by that interface whatever the routing table says.
The sockets are made here, options set before ``bind``, then handed to the reactor.
"""

import dataclasses
import fcntl
import ipaddress
import socket
import struct

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from .proxy import BOOT_SERVER_PORT, SERVER_PORT, ProxyDHCP, settings_from_config

SIOCGIFADDR = 0x8915
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
MAX_DATAGRAM = 8192


class NoServerAddress(RuntimeError):
    """No server_address set, and the interface has no IPv4 address to announce."""


def interface_ipv4(name: str) -> ipaddress.IPv4Address:
    """The (first) IPv4 address of network interface ``name``; raises OSError if none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", name.encode()[:15])
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
    return ipaddress.IPv4Address(answer[20:24])


def open_socket(interface: str, port: int) -> socket.socket:
    """A nonblocking UDP socket on 0.0.0.0:``port`` that only sees ``interface``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ProxyDHCPProtocol(DatagramProtocol):
    """One port's datagrams go to the logic; its answers go out of the same port."""

    log = Logger()
    noisy = False  # no "starting on 67" lines: the service logs one line for both ports

    def __init__(self, owner, port: int):
        self.owner = owner
        self.port = port

    def datagramReceived(self, data, addr):
        answer = self.owner.proxy.handle(data, addr, self.port)
        if answer is None:
            return
        try:
            self.transport.write(answer.data, answer.destination)
        except OSError as exc:
            self.owner.proxy.quiet.emit(
                "warn", ("send", answer.destination), "proxyDHCP could not send {what} to "
                "{where}: {error}", what=answer.what, where=answer.destination, error=exc)


class ProxyDHCPService(service.Service):
    """``[proxydhcp]``: answers allowed PXE clients on UDP 67 and 4011 of one interface."""

    log = Logger()

    def __init__(self, cfg, reactor, ports=(SERVER_PORT, BOOT_SERVER_PORT)):
        self.reactor = reactor
        self.settings = settings_from_config(cfg)
        self.port_numbers = ports
        self.proxy = None
        self.ports = []

    def _server_address(self, settings):
        if settings.server is not None:
            return settings.server
        try:
            return interface_ipv4(settings.interface)
        except OSError as exc:
            raise NoServerAddress(
                "proxyDHCP: interface %s has no IPv4 address to send as next-server (%s); "
                "set [proxydhcp] server_address" % (settings.interface, exc.strerror or exc)
            ) from None

    def startService(self):
        settings = self.settings.with_server(self._server_address(self.settings))
        self.proxy = ProxyDHCP(settings, self.reactor)
        try:
            for number in self.port_numbers:
                sock = open_socket(settings.interface, number)
                try:
                    self.ports.append(self.reactor.adoptDatagramPort(
                        sock.fileno(), socket.AF_INET, ProxyDHCPProtocol(self, number),
                        MAX_DATAGRAM))
                finally:
                    sock.close()  # the reactor holds its own duplicate
        except OSError as exc:
            self._close()
            raise CannotListenError(settings.interface, number, exc) from None
        super().startService()
        self.log.info("proxyDHCP answering on {interface} udp {ports}: next-server {server}, "
                      "{count} allowed MACs", interface=settings.interface,
                      ports=" and ".join(str(n) for n in self.port_numbers),
                      server=settings.server, count=len(settings.allowed_macs))

    def _close(self):
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def stopService(self):
        super().stopService()
        return self._close()

    def reload(self, cfg):
        """SIGHUP: allowed MACs and boot files now; interface and address need a restart."""
        settings = settings_from_config(cfg)
        if settings.interface != self.settings.interface or \
                settings.server != self.settings.server:
            self.log.warn("[proxydhcp] interface or server_address changed: restart "
                          "medulla-pxe to use them")
            settings = dataclasses.replace(settings, interface=self.settings.interface,
                                           server=self.settings.server)
        self.settings = settings
        if self.proxy is not None:
            self.proxy.settings = settings.with_server(self.proxy.settings.server)

    def status_line(self) -> str:
        proxy = self.proxy
        if proxy is None:
            return "proxyDHCP: not started"
        return "proxyDHCP: %d answered, %d ignored, %d allowed MACs" % (
            proxy.answered, proxy.ignored, len(proxy.settings.allowed_macs))
