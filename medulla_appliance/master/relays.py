"""Relays enrolled with the master, and who may speak for which relay.

A relay host's daemons (medulla-syncthing, medulla-relay) log in as
``relay-NAME@DOMAIN/<daemon>`` and sign with the relay's Ed25519 key. They enrol the way
agents do (PROTOCOL.md, "Keys and enrolment"): ``relay.register`` carries the public key
and an HMAC-SHA256 of the registration made with the enrolment key; the master pins the
key at the first enrolment and refuses another key until an admin resets it. From then on
envelopes of appliance-only actions from that account verify with the pinned key, and a
relay speaks only for itself (``package.synced`` about another relay is refused). The
master's own account (another resource, the master's key) is the master host, which may
speak for every relay: its Syncthing watches them all.

``relay.status`` (load, packages complete, the URL agents download from) keeps a relay's
``last_seen``; a relay is shown online while it was heard within three of its status
intervals.
"""

import re
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from ..core import keys
from ..core.xmpp.channel import Refusal
from . import relay_storage as rs

#: The relay name of the master host itself (deployments.MASTER_RELAY): never enrolled.
MASTER_HOST = "master"
RELAY_PREFIX = "relay-"
#: JID local parts are lower-cased by the XMPP server (nodeprep), so relay names are too.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
DEFAULT_STATUS_INTERVAL = 60.0
OFFLINE_AFTER_INTERVALS = 3
MAX_TEXT_CHARS = 64
MAX_URL_CHARS = 1024
MAX_LOAD_ITEMS = 32
MAX_INTERVAL = 86400.0
REGISTRATION_FIELDS = ("name", "daemon", "version", "public_key")


@dataclass(frozen=True)
class Origin:
    """Who sent an appliance-only envelope: the master host, or the enrolled ``relay``."""

    relay: str
    master_host: bool = False


def relay_name_of(jid, domain):
    """NAME of a ``relay-NAME@domain`` JID, or None for any other JID."""
    user = jid.user or ""
    if jid.host != domain or not user.startswith(RELAY_PREFIX):
        return None
    name = user[len(RELAY_PREFIX):]
    return name if NAME_RE.fullmatch(name) and name != MASTER_HOST else None


def url_feeder(relay_urls, configured):
    """An ``on_package_url`` that puts a relay's own URL into ``relay_urls`` (the
    deployments' {relay: URL}) unless ``[deploy] relay_urls`` names that relay."""

    def feed(name, url):
        if name in configured:
            return
        if url:
            relay_urls[name] = url
        else:
            relay_urls.pop(name, None)

    return feed


def _text(data, key, *, required=True, limit=MAX_TEXT_CHARS):
    value = data.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value) or len(value) > limit \
            or not value.isprintable():
        raise Refusal(400, "bad-field", "%s: expected printable text of 1 to %d characters"
                      % (key, limit))
    return value


def _registration(data):
    unknown = sorted(set(data) - set(REGISTRATION_FIELDS))
    if unknown:
        raise Refusal(400, "bad-field", "unknown fields: %s" % ", ".join(unknown)[:200])
    return {key: _text(data, key, limit=200 if key == "public_key" else MAX_TEXT_CHARS)
            for key in REGISTRATION_FIELDS}


def _status(data):
    load = data.get("load", {})
    if not isinstance(load, dict) or len(load) > MAX_LOAD_ITEMS or not all(
            isinstance(k, str) and len(k) <= MAX_TEXT_CHARS and isinstance(v, (int, float))
            and not isinstance(v, bool) for k, v in load.items()):
        raise Refusal(400, "bad-field", "load: expected {name: number}, at most %d"
                      % MAX_LOAD_ITEMS)
    complete = data.get("packages_complete", 0)
    if not isinstance(complete, int) or isinstance(complete, bool) or complete < 0:
        raise Refusal(400, "bad-field", "packages_complete: expected a count")
    interval = data.get("interval", DEFAULT_STATUS_INTERVAL)
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) \
            or not 1 <= interval <= MAX_INTERVAL:
        raise Refusal(400, "bad-field", "interval: expected seconds, 1 to %d" % MAX_INTERVAL)
    url = _text(data, "package_url", required=False, limit=MAX_URL_CHARS)
    if url and not url.startswith(("http://", "https://")):
        raise Refusal(400, "bad-field", "package_url: expected http(s)://...")
    return {"load": load, "packages_complete": complete}, float(interval), url


class Relays:
    """The enrolled relays: pinned keys in memory (the store has the rest)."""

    log = Logger()

    def __init__(self, store, clock, enrolment_key, master_jid, master_public_key, *,
                 on_package_url=lambda name, url: None):
        self.store, self.clock = store, clock
        self.enrolment_key = enrolment_key
        self.master_jid = master_jid
        self.domain = master_jid.host
        self.master_public_key = master_public_key
        self.on_package_url = on_package_url
        self._keys = {}        # relay name -> pinned public key text
        self._seen = {}        # relay name -> last time heard
        self._interval = {}    # relay name -> its status interval

    @defer.inlineCallbacks
    def load(self):
        rows = yield self.store.run(rs.index_rows)
        for name, public_key, url, last_seen, interval in rows:
            if public_key:
                self._keys[name] = public_key
            self._seen[name] = last_seen or 0.0
            self._interval[name] = interval or DEFAULT_STATUS_INTERVAL
            if url:
                self.on_package_url(name, url)
        self.log.info("relays loaded: {n} known", n=len(rows))

    # -- trust -----------------------------------------------------------------------------

    def origin(self, sender):
        """The Origin of an appliance-only envelope from ``sender``, or None when it is
        neither the master host nor an enrolled relay."""
        if sender.userhost() == self.master_jid.userhost() and sender != self.master_jid:
            return Origin(MASTER_HOST, master_host=True)
        name = relay_name_of(sender, self.domain)
        if name is not None and name in self._keys:
            return Origin(name)
        return None

    def appliance_key(self, sender):
        """The key an appliance-only envelope from ``sender`` must verify with, or None."""
        origin = self.origin(sender)
        if origin is None:
            return None
        if origin.master_host:
            return self.master_public_key
        return keys.load_public_key(self._keys[origin.relay])

    def register_key(self, sender, signed):
        """relay.register verifies with the key it carries: its HMAC, checked by
        :meth:`register`, is what makes it trusted (like agent.register)."""
        claimed = signed.envelope.data.get("public_key")
        try:
            return keys.load_public_key(claimed)
        except ValueError as e:
            raise Refusal(400, "bad-field", "public_key: %s" % e) from None

    def public_key_for(self, name):
        """The pinned public key text of relay ``name``, or None."""
        return self._keys.get(name)

    def heard(self, sender):
        """A verified envelope from ``sender``: an enrolled relay is alive."""
        name = relay_name_of(sender, self.domain)
        if name in self._keys:
            self._seen[name] = self.clock.seconds()

    # -- actions ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def register(self, sender, envelope):
        """relay.register: HMAC, account, fields, then the key pinned (or checked)."""
        data = dict(envelope.data)
        mac = data.pop("psk_mac", None)
        if not keys.check_registration_mac(self.enrolment_key, data, mac):
            raise Refusal(401, "bad-enrolment-key",
                          "the registration is not authenticated by the enrolment key")
        name = relay_name_of(sender, self.domain)
        if name is None:
            raise Refusal(403, "not-a-relay-account", "relays log in as relay-NAME@%s "
                          "(NAME: a-z, 0-9, '.', '_', '-'; not 'master')" % self.domain)
        fields = _registration(data)
        if fields["name"] != name:
            raise Refusal(403, "wrong-relay", "%s speaks only for relay %s"
                          % (sender.userhost(), name))
        fingerprint = keys.fingerprint(keys.load_public_key(fields["public_key"]))
        now = self.clock.seconds()
        daemon = {"name": fields["daemon"], "version": fields["version"],
                  "resource": sender.resource or "", "registered_at": now}
        try:
            pinned = yield self.store.run(rs.save_registration, name, sender.userhost(),
                                          fields["public_key"], fingerprint, daemon, now)
        except rs.KeyMismatch as e:
            raise Refusal(409, "key-mismatch", "%s; an admin may reset it (medullactl relay "
                          "reset-key %s)" % (e, name)) from None
        self._keys[name] = fields["public_key"]
        self._seen[name] = now
        self._interval.setdefault(name, DEFAULT_STATUS_INTERVAL)
        if pinned:
            self.log.info("relay {name} enrolled by {jid} with key {fingerprint}",
                          name=name, jid=sender.full(), fingerprint=fingerprint)
        else:
            self.log.info("relay {name}: {daemon} {version} registered from {jid}", name=name,
                          daemon=fields["daemon"], version=fields["version"], jid=sender.full())
        return {"relay": name, "key_fingerprint": fingerprint, "pinned": pinned}

    @defer.inlineCallbacks
    def status(self, sender, envelope):
        """relay.status: a relay's load, packages complete and download URL."""
        origin = self.origin(sender)
        if origin is None:
            raise Refusal(403, "unknown-relay", "%s is not an enrolled relay" % sender.userhost())
        status, interval, url = _status(envelope.data)
        now = self.clock.seconds()
        known = yield self.store.run(
            rs.save_status, origin.relay, status, interval, url, now,
            create_jid=self.master_jid.userhost() if origin.master_host else None)
        if not known:
            raise Refusal(404, "unknown-relay", "no relay %s" % origin.relay)
        self._seen[origin.relay] = now
        self._interval[origin.relay] = interval
        self.on_package_url(origin.relay, url)
        return {"relay": origin.relay}

    def own_relay_only(self, handler, field="relay"):
        """``handler`` for an appliance-only action whose ``data[field]`` names a relay:
        refused (403) when a relay speaks for another one."""

        def checked(sender, envelope):
            origin = self.origin(sender)
            claimed = envelope.data.get(field)
            if origin is not None and not origin.master_host and claimed != origin.relay:
                raise Refusal(403, "not-your-relay", "relay %s cannot speak for %r"
                              % (origin.relay, str(claimed)[:MAX_TEXT_CHARS]))
            return handler(sender, envelope)

        return checked

    # -- admin -------------------------------------------------------------------------------

    def reset_key(self, name):
        """Forget relay ``name``'s pinned key (fires False when unknown): its next
        relay.register pins a new one; until then nothing from it is trusted."""
        self._keys.pop(name, None)
        return self.store.run(rs.reset_key, name, self.clock.seconds())

    def _live(self, relay):
        name = relay["name"]
        relay["last_seen"] = max(relay["last_seen"] or 0.0, self._seen.get(name, 0.0)) or None
        interval = relay["status_interval"] or DEFAULT_STATUS_INTERVAL
        relay["online"] = bool(relay["last_seen"]) and (
            self.clock.seconds() - relay["last_seen"] <= OFFLINE_AFTER_INTERVALS * interval)
        relay["enrolled"] = bool(relay["key_fingerprint"]) or name == MASTER_HOST
        return relay

    def list_relays(self):
        return self.store.run(rs.list_relays).addCallback(
            lambda relays: [self._live(r) for r in relays])

    def get_relay(self, name):
        """One relay with its packages, or None."""
        return self.store.run(rs.get_relay, name).addCallback(
            lambda relay: None if relay is None else self._live(relay))
