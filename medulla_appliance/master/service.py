"""medulla-master's service tree: store, registry, XMPP link, liveness pings, admin API."""

from twisted.application import service, strports
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID

from ..core import keys
from ..core.store import Store
from ..core.xmpp.auth import tls_options
from ..core.xmpp.channel import EnvelopeChannel
from ..core.xmpp.client import XMPPClientService
from ..core.xmpp.handlers import DiscoInfoHandler, PingHandler
from ..packages.store import PackageStore
from ..packages.token import make_token
from . import api, apitoken, storage
from .api_bans import BanRoutes
from .api_groups import GroupRoutes
from .api_pxe import PXERoutes
from .api_relays import RelayRoutes
from .bans import Bans
from .deployments import Deployments, Groups, parse_relay_urls
from .logic.admission import Admission
from .logic.assessor import Assessor
from .protocol import EnrolmentActions, MasterPresence
from .pxe_menus import PXEMenus
from .registry import Registry
from .relays import Relays, url_feeder

SWEEP_MIN_SECONDS = 0.5


class MasterService(service.MultiService):
    """Everything medulla-master runs, built from its configuration."""

    log = Logger()

    def __init__(self, cfg, reactor):
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.jid = JID(cfg["xmpp"]["jid"])
        self.private_key = keys.load_or_create_private_key(cfg["keys"]["private_key"])
        enrolment_key = cfg.read_secret("keys", "enrolment_key_file")
        password = cfg.read_secret("xmpp", "password_file")
        self.store = Store(cfg["store"]["url"], storage.MIGRATIONS, reactor=reactor)
        self.registry = Registry(self.store, reactor,
                                 cfg["registry"]["blacklisted_mac_addresses"])
        self.assessor = Assessor.from_config(cfg["assessor"])
        self.admission = Admission(cfg["registry"]["max_registrations_per_second"], reactor)
        self.presence = MasterPresence(self.registry, self._session_changed)
        self.enrolment = EnrolmentActions(self.registry, self.assessor, self.admission,
                                          enrolment_key, self.jid.host, self.presence)
        self.channel = EnvelopeChannel(self.jid, self.private_key, reactor, self._trust)
        self.appliance_actions = set()
        self.channel.handle("agent.assess", self.enrolment.assess)
        self.channel.handle("agent.register", self.enrolment.register)
        self.packages = PackageStore(cfg["deploy"]["packages_root"])
        self.deployments = Deployments(
            self.store, reactor, self.registry, self.channel,
            lambda claims: make_token(self.private_key, claims, reactor.seconds()),
            self.packages,
            parse_relay_urls(cfg["deploy"]["relay_urls"]),
            tick=cfg["deploy"]["pass_interval"],
            missing_agent_after=cfg["deploy"]["missing_agent_after"])
        self.channel.handle("deploy.progress", self.deployments.on_progress)
        self.channel.handle("deploy.result", self.deployments.on_result)
        self.relays = Relays(self.store, reactor, enrolment_key, self.jid,
                             self.private_key.public_key(), on_package_url=url_feeder(
                                 self.deployments.relay_urls,
                                 parse_relay_urls(cfg["deploy"]["relay_urls"])))
        self.channel.handle("relay.register", self.relays.register)
        self.handle_appliance("relay.status", self.relays.status)
        self.handle_appliance("package.synced",
                              self.relays.own_relay_only(self.deployments.on_package_synced))
        self.pxe_menus = PXEMenus(self.store, reactor, self.registry, self.relays.origin)
        self.handle_appliance("pxe.menu", self.pxe_menus.on_menu)
        self.handle_appliance("pxe.register", self.pxe_menus.on_register)
        self.bans = Bans(self.store, reactor, self.appliance_origin)
        self.handle_appliance("guard.ban", self.bans.on_ban)
        self.handle_appliance("guard.unban", self.bans.on_unban)
        self.channel.on_heard = self._heard
        self.pinger = PingHandler()
        self.xmpp = XMPPClientService(
            self.jid, password,
            endpoints.HostnameEndpoint(reactor, cfg["xmpp"]["server"], cfg["xmpp"]["port"]),
            tls_options(cfg["xmpp"]["ca_file"], self.jid.host), clock=reactor,
            register_wanted=lambda: cfg["xmpp"]["register_account"],
            keepalive=(cfg["xmpp"]["keepalive_interval"], cfg["xmpp"]["keepalive_timeout"]))
        for handler in (self.presence, self.channel.messages, self.pinger,
                        DiscoInfoHandler(kind="bot", name="medulla-master")):
            self.xmpp.addHandler(handler)
        self.token = apitoken.ensure_token(cfg["api"]["token_file"])
        route_groups = (GroupRoutes(self.registry, Groups(self.store, reactor)),
                        RelayRoutes(self.relays), PXERoutes(self.pxe_menus),
                        BanRoutes(self.bans, reactor))
        site = api.make_api_site(self.registry, self.token, clock=reactor,
                                 deployments=self.deployments, packages=self.packages,
                                 route_groups=route_groups)
        site.noisy = False
        self.api = strports.service(cfg["api"]["listen"], site, reactor=reactor)
        self.api._raiseSynchronously = True  # a busy port must stop the start, not be logged
        presence_cfg = cfg["presence"]
        self.sweeper = task.LoopingCall(self._sweep)
        self.sweeper.clock = reactor
        self._sweep_every = max(SWEEP_MIN_SECONDS, presence_cfg["ping_timeout"] / 4)
        self._reconcile_call = None
        self._ready = defer.Deferred()

    def handle_appliance(self, action, handler):
        """``action`` is sent only by the appliance's own daemons (medulla-syncthing,
        -pxe, -guard, -relay), never by agents: see :meth:`_appliance_key`."""
        self.appliance_actions.add(action)
        self.channel.handle(action, handler)

    def appliance_origin(self, sender):
        """Who speaks in an appliance-only envelope from ``sender``: a relays.Origin with
        ``master_host`` True for this host's daemons (the master's account, another
        resource), else the enrolled relay's name (``relay-NAME@DOMAIN/...``); None for
        anyone else."""
        return self.relays.origin(sender)

    def _appliance_key(self, sender):
        # This host's daemons sign with the master's key; an enrolled relay's daemons with
        # the key pinned when it enrolled (relay.register).
        return self.relays.appliance_key(sender)

    def _heard(self, sender):
        self.registry.heard(sender)
        self.relays.heard(sender)

    def _trust(self, sender, signed):
        if signed.envelope.action == "relay.register":
            return self.relays.register_key(sender, signed)  # trusted through its HMAC
        if signed.envelope.action in self.appliance_actions:
            return self._appliance_key(sender)
        return self.enrolment.trust(sender, signed)

    def startService(self):
        d = self.registry.load()
        d.addCallback(lambda _: self.relays.load())
        d.addCallback(lambda _: self._start_children())
        d.addCallbacks(self._ready.callback, self._ready.errback)

    def _start_children(self):
        # Children start only once the registry is loaded: no presence before the index.
        self.api.setServiceParent(self)
        self.xmpp.setServiceParent(self)
        service.MultiService.startService(self)
        self.sweeper.start(self._sweep_every, now=False)
        self.deployments.start()

    def stopService(self):
        if self.sweeper.running:
            self.sweeper.stop()
        self.deployments.stop()
        if self._reconcile_call is not None and self._reconcile_call.active():
            self._reconcile_call.cancel()
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        d.addBoth(lambda _: self.store.close())
        return d

    def when_ready(self):
        return self._ready

    def status_line(self):
        state = "connected" if self.xmpp.connected else "not connected"
        return "XMPP %s as %s; %d machines online" % (
            state, self.jid.full(), len(self.registry._online))

    def reload(self, cfg):
        """SIGHUP: presence timings, the blacklist, the assessor and the admission rate."""
        self.cfg = cfg
        self.registry.blacklist = frozenset(cfg["registry"]["blacklisted_mac_addresses"])
        self.enrolment.assessor = self.assessor = Assessor.from_config(cfg["assessor"])
        self.enrolment.admission = Admission(cfg["registry"]["max_registrations_per_second"],
                                             self.reactor)

    def _session_changed(self, up):
        self.registry.xmpp_status = {"connected": up, "jid": self.jid.full()}
        if not up:
            return
        self.registry.session_started()
        if self._reconcile_call is not None and self._reconcile_call.active():
            self._reconcile_call.cancel()
        self._reconcile_call = self.reactor.callLater(
            self.cfg["presence"]["reconcile_after"], self.registry.reconcile)

    def _sweep(self):
        if not self.xmpp.connected:
            return
        presence_cfg = self.cfg["presence"]
        limit = max(1, int(presence_cfg["max_pings_per_second"] * self._sweep_every))
        sent_at = self.reactor.seconds()
        for uid, full_jid in self.registry.due_for_ping(presence_cfg["ping_after"], limit):
            d = self.pinger.ping(JID(full_jid), presence_cfg["ping_timeout"])
            d.addCallback(lambda alive, u=uid, j=full_jid:
                          self.registry.ping_answered(u, j, alive, sent_at))
            d.addErrback(lambda f: self.log.failure("ping sweep", f))
