"""medulla-pxe's boot-menu HTTP server and its XMPP link to the master."""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Site

from ..core.listening import listen_all
from ..core.xmpp.link import ApplianceLink
from .config import http_addresses, server_name
from .menus import MenuSource
from .menus_http import BootMenuResource

#: An idle keep-alive connection from iPXE is closed after this many seconds.
IDLE_TIMEOUT = 30


def build_link(cfg, reactor):
    """The ApplianceLink when ``[xmpp] jid`` is set, else None (menus: built-in only)."""
    if not cfg["xmpp"]["jid"]:
        return None
    return ApplianceLink(cfg, reactor, name="medulla-pxe")


class HTTPMenuService(service.Service):
    """Listens on every ``[http] listen`` address and serves boot menus."""

    log = Logger()

    def __init__(self, cfg, reactor, link):
        self.reactor = reactor
        self.addresses = http_addresses(cfg)
        self.source = MenuSource(link, server_name(cfg), cfg["http"]["master_timeout"])
        self.resource = BootMenuResource(self.source)
        self.site = Site(self.resource, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.site.noisy = False
        self.site.displayTracebacks = False
        self.site.log = lambda request: None  # BootMenuResource logs one line per request
        self.ports = []
        self._menu_url = cfg["tftp"]["menu_url"]
        if link is None:
            self.log.warn("[xmpp] jid is empty: boot menus are the built-in one (boot the "
                          "local disk) until medulla-pxe has a link to the master")

    def startService(self):
        self.ports = listen_all(self.addresses, lambda port, interface: self.reactor.listenTCP(
            port, self.site, interface=interface))
        super().startService()
        for port in self.ports:
            host = port.getHost()
            self.log.info("boot menus on http {host} port {port} (imaging server {server})",
                          host=host.host, port=host.port, server=self.source.server)
        self._check_menu_url()

    def _check_menu_url(self):
        # The generated autoexec.ipxe sends iPXE to menu_url: say so when nothing here
        # listens where it points.
        if not self._menu_url or "{server}" not in self._menu_url:
            return
        url = urlsplit(self._menu_url.replace("{server}", "server.invalid"))
        try:
            wanted = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:
            return
        if wanted not in {p.getHost().port for p in self.ports}:
            self.log.warn("[tftp] menu_url points at port {wanted}, where medulla-pxe does "
                          "not serve boot menus ([http] listen)", wanted=wanted)

    def stopService(self):
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def reload(self, cfg):
        if http_addresses(cfg) != self.addresses:
            self.log.warn("[http] listen changed: restart medulla-pxe to listen there")
        self.source.timeout = cfg["http"]["master_timeout"]
        self._menu_url = cfg["tftp"]["menu_url"]

    def status_line(self) -> str:
        return "HTTP: %d scripts served, %d refused" % (self.resource.served,
                                                        self.resource.refused)
