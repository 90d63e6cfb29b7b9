"""medulla-agent's service: one XMPP link to its server, presence, enrolment."""

import os
import random
import socket

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core import keys
from medulla_appliance.core.xmpp.auth import tls_options
from medulla_appliance.core.xmpp.channel import EnvelopeChannel
from medulla_appliance.core.xmpp.client import XMPPClientService
from medulla_appliance.core.xmpp.handlers import DiscoInfoHandler, PingHandler

from .config import ENROLMENT_KEY_CHARS
from .deploy import Jobs
from .download import Downloader
from .enrolment import Enrolment
from .facts import collect
from .protocol import AgentPresence
from .runner import Runner
from .state import AgentState

RESULTS = ("result.agent.assess", "result.agent.register")


def agent_jid(facts, suffix, primary_mac, domain):
    """HOST.SFX@DOMAIN/MAC, as Medulla names agents."""
    return JID("%s.%s@%s/%s" % (facts["hostname"].lower(), suffix, domain,
                                primary_mac.replace(":", "")))


class AgentService(service.MultiService):
    """Keeps the workstation connected, present and enrolled.

    `facts` (a callable returning the facts dict with `primary_mac`) and `state` are
    injectable so that many agents can run in one process for load tests.
    """

    log = Logger()

    def __init__(self, cfg, reactor, *, facts=None, state=None, rand=random.random):
        super().__init__()
        self.cfg, self.reactor, self.rand = cfg, reactor, rand
        conn, enrolment = cfg["connection"], cfg["enrolment"]
        self.enrolment_key = enrolment["enrolment_key"]
        if len(self.enrolment_key) != ENROLMENT_KEY_CHARS:
            raise ValueError("[enrolment] enrolment_key must be %d characters, got %d"
                             % (ENROLMENT_KEY_CHARS, len(self.enrolment_key)))
        self.domain = conn["domain"]
        self.master_jid = JID(enrolment["master_jid"] or "master@%s/master" % self.domain)
        self.master_key = keys.load_public_key(enrolment["master_public_key"])
        self.state = state or AgentState(cfg["agent"]["state_dir"])
        self.collect = facts or (lambda: collect(cfg["agent"]["inventory_tag"]))
        self.target = (conn["server"], conn["port"])
        assessed = self.state["assessment"]
        if isinstance(assessed, dict) and assessed.get("from") == list(self.target):
            self.target = (assessed["server"], assessed["port"])
        self.enrolment = Enrolment(reactor, self._send_request, self._assessed,
                                   self._registered, rand=rand)
        self.link = self.channel = self.facts = self.jid = None
        self.registered = False
        self.jobs = Jobs(os.path.join(self.state.directory, "deployments"), reactor,
                         self._send_to_master, Downloader(reactor, conn["ca_file"]),
                         lambda cwd: Runner(reactor, cwd),
                         max_bytes=cfg["agent"]["max_package_bytes"])

    def startService(self):
        super().startService()
        self._connect()
        self.jobs.resume()

    def status_line(self):
        state = "connected" if self.link and self.link.connected else "connecting"
        return "%s to %s:%d as %s; %s" % (state, self.target[0], self.target[1],
                                          self.jid.full() if self.jid else "?",
                                          self.enrolment.state)

    def _connect(self):
        facts = dict(self.collect())
        primary = facts.pop("primary_mac")
        self.facts = facts
        self.jid = agent_jid(facts, self.state["suffix"], primary, self.domain)
        self.jobs.env = self._runtime_env()
        server, port = self.target
        conn = self.cfg["connection"]
        self.link = XMPPClientService(
            self.jid, self.state["password"],
            endpoints.HostnameEndpoint(self.reactor, server, port),
            tls_options(conn["ca_file"], self.domain), clock=self.reactor,
            rand=self.rand, register_wanted=self._account_missing,
            max_delay=conn["max_reconnect_delay"],
            keepalive=(conn["keepalive_interval"], conn["keepalive_timeout"]))
        self.channel = EnvelopeChannel(self.jid, self.state.private_key, self.reactor,
                                       self._trust)
        for action in RESULTS:
            self.channel.handle(action, self._on_result)
        self.channel.handle("deploy.start", self.jobs.on_start)
        self.channel.handle("deploy.stop", self.jobs.on_stop)
        self.channel.handle("result.deploy.result", self.jobs.on_ack)
        for handler in (AgentPresence(self.master_jid, self._session_changed,
                                      self._master_changed),
                        self.channel.messages, PingHandler(),
                        DiscoInfoHandler(kind="pc", name="medulla-agent")):
            self.link.addHandler(handler)
        self.link.setServiceParent(self)

    def _runtime_env(self):
        """What package steps may read about this machine (Medulla's run-time templates)."""
        ips = self.facts.get("ips", [])
        uname = os.uname()
        return {
            "MEDULLA_HOSTNAME": self.facts["hostname"], "MEDULLA_FQDN": socket.getfqdn(),
            "MEDULLA_JID_MASTER": self.master_jid.full(), "MEDULLA_JID_MACHINE": self.jid.full(),
            "MEDULLA_JID_RELAY": self.master_jid.full(),
            "MEDULLA_IP_MACHINE": ips[0] if ips else "", "MEDULLA_IPS": " ".join(ips),
            "MEDULLA_MACS": " ".join(self.facts.get("macs", [])),
            "MEDULLA_IP_MASTER": self.target[0], "MEDULLA_IP_RELAY": self.target[0],
            "MEDULLA_ARCH": uname.machine, "MEDULLA_OS_NAME": self.facts.get("os", ""),
            "MEDULLA_KERNEL_VERSION": uname.release, "MEDULLA_TMP_DIR": "/tmp",
            "MEDULLA_USER": "root", "MEDULLA_HOME": "/root",
            "MEDULLA_PYTHON": "/usr/bin/python3"}

    def _account_missing(self):
        # The account belongs to a JID; a renamed machine has a new JID, so a new account.
        return self.state["account_jid"] != self.jid.userhost()

    def _trust(self, sender, signed):
        # Only the master's JID, and only with the master's key (PROTOCOL.md).
        return self.master_key if sender.userhostJID() == self.master_jid.userhostJID() else None

    def _session_changed(self, up):
        if not up:
            self.enrolment.session_ended()
            return
        if self._account_missing():
            self.state.update(account_jid=self.jid.userhost())
        self.enrolment.session_started()

    def _master_changed(self, available):
        if available:
            self.enrolment.master_available()
            self.jobs.resend_results()

    def _send_to_master(self, action, data, session):
        if self.channel is not None:
            self.channel.send_new(self.master_jid, action, data, sessionid=session)

    def _send_request(self, action):
        data = dict(self.facts, public_key=self.state.public_key_text)
        data["psk_mac"] = keys.registration_mac(self.enrolment_key, data)
        self.channel.send_new(self.master_jid, action, data)

    def _on_result(self, sender, envelope):
        self.enrolment.result(envelope.action, envelope.ret, envelope.data)

    def _assessed(self, data):
        server, port = data.get("server"), data.get("port")
        if not server or not isinstance(port, int) or (server, port) == self.target:
            return False
        self.log.info("assessor sends us to relay {relay} at {server}:{port}",
                      relay=data.get("relay"), server=server, port=port)
        self.state.update(assessment={"from": list(self.target), "server": server,
                                      "port": port, "relay": data.get("relay")})
        old = self.link
        self.target = (server, port)
        self.reactor.callLater(0, self._switch, old)
        return True

    def _switch(self, old):
        old.disownServiceParent()
        self._connect()

    def _registered(self, data):
        self.registered = True
        self.state.update(uuid=data.get("uuid"))
        self.log.info("registered with the master as {uuid} (relay {relay})",
                      uuid=data.get("uuid"), relay=data.get("relay"))
