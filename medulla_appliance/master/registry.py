"""The registry of machines: enrolment, presence, liveness, and what the API reads.

Presence is decided here, in memory, in the order events arrive; each transition is then
written to the store (one writer thread keeps that order) so that history and the
online/offline state survive a restart of the master.
"""

import uuid as uuid_mod

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID

from .. import __version__
from . import storage
from .logic import identity

HISTORY_LIMIT = 50
#: A machine marked offline for an unanswered ping, whose session no presence said was
#: over, is pinged again this many times (after ping_after, then twice, four times... as
#: long): a late answer under load brings it back without waiting for it to speak.
SUSPECT_PINGS = 5
#: An "unavailable" this soon after a session came up may be the previous session's:
#: an agent that reconnects with the same resource can bind before the server closes its
#: old, silent connection. The machine stays online until a ping at the next sweep asks
#: the session: the server answers at once with an error when there is none.
RECONNECT_RACE_SECONDS = 10.0


class Registry:
    """Machines known to the master and which of them are online right now."""

    log = Logger()

    def __init__(self, store, clock, blacklist, *, new_uuid=None):
        self.store = store
        self.clock = clock
        self.blacklist = frozenset(blacklist)
        self.new_uuid = new_uuid or (lambda: "m-" + uuid_mod.uuid4().hex[:20])
        self.started_at = clock.seconds()
        self.xmpp_status = {"connected": False, "jid": ""}
        self._uuid_by_jid = {}      # bare JID -> uuid
        self._jid_by_uuid = {}      # uuid -> bare JID
        self._key_by_jid = {}       # bare JID -> pinned public key text
        self._online = {}           # uuid -> full JID of the live session
        self._heard = {}            # uuid -> last time we heard from it
        self._pinging = set()
        self._stored_online = set()  # online in the store, not yet confirmed this session
        self._suspect = {}          # uuid -> [full JID, pings since]: offline for a ping
        self._online_since = {}     # uuid -> when its current session came up

    @defer.inlineCallbacks
    def load(self):
        """Read the index of known machines from the store."""
        rows = yield self.store.run(storage.index_rows)
        keys = yield self.store.run(lambda c: dict(
            c.execute("SELECT jid, public_key FROM machines WHERE public_key != ''").fetchall()))
        for uuid, jid, _fingerprint, online in rows:
            self._uuid_by_jid[jid] = uuid
            self._jid_by_uuid[uuid] = jid
            if online:
                self._stored_online.add(uuid)
        self._key_by_jid.update(keys)
        self.log.info("registry loaded: {n} machines", n=len(rows))

    # -- enrolment ---------------------------------------------------------------------

    def public_key_for(self, bare_jid):
        """The pinned public key text of an enrolled agent's bare JID, or None."""
        return self._key_by_jid.get(bare_jid)

    @defer.inlineCallbacks
    def register(self, sender, facts, fingerprint, relay):
        """Enrol or update the machine behind a verified registration; returns its uuid.

        Raises identity.Refused when the MACs belong to a machine with another key.
        """
        now = self.clock.seconds()
        ids = identity.identity_macs(facts, self.blacklist)
        new_uuid = self.new_uuid()
        bare, resource = sender.userhost(), sender.resource or ""

        def transaction(conn):
            decision = identity.decide(facts, fingerprint,
                                       storage.by_fingerprint(conn, fingerprint),
                                       storage.by_macs(conn, ids))
            uid = decision.uuid or new_uuid
            storage.save_registration(
                conn, uid, decision.kind == "new", facts,
                {"jid": bare, "resource": resource, "relay": relay,
                 "key_fingerprint": fingerprint, "online": 1, "last_seen": now}, ids, now)
            if decision.kind == "new":
                storage.add_event(conn, uid, now, "registered", "enrolled as %s" % bare)
            elif decision.renamed_from:
                storage.add_event(conn, uid, now, "renamed",
                                  "%s -> %s" % (decision.renamed_from, facts.hostname))
            if uid not in self._online:  # a read of a dict: safe from this thread
                storage.add_event(conn, uid, now, "online", "registered from %s" % sender.full())
            return decision, uid

        decision, uid = yield self.store.run(transaction)
        old = self._jid_by_uuid.get(uid)
        if old is not None and old != bare:  # renamed: the old JID no longer speaks for it
            self._uuid_by_jid.pop(old, None)
            self._key_by_jid.pop(old, None)
        self._uuid_by_jid[bare] = uid
        self._jid_by_uuid[uid] = bare
        self._key_by_jid[bare] = facts.public_key
        if self._online.get(uid) != sender.full():
            self._online_since[uid] = now
        self._online[uid] = sender.full()
        self._heard[uid] = now
        self._stored_online.discard(uid)
        if decision.kind == "new":
            self.log.info("machine {host} enrolled as {uuid} ({jid})",
                          host=facts.hostname, uuid=uid, jid=sender.full())
        elif decision.renamed_from:
            self.log.info("machine {uuid} renamed {old} -> {host}",
                          uuid=uid, old=decision.renamed_from, host=facts.hostname)
        return uid

    def reset_key(self, uid):
        """Forget a machine's pinned key: its next enrolment pins a new one."""
        self._key_by_jid.pop(self._jid_by_uuid.get(uid), None)
        return self.store.run(storage.reset_key, uid, self.clock.seconds())

    # -- presence ----------------------------------------------------------------------

    def uuid_for(self, jid):
        return self._uuid_by_jid.get(jid.userhost())

    def online_uuids(self):
        """The uuids of the machines online now."""
        return set(self._online)

    def full_jid(self, uid):
        """The JID of a machine's live session, or None when it is offline."""
        full = self._online.get(uid)
        return JID(full) if full else None

    def bare_jid(self, uid):
        return self._jid_by_uuid.get(uid, "")

    def available(self, jid, detail=None):
        """An enrolled agent's session is up (presence available)."""
        uid = self.uuid_for(jid)
        if uid is None:
            return None
        self._heard[uid] = self.clock.seconds()
        self._stored_online.discard(uid)
        self._suspect.pop(uid, None)
        if self._online.get(uid) == jid.full():
            return None
        self._online[uid] = jid.full()
        self._online_since[uid] = self.clock.seconds()
        return self._write_presence(uid, True, detail or "presence from %s" % jid.full(),
                                    jid.resource or "")

    def unavailable(self, jid, detail="presence unavailable"):
        """An agent's session ended (or stopped answering)."""
        uid = self.uuid_for(jid)
        if uid is not None and self._suspect.get(uid, [None])[0] == jid.full():
            del self._suspect[uid]  # the session we doubted is over: stop pinging it
        if uid is None or self._online.get(uid) != jid.full():
            return None  # an old session going away after a newer one started
        if self.clock.seconds() - self._online_since.get(uid, 0) < RECONNECT_RACE_SECONDS:
            self._heard[uid] = 0  # maybe the old session's: ask the live one at the next sweep
            return None
        return self._go_offline(uid, detail)

    def heard(self, jid):
        """A verified envelope from the session ``jid``: that agent is alive. One marked
        offline meanwhile (its ping answer came too late under load) is online again:
        its session never ended, so no presence would ever say so."""
        uid = self.uuid_for(jid)
        if uid is None:
            return None
        if uid in self._online:
            self._heard[uid] = self.clock.seconds()
            return None
        if not jid.resource:
            return None
        return self.available(jid, "heard from %s" % jid.full())

    def due_for_ping(self, silent_for, limit):
        """Up to `limit` (uuid, full JID) of online agents silent for `silent_for` seconds
        and not being pinged, the longest silent first: a fleet that went quiet at once
        is pinged at a bounded rate, never all together. Suspects (offline for a ping
        they did not answer) come again after `silent_for`, then twice that, and so on."""
        now = self.clock.seconds()
        silent = [(self._heard.get(u, 0), u, j) for u, j in self._online.items()
                  if self._heard.get(u, 0) <= now - silent_for and u not in self._pinging]
        silent += [(self._heard.get(u, 0), u, j) for u, (j, pings) in self._suspect.items()
                   if self._heard.get(u, 0) <= now - silent_for * 2 ** pings
                   and u not in self._pinging]
        due = [(u, j) for _, u, j in sorted(silent)[:limit]]
        self._pinging.update(u for u, _ in due)
        return due

    def ping_answered(self, uid, full_jid, alive, sent_at):
        """The outcome of a ping sent at `sent_at`. Anything heard from the agent since
        then proves it alive too: a slow answer under load is not a death."""
        self._pinging.discard(uid)
        if uid in self._suspect and self._suspect[uid][0] == full_jid:
            return self._suspect_answered(uid, full_jid, alive)
        if self._online.get(uid) != full_jid:
            return None
        if alive:
            self._heard[uid] = self.clock.seconds()
            return None
        if self._heard.get(uid, 0) > sent_at:
            return None
        d = self._go_offline(uid, "no answer to ping")
        self._suspect[uid] = [full_jid, 0]
        self._heard[uid] = self.clock.seconds()
        return d

    def _suspect_answered(self, uid, full_jid, alive):
        if alive:
            return self.available(JID(full_jid), "answered a ping from %s" % full_jid)
        self._suspect[uid][1] += 1
        self._heard[uid] = self.clock.seconds()
        if self._suspect[uid][1] >= SUSPECT_PINGS:
            del self._suspect[uid]
        return None

    def reconcile(self):
        """After (re)connecting: machines still marked online that sent no presence."""
        stale = list(self._stored_online)
        self._stored_online.clear()
        return defer.gatherResults([
            self._write_presence(u, False, "no presence since the master reconnected")
            for u in stale])

    def session_started(self):
        """Our XMPP session is (again) up: every online machine must show itself anew."""
        self._stored_online.update(self._online)
        self._online.clear()
        self._pinging.clear()
        self._suspect.clear()

    def _go_offline(self, uid, detail):
        self._online.pop(uid, None)
        self._pinging.discard(uid)
        return self._write_presence(uid, False, detail)

    def _write_presence(self, uid, online, detail, resource=None):
        now = self.clock.seconds()
        self.log.info("machine {uuid} {state}: {detail}", uuid=uid,
                      state="online" if online else "offline", detail=detail)
        d = self.store.run(storage.set_online, uid, online, now, detail, resource)
        d.addErrback(lambda f: self.log.failure("cannot record presence of {uuid}", f, uuid=uid))
        return d

    # -- what the admin API reads ------------------------------------------------------

    def _with_live_last_seen(self, machines):
        for m in machines:
            if m["uuid"] in self._heard:
                m["last_seen"] = max(m["last_seen"] or 0, self._heard[m["uuid"]])
        return machines

    def list_machines(self, online=None):
        return self.store.run(storage.list_machines, online).addCallback(
            self._with_live_last_seen)

    def find_machines(self, name):
        return self.store.run(storage.find_machines, name).addCallback(
            self._with_live_last_seen)

    def machine_history(self, uid, limit=HISTORY_LIMIT):
        return self.store.run(storage.history, uid, limit)

    def status(self):
        def build(counts):
            return {"version": __version__, "xmpp": dict(self.xmpp_status),
                    "machines": counts, "started_at": self.started_at}
        return self.store.run(storage.counts).addCallback(build)
