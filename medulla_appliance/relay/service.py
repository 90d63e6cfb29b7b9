"""medulla-relay's service tree (package role): the package store and its HTTP listener,
and, when ``[xmpp] jid`` is set, the link that enrols the relay and sends relay.status."""

import os

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger

from ..core import keys
from ..core.xmpp.link import ApplianceLink
from . import web
from .config import listen_endpoint
from .limits import DownloadSlots
from .packages import PackageStore
from .status import StatusReporter, packages_complete


class RelayService(service.MultiService):
    """Everything medulla-relay runs, built from its configuration."""

    log = Logger()

    def __init__(self, cfg, reactor):
        super().__init__()
        self.cfg, self.reactor = cfg, reactor
        public_key = keys.load_public_key(cfg["keys"]["master_public_key"])
        packages = cfg["packages"]
        self.store = PackageStore(packages["root"])
        self.slots = DownloadSlots(packages["max_downloads"], packages["max_downloads_per_client"])
        self.resource = web.PackageResource(self.store, public_key, self.slots, clock=reactor,
                                            stall_timeout=cfg["http"]["idle_timeout"],
                                            sendfile=cfg["http"]["sendfile"])
        self.site = web.make_site(self.resource, clock=reactor,
                                  idle_timeout=cfg["http"]["idle_timeout"])
        self.listen = listen_endpoint(cfg)
        self.http = strports.service(self.listen, self.site, reactor=reactor)
        self.http._raiseSynchronously = True  # a busy port must stop the start, not be logged
        self.http.setServiceParent(self)
        self.link = self.reporter = None
        if cfg["xmpp"]["jid"]:
            self._build_link(cfg, reactor)

    def _build_link(self, cfg, reactor):
        url = cfg["status"]["package_url"]
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("[status] package_url: expected http(s)://HOST:PORT, got %r" % url)
        self.link = ApplianceLink(cfg, reactor, name="medulla-relay")
        self.reporter = StatusReporter(self.link, reactor, cfg["status"]["interval"],
                                       self._status)
        self.link.setServiceParent(self)

    def _status(self):
        return {"load": {"active_downloads": self.slots.active, "clients": self.slots.clients,
                         "files_served": self.resource.served},
                "packages_complete": packages_complete(self.store.root),
                "package_url": self.cfg["status"]["package_url"]}

    def startService(self):
        if not os.path.isdir(self.store.root):
            self.log.warn("packages root {root} does not exist (yet): every package is "
                          "answered not-synchronized", root=self.store.root)
        service.MultiService.startService(self)

    def when_ready(self):
        return defer.succeed(None)  # listening: strports raised otherwise

    def status_line(self):
        line = "%d downloads running for %d clients; %d served; packages in %s" % (
            self.slots.active, self.slots.clients, self.resource.served, self.store.root)
        if self.link is not None:
            line += "; master link " + ("up" if self.link.connected else "down")
        return line

    def reload(self, cfg):
        """SIGHUP: download limits, idle timeout, sendfile and the master's public key."""
        packages, http = cfg["packages"], cfg["http"]
        self.slots.set_limits(packages["max_downloads"], packages["max_downloads_per_client"])
        self.resource.stall_timeout = http["idle_timeout"]
        self.resource.sendfile = http["sendfile"]
        self.site.timeOut = http["idle_timeout"]
        try:
            self.resource.public_key = keys.load_public_key(cfg["keys"]["master_public_key"])
        except keys.PublicKeyError as exc:
            self.log.error("[keys] master_public_key: {error}; keeping the previous key",
                           error=exc)
        if self.reporter is not None:
            self.reporter.interval = cfg["status"]["interval"]  # from the next session
        for section, key in (("http", "listen"), ("http", "certificate"),
                             ("http", "private_key"), ("packages", "root"), ("xmpp", "jid")):
            if cfg[section][key] != self.cfg[section][key]:
                self.log.warn("[{section}] {key} changed: restart medulla-relay to apply it",
                              section=section, key=key)
        self.cfg = cfg
