"""The XMPP link of a server-side daemon (medulla-syncthing, -pxe, -guard, -relay) to the
master: one account, envelopes signed with this host's key, answers matched by sessionid.

On the master host such a daemon logs in as the master's own account with a resource of
its own (``master@DOMAIN/pxe``) and signs with the master's key. On a relay host it logs
in as ``relay-NAME@DOMAIN/<daemon>`` and signs with the relay's key, which the master
pins when the relay enrols: at each session start the link first sends
``relay.register`` (:mod:`.relay_enrolment`), and only once the master accepted it is the
link ``connected`` and are the ``on_session`` callbacks told.

Each daemon's schema takes its ``[xmpp]`` and ``[keys]`` sections from
:func:`link_sections`; :class:`ApplianceLink` is built from them::

    link = ApplianceLink(cfg, reactor, name="medulla-pxe")
    link.setServiceParent(daemon_service)
    link.on_session(up, down)                  # told when the session comes and goes
    d = link.request("pxe.menu", {"mac": m})    # fires with the answer's data
    link.notify("guard.ban", {...})             # no answer awaited
    link.handle("pxe.reload", handler)          # orders from the master
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID
from wokkel.subprotocols import XMPPHandler

from ... import __version__
from .. import keys
from ..config import Key
from .auth import tls_options
from .channel import EnvelopeChannel
from .client import XMPPClientService
from .handlers import DiscoInfoHandler, PingHandler
from .link_errors import LinkDown, LinkError, LinkRefused, LinkTimeout
from .relay_enrolment import RelayEnrolment, registration, relay_name

__all__ = ["ApplianceLink", "LinkDown", "LinkError", "LinkRefused", "LinkTimeout",
           "link_sections", "master_trust"]

DEFAULT_REQUEST_TIMEOUT = 10.0


def link_sections(*, password_file: str, private_key: str, jid_example: str) -> dict:
    """The ``[xmpp]`` and ``[keys]`` sections of a server-side daemon's schema."""
    return {
        "xmpp": {
            "jid": Key("str", "",
                       help="full JID this daemon logs in as, e.g.\n"
                            f"{jid_example}; empty: no XMPP link"),
            "password_file": Key("secret_file", password_file,
                                 help="file (mode 0600) holding the XMPP account's password"),
            "server": Key("str", "127.0.0.1", help="XMPP server to connect to"),
            "port": Key("int", 5222, min=1, max=65535, help="its client-to-server port"),
            "ca_file": Key("path", "/etc/medulla/pki/ca.pem",
                           help="CA that signed the XMPP server's certificate"),
            "master_jid": Key("str", "master@medulla.local/master",
                              help="the master's full JID: where this daemon's envelopes go"),
            "keepalive_interval": Key("duration", "30s", min=1, max=3600,
                                      help="ping the XMPP server this often"),
            "keepalive_timeout": Key("duration", "10s", min=1, max=600,
                                     help="no answer within this: reconnect"),
        },
        "keys": {
            "private_key": Key("path", private_key,
                               help="this host's Ed25519 signing key, created at first start\n"
                                    "(on the master host: the master's own key)"),
            "master_public_key": Key("str", "",
                                     help="the master's public key (ed25519:...): its\n"
                                          "envelopes verify with it; empty: only when this\n"
                                          "daemon uses the master's own account and key"),
            "enrolment_key_file": Key("secret_file", None,
                                      help="file (mode 0600) holding the installation's\n"
                                           "32-character enrolment key: a relay host's\n"
                                           "daemons enrol with it (relay.register); not\n"
                                           "needed with the master's own account"),
        },
    }


def master_trust(master_jid, master_public_key):
    """EnvelopeChannel trust: only the master's envelopes, verified with its key (or no
    one when the key is not known)."""
    master = (JID(master_jid) if isinstance(master_jid, str) else master_jid).userhost().lower()

    def trust(sender, signed):
        if master_public_key is not None and sender.userhost().lower() == master:
            return master_public_key
        return None

    return trust


class SessionWatcher(XMPPHandler):
    """Calls ``up()`` when an XMPP session is ready, ``down()`` when it is lost."""

    def __init__(self, up, down):
        super().__init__()
        self.up, self.down = up, down

    def connectionInitialized(self):
        self.up()

    def connectionLost(self, reason):
        self.down()


class Requests:
    """Requests waiting for their ``result.<action>``, by sessionid, each with a timeout."""

    log = Logger()

    def __init__(self, channel, clock):
        self.channel, self.clock = channel, clock
        self.pending: dict[str, tuple[defer.Deferred, object]] = {}
        self._answered_actions: set[str] = set()

    def request(self, recipient, action, data, timeout):
        if action not in self._answered_actions:
            self.channel.handle("result." + action, self._answer)
            self._answered_actions.add(action)
        envelope = self.channel.send_new(recipient, action, data)
        d = defer.Deferred(lambda _: self._forget(envelope.sessionid))
        call = self.clock.callLater(timeout, self._timed_out, envelope.sessionid, action,
                                    timeout)
        self.pending[envelope.sessionid] = (d, call)
        return d

    def _forget(self, sessionid):
        _, call = self.pending.pop(sessionid, (None, None))
        if call is not None and call.active():
            call.cancel()

    def _timed_out(self, sessionid, action, timeout):
        d, _ = self.pending.pop(sessionid, (None, None))
        if d is not None:
            d.errback(LinkTimeout(f"no answer to {action} within {timeout:g} s"))

    def _answer(self, sender, envelope):
        d, call = self.pending.pop(envelope.sessionid, (None, None))
        if d is None:
            self.log.debug("late or unknown answer {action} {sessionid} from {sender}",
                           action=envelope.action, sessionid=envelope.sessionid,
                           sender=sender.full())
            return None
        if call.active():
            call.cancel()
        if envelope.ret == 0:
            d.callback(envelope.data)
        else:
            d.errback(LinkRefused(envelope.ret, envelope.data))
        return None

    def fail_all(self, reason):
        pending, self.pending = self.pending, {}
        for d, call in pending.values():
            if call.active():
                call.cancel()
            d.errback(LinkDown(reason))


class ApplianceLink(service.MultiService):
    """The XMPP session of one server-side daemon, built from its ``[xmpp]`` and
    ``[keys]`` sections (see :func:`link_sections`). ``name`` is the daemon's name, shown
    in disco#info."""

    log = Logger()

    def __init__(self, cfg, reactor, *, name):
        super().__init__()
        xcfg = cfg["xmpp"]
        self.name = name
        self.clock = reactor
        self.jid = JID(xcfg["jid"])
        self.master_jid = JID(xcfg["master_jid"])
        self.private_key = keys.load_or_create_private_key(cfg["keys"]["private_key"])
        self.channel = EnvelopeChannel(self.jid, self.private_key, reactor,
                                       master_trust(self.master_jid, self._master_key(cfg)))
        self.requests = Requests(self.channel, reactor)
        self.online = False
        self.enrolment = self._relay_enrolment(cfg, reactor)
        self._watchers: list[tuple] = []
        self.xmpp = XMPPClientService(
            self.jid, cfg.read_secret("xmpp", "password_file"),
            endpoints.HostnameEndpoint(reactor, xcfg["server"], xcfg["port"]),
            tls_options(xcfg["ca_file"], self.jid.host), clock=reactor,
            keepalive=(xcfg["keepalive_interval"], xcfg["keepalive_timeout"]))
        for handler in (self.channel.messages, SessionWatcher(self._up, self._down),
                        PingHandler(), DiscoInfoHandler(kind="bot", name=name)):
            self.xmpp.addHandler(handler)
        self.xmpp.setServiceParent(self)

    def _relay_enrolment(self, cfg, reactor):
        """None with the master's own account; else the relay's enrolment (ValueError or
        ConfigError when the JID or the enrolment key does not allow one)."""
        if self.jid.userhost().lower() == self.master_jid.userhost().lower():
            return None
        name = relay_name(self.jid)
        for key, what in (("enrolment_key_file", "the file holding the enrolment key"),
                          ("master_public_key", "the master's answer is read with it")):
            if not cfg["keys"][key]:
                raise ValueError(f"[keys] {key}: needed to enrol relay {name} ({what})")
        data = registration(name, self.name, __version__, self.private_key,
                            cfg.read_secret("keys", "enrolment_key_file"))
        return RelayEnrolment(
            reactor, lambda action, data, timeout: self.requests.request(
                self.master_jid, action, data, timeout), data, lambda _answer: self._ready())

    def _master_key(self, cfg):
        configured = cfg["keys"]["master_public_key"]
        if configured:
            return keys.load_public_key(configured)
        if self.jid.userhost().lower() == self.master_jid.userhost().lower():
            return self.private_key.public_key()  # we are the master's account: same key
        self.log.warn("[keys] master_public_key is empty: {name} ignores every envelope "
                      "from the master", name=self.name)
        return None

    @property
    def connected(self):
        return self.online

    def on_session(self, up, down=lambda: None):
        """Call ``up()`` each time a session to the master is ready, ``down()`` when lost."""
        self._watchers.append((up, down))

    def handle(self, action, fn):
        """Envelopes ``action`` from the master go to ``fn(sender, envelope)``."""
        self.channel.handle(action, fn)

    def notify(self, action, data):
        """Send ``action`` to the master; LinkDown when there is no session."""
        if not self.online:
            raise LinkDown("no XMPP session to the master")
        return self.channel.send_new(self.master_jid, action, data)

    def request(self, action, data, timeout=DEFAULT_REQUEST_TIMEOUT):
        """Send ``action`` and fire with the data of its ``result.<action>``; errback with
        LinkDown, LinkTimeout or LinkRefused."""
        if not self.online:
            return defer.fail(LinkDown("no XMPP session to the master"))
        return self.requests.request(self.master_jid, action, data, timeout)

    def _up(self):
        if self.enrolment is None:
            self._ready()
        else:
            self.enrolment.start()  # _ready() once the master accepted relay.register

    def _ready(self):
        self.online = True
        for up, _ in self._watchers:
            _call(up, "session up")

    def _down(self):
        was_online, self.online = self.online, False
        if self.enrolment is not None:
            self.enrolment.stop()
        self.requests.fail_all("the XMPP session was lost")
        if was_online:  # callbacks come in pairs: no down without its up
            for _, down in self._watchers:
                _call(down, "session down")


def _call(fn, what):
    try:
        fn()
    except Exception:
        ApplianceLink.log.failure("a {what} callback failed", what=what)
