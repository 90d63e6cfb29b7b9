"""medulla-pxe's service tree: the TFTP server today; boot menus and proxyDHCP join later."""

import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ..core.config import ConfigError
from ..core.listening import listen_all
from .autoexec import AutoexecScript
from .config import check, http_addresses, listen_addresses
from .dhcp.udp import ProxyDHCPService
from .http_service import HTTPMenuService, build_link
from .tftp.backend import Generators, SafeRoot
from .tftp.options import OptionLimits
from .tftp.protocol import TFTPServer


def _root(cfg) -> str:
    root = cfg["tftp"]["root"]
    if not os.path.isdir(root):
        file, line = cfg.origin("tftp", "root")
        raise ConfigError(file, line, "tftp", "root", "%s is not a folder" % root)
    return root


def _backend(cfg) -> SafeRoot:
    generators = Generators()
    if cfg["tftp"]["menu_url"]:
        generators.register("autoexec.ipxe", AutoexecScript(cfg["tftp"]["menu_url"]))
    return SafeRoot(_root(cfg), generators)


def _settings(cfg) -> dict:
    tftp = cfg["tftp"]
    return {"max_sessions": tftp["max_sessions"],
            "max_sessions_per_client": tftp["max_sessions_per_client"],
            "timeout": tftp["timeout"], "retries": tftp["retries"],
            "verbose": tftp["verbose"],
            "option_limits": OptionLimits(tftp["max_blksize"], tftp["max_windowsize"])}


class TFTPService(service.Service):
    """Listens on every ``[tftp] listen`` address and runs the transfers."""

    log = Logger()

    def __init__(self, cfg, reactor):
        self.addresses = listen_addresses(cfg)
        self.server = TFTPServer(_backend(cfg), reactor=reactor, **_settings(cfg))
        self.ports = []

    def startService(self):
        self.ports = listen_all(self.addresses, self.server.listen)
        super().startService()
        for port in self.ports:
            host = port.getHost()
            self.log.info("TFTP listening on udp {host} port {port}, serving {root}",
                          host=host.host, port=host.port, root=self.server.backend.root)

    def stopService(self):
        super().stopService()
        self.server.stop()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def reload(self, cfg):
        if listen_addresses(cfg) != self.addresses:
            self.log.warn("[tftp] listen changed: restart medulla-pxe to listen there")
        self.server.backend = _backend(cfg)
        self.server.configure(**_settings(cfg))

    def status_line(self) -> str:
        server = self.server
        return "TFTP: %d transfers running, %d served, %d refused" % (
            len(server.transfers), server.served, server.refused)


class PXEService(service.MultiService):
    """Everything medulla-pxe runs, built from its configuration."""

    log = Logger()

    def __init__(self, cfg, reactor):
        super().__init__()
        self.reactor = reactor
        self.tftp = TFTPService(cfg, reactor)
        self.tftp.setServiceParent(self)
        self.proxydhcp = None
        if cfg["proxydhcp"]["enabled"]:
            self.proxydhcp = ProxyDHCPService(cfg, reactor)
            self.proxydhcp.setServiceParent(self)
        self.link = build_link(cfg, reactor)
        if self.link is not None:
            self.link.setServiceParent(self)
        self.http = None
        if http_addresses(cfg):
            self.http = HTTPMenuService(cfg, reactor, self.link)
            self.http.setServiceParent(self)

    def when_ready(self):
        return defer.succeed(None)

    def status_line(self) -> str:
        line = self.tftp.status_line()
        if self.http is not None:
            line += "; " + self.http.status_line()
        if self.proxydhcp is not None:
            line += "; " + self.proxydhcp.status_line()
        if self.link is not None:
            line += "; XMPP " + ("connected" if self.link.connected else "not connected")
        return line

    def reload(self, cfg):
        """SIGHUP: limits, timeouts, verbosity, root and menu URL; addresses and turning the
        proxyDHCP on or off need a restart."""
        if bool(cfg["proxydhcp"]["enabled"]) != (self.proxydhcp is not None):
            self.log.warn("[proxydhcp] enabled changed: restart medulla-pxe to apply it")
        try:
            check(cfg)  # all of it first: a refused reload changes nothing
            self.tftp.reload(cfg)
            if self.http is not None:
                self.http.reload(cfg)
            if self.proxydhcp is not None and cfg["proxydhcp"]["enabled"]:
                self.proxydhcp.reload(cfg)
        except ConfigError as exc:
            self.log.error("reload refused, keeping the running configuration: {error}",
                           error=exc)
            return False
        return True
