"""Telling the master which packages are complete where: ``package.synced`` envelopes
(PROTOCOL.md; Medulla's ``notifysyncthing``), signed with this relay's Ed25519 key.

``data`` of one envelope::

    {"relay": "lyon", "snapshot": false,
     "complete": [{"package_id": "firefox-128", "descriptor_sha256": "9f86..."}],
     "gone": [{"package_id": "firefox-127", "descriptor_sha256": "2c26..."}]}

Changes are gathered for ``batch_delay`` and sent together, the last word on a package
winning. At each XMPP session start the whole state is sent as a snapshot
(``"snapshot": true``: the listed packages are exactly those complete on that relay), so
nothing said while the link was down is lost; a snapshot too big for one envelope
continues in envelopes with ``"snapshot": false``.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID

from ..core.batch import FlushLater

ACTION = "package.synced"
#: Entries per envelope: ~130 bytes each, far below the 256 KiB envelope limit.
MAX_ITEMS_PER_ENVELOPE = 400
BATCH_DELAY_SECONDS = 1.0


def _entries(items):
    return [{"package_id": pid, "descriptor_sha256": sha} for pid, sha in sorted(items)]


class MasterNotifier:
    """A PackageListener that sends ``package.synced`` to ``master_jid`` through
    ``channel`` (an EnvelopeChannel). ``relays``: names always covered by a snapshot,
    even with nothing complete (so the master forgets what it believed before)."""

    log = Logger()

    def __init__(self, channel, master_jid, clock, *, relays=(),
                 batch_delay=BATCH_DELAY_SECONDS, max_items=MAX_ITEMS_PER_ENVELOPE):
        self.channel = channel
        self.master_jid = JID(master_jid) if isinstance(master_jid, str) else master_jid
        self.clock, self.batch_delay, self.max_items = clock, batch_delay, max_items
        self.state: dict[str, dict[str, str]] = {name: {} for name in relays}
        self._changes: dict[str, dict[str, tuple[str, str]]] = {}
        self._later = FlushLater(clock, batch_delay, self.flush)
        self.online = False
        self.sent = 0
        channel.handle("result." + ACTION, self._answered)

    # -- PackageListener ---------------------------------------------------------------
    def on_package_complete(self, relay_name, package_id, descriptor_sha256):
        self.state.setdefault(relay_name, {})[package_id] = descriptor_sha256
        self._change(relay_name, package_id, "complete", descriptor_sha256)

    def on_package_gone(self, relay_name, package_id, descriptor_sha256):
        self.state.setdefault(relay_name, {}).pop(package_id, None)
        self._change(relay_name, package_id, "gone", descriptor_sha256)

    # -- session -------------------------------------------------------------------------
    def session_up(self):
        """A new XMPP session: send everything, as snapshots."""
        self.online = True
        self._changes.clear()
        self._later.cancel()
        for relay in sorted(self.state):
            items = list(self.state[relay].items())
            chunks = [items[i:i + self.max_items]
                      for i in range(0, len(items), self.max_items)] or [[]]
            for number, chunk in enumerate(chunks):
                self._send(relay, number == 0, chunk, [])

    def session_down(self):
        self.online = False
        self._changes.clear()  # the snapshot at the next session says it all
        self._later.cancel()

    def stop(self):
        self._later.cancel()

    # -- internals -----------------------------------------------------------------------
    def _change(self, relay, package_id, kind, sha):
        if not self.online:
            return
        self._changes.setdefault(relay, {})[package_id] = (kind, sha)
        self._later.soon()

    def flush(self):
        """Send the gathered changes now."""
        self._later.cancel()
        changes, self._changes = self._changes, {}
        if not self.online:
            return
        for relay in sorted(changes):
            items = sorted(changes[relay].items())
            for i in range(0, len(items), self.max_items):
                chunk = items[i:i + self.max_items]
                self._send(relay, False,
                           [(pid, sha) for pid, (kind, sha) in chunk if kind == "complete"],
                           [(pid, sha) for pid, (kind, sha) in chunk if kind == "gone"])

    def _send(self, relay, snapshot, complete, gone):
        data = {"relay": relay, "snapshot": snapshot, "complete": _entries(complete),
                "gone": _entries(gone)}
        try:
            self.channel.send_new(self.master_jid, ACTION, data)
            self.sent += 1
        except Exception:
            self.log.failure("cannot send {action} for {relay}", action=ACTION, relay=relay)

    def _answered(self, sender, envelope):
        if envelope.ret != 0:
            self.log.warn("the master refused {action}: {ret} {error}", action=ACTION,
                          ret=envelope.ret, error=envelope.data.get("message")
                          or envelope.data.get("error"))
        return None
