"""The master's side of the agent protocol: presence, and the enrolment actions
(`agent.assess`, `agent.register`). Decisions live in `logic/` and the registry; this
module only translates stanzas and envelopes into calls on them."""

from twisted.internet import defer
from twisted.logger import Logger
from wokkel import xmppim

from ..core import keys
from ..core.xmpp.channel import Refusal
from .logic import identity

SELF_SIGNED_ACTIONS = ("agent.assess", "agent.register")


class MasterPresence(xmppim.PresenceProtocol):
    """Feeds agents' presence to the registry; approves subscriptions of enrolled agents."""

    log = Logger()

    def __init__(self, registry, on_session):
        super().__init__()
        self.registry = registry
        self.on_session = on_session

    def connectionInitialized(self):
        super().connectionInitialized()
        self.available(priority=1)  # the server then probes our contacts for us
        self.on_session(True)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.on_session(False)

    def availableReceived(self, presence):
        self.registry.available(presence.sender)

    def unavailableReceived(self, presence):
        self.registry.unavailable(presence.sender)

    def subscribeReceived(self, presence):
        if self.registry.uuid_for(presence.sender) is not None:
            self.subscribed(presence.sender.userhostJID())

    def befriend(self, jid):
        """Mutual subscription with a freshly enrolled agent (PROTOCOL.md "Presence")."""
        bare = jid.userhostJID()
        self.subscribed(bare)
        self.subscribe(bare)


class EnrolmentActions:
    """agent.assess and agent.register, with every check PROTOCOL.md asks for."""

    log = Logger()

    def __init__(self, registry, assessor, admission, enrolment_key, domain, presence):
        self.registry = registry
        self.assessor = assessor
        self.admission = admission
        self.enrolment_key = enrolment_key
        self.domain = domain
        self.presence = presence

    def trust(self, sender, signed):
        """The key a sender's envelope must verify with (see EnvelopeChannel)."""
        bare = sender.userhost()
        pinned = self.registry.public_key_for(bare)
        envelope = signed.envelope
        if envelope.action in SELF_SIGNED_ACTIONS:
            claimed = envelope.data.get("public_key")
            if not isinstance(claimed, str):
                raise Refusal(400, "bad-field", "public_key: missing")
            if pinned is not None and claimed != pinned:
                raise Refusal(409, "key-mismatch",
                              "%s is enrolled with another key" % bare)
            try:
                return keys.load_public_key(claimed)
            except ValueError as e:
                raise Refusal(400, "bad-field", "public_key: %s" % e) from None
        return keys.load_public_key(pinned) if pinned is not None else None

    def _checked_facts(self, sender, envelope):
        data = dict(envelope.data)
        mac = data.pop("psk_mac", None)
        if not isinstance(mac, str) or not keys.check_registration_mac(
                self.enrolment_key, data, mac):
            raise Refusal(401, "bad-enrolment-key",
                          "the registration is not authenticated by the enrolment key")
        try:
            facts = identity.parse_facts(data)
            identity.check_sender(facts, sender, self.domain)
        except identity.Refused as e:
            raise Refusal(e.code, e.error, e.message) from None
        return facts

    def assess(self, sender, envelope):
        facts = self._checked_facts(sender, envelope)
        return self.assessor.assessment(facts.ips, facts.inventory_tag)

    @defer.inlineCallbacks
    def register(self, sender, envelope):
        facts = self._checked_facts(sender, envelope)
        wait = self.admission.admit()
        if wait is not None:
            raise Refusal(429, "busy", "too many registrations; retry later", retry_after=wait)
        relay = self.assessor.relay_for(facts.ips, facts.inventory_tag)
        fingerprint = keys.fingerprint(keys.load_public_key(facts.public_key))
        try:
            uid = yield self.registry.register(sender, facts, fingerprint, relay)
        except identity.Refused as e:
            raise Refusal(e.code, e.error, e.message) from None
        self.presence.befriend(sender)
        return {"uuid": uid, "hostname": facts.hostname, "relay": relay}
