"""medulla-relay's service tree (package role): the package store and its HTTP listener."""

import os

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger

from ..core import keys
from . import web
from .config import listen_endpoint
from .limits import DownloadSlots
from .packages import PackageStore


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

    def startService(self):
        if not os.path.isdir(self.store.root):
            self.log.warn("packages root {root} does not exist (yet): every package is "
                          "answered not-synchronized", root=self.store.root)
        service.MultiService.startService(self)

    def when_ready(self):
        return defer.succeed(None)  # listening: strports raised otherwise

    def status_line(self):
        return "%d downloads running for %d clients; %d served; packages in %s" % (
            self.slots.active, self.slots.clients, self.resource.served, self.store.root)

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
        for section, key in (("http", "listen"), ("http", "certificate"),
                             ("http", "private_key"), ("packages", "root")):
            if cfg[section][key] != self.cfg[section][key]:
                self.log.warn("[{section}] {key} changed: restart medulla-relay to apply it",
                              section=section, key=key)
        self.cfg = cfg
