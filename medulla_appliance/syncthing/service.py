"""medulla-syncthing's service tree: the Syncthing controller and, when an XMPP account is
configured, the link that tells the master (``package.synced``)."""

from dataclasses import replace

from twisted.application import service
from twisted.logger import Logger

from ..core.config import ConfigError
from ..core.xmpp.link import ApplianceLink
from .config import Settings, read_api_key
from .controller import LogListener, SyncthingController
from .notify import MasterNotifier
from .rest import SyncthingClient, SyncthingKeyError

#: Changing these needs a restart: they name what the running daemon is attached to.
_FIXED = (("syncthing", "role"), ("syncthing", "packages_root"), ("syncthing", "api_url"),
          ("syncthing", "api_key_file"), ("xmpp", "jid"))


class Listeners:
    """Hands each notification to several listeners."""

    def __init__(self, *listeners):
        self.listeners = listeners

    def on_package_complete(self, relay_name, package_id, descriptor_sha256):
        for listener in self.listeners:
            listener.on_package_complete(relay_name, package_id, descriptor_sha256)

    def on_package_gone(self, relay_name, package_id, descriptor_sha256):
        for listener in self.listeners:
            listener.on_package_gone(relay_name, package_id, descriptor_sha256)


class SyncthingService(service.MultiService):
    """Everything medulla-syncthing runs, built from its configuration."""

    log = Logger()

    def __init__(self, cfg, reactor):
        super().__init__()
        self.cfg = cfg
        self.settings = Settings.from_config(cfg)
        st = cfg["syncthing"]
        self.client = SyncthingClient(st["api_url"], _first_key(cfg), clock=reactor,
                                      reactor=reactor, timeout=st["request_timeout"],
                                      key_source=lambda: _key(cfg))
        listener = LogListener()
        self.xmpp = self.notifier = None
        if cfg["xmpp"]["jid"]:
            self.notifier = self._build_xmpp(cfg, reactor)
            listener = Listeners(listener, self.notifier)
        self.controller = SyncthingController(self.client, self.settings, listener,
                                              clock=reactor)
        self.controller.setServiceParent(self)

    def _build_xmpp(self, cfg, reactor):
        self.xmpp = ApplianceLink(cfg, reactor, name="medulla-syncthing")
        names = [self.settings.name]
        if self.settings.role == "master":
            names += [peer.name for peer in self.settings.peers]
        notifier = MasterNotifier(self.xmpp.channel, self.xmpp.master_jid, reactor,
                                  relays=names)
        self.xmpp.on_session(notifier.session_up, notifier.session_down)
        self.xmpp.setServiceParent(self)
        return notifier

    def stopService(self):
        if self.notifier is not None:
            self.notifier.stop()
        return super().stopService()

    def when_ready(self):
        return self.controller.when_ready()

    def status_line(self):
        line = self.controller.status_line()
        if self.xmpp is not None:
            line += "; XMPP " + ("connected" if self.xmpp.connected else "not connected")
        return line

    def reload(self, cfg):
        """SIGHUP: peers, discovery and timing; the rest needs a restart."""
        fixed = [f"[{s}] {k}" for s, k in _FIXED if cfg[s][k] != self.cfg[s][k]]
        if fixed:
            self.log.warn("{keys} changed: restart medulla-syncthing to apply",
                          keys=", ".join(fixed))
        try:
            settings = Settings.from_config(cfg)
        except ValueError as exc:
            self.log.error("reload refused: {error}", error=exc)
            return False
        if fixed:
            settings = _keep_fixed(settings, self.settings)
        self.cfg, self.settings = cfg, settings
        self.controller.update_settings(settings)


def _first_key(cfg):
    """The API key, or None while Syncthing's config.xml is not readable yet (first boot:
    Syncthing writes it as it starts); a bad key file fails the start at once."""
    try:
        return read_api_key(cfg)
    except ValueError as exc:
        SyncthingService.log.warn("{error}; waiting for Syncthing", error=exc)
        return None


def _key(cfg):
    try:
        return read_api_key(cfg)
    except (ValueError, ConfigError) as exc:
        raise SyncthingKeyError(str(exc)) from None


def _keep_fixed(new, old):
    return replace(new, role=old.role, packages_root=old.packages_root)
