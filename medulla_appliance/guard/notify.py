"""Telling the master about bans: ``guard.ban`` and ``guard.unban`` envelopes through the
daemon's ApplianceLink, so the admin sees every host's bans in one place.

``data`` of the two envelopes::

    guard.ban    {"snapshot": false, "bans": [{"address": "203.0.113.7", "jail": "sshd",
                  "failures": 5, "banned_at": 1763820000.0, "until": 1763820600.0,
                  "manual": false}]}
    guard.unban  {"unbans": [{"address": "203.0.113.7", "jail": "sshd",
                  "reason": "expired"}]}                 # or "admin"

Enforcement never waits for the master: the ban is in nftables before anything is said.
Changes are gathered for ``batch_delay`` and sent together, the last word on an address
winning. At each XMPP session start, and every ``snapshot_interval`` while it lasts, every ban in
force is sent as a snapshot (``"snapshot": true``: the listed bans are exactly those in
force on this host), so nothing said while the link was down is lost, nor what was said
while the master itself was restarting (our session to the XMPP server did not end, so
only the periodic snapshot tells it); a snapshot too big for one envelope continues in
envelopes with ``"snapshot": false``.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.logger import Logger

from ..core.batch import FlushLater
from ..core.xmpp.link import LinkDown

ACTION_BAN = "guard.ban"
ACTION_UNBAN = "guard.unban"
#: Bans per envelope: at most ~200 bytes each (the longest IPv6 address and jail name),
#: about 100 KiB in all, well below the 256 KiB envelope limit.
MAX_ITEMS_PER_ENVELOPE = 500
BATCH_DELAY_SECONDS = 1.0
SNAPSHOT_INTERVAL_SECONDS = 600.0
UNBAN_REASONS = ("expired", "admin")


def ban_entry(ban):
    """One ban as the master stores it (a ``logic.bans.Ban``)."""
    return {"address": ban.address, "jail": ban.jail, "failures": int(ban.failures),
            "banned_at": float(ban.start), "until": float(ban.until),
            "manual": bool(ban.manual)}


def _chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


class BanNotifier:
    """Sends ban events through ``link`` (an ApplianceLink: ``notify``, ``handle``).

    ``bans_in_force()`` returns the Ban objects in force now, for snapshots. The owner
    calls ``session_up``/``session_down`` (``link.on_session``), ``banned(ban)`` and
    ``unbanned(ban, reason)``.
    """

    log = Logger()

    def __init__(self, link, clock, bans_in_force, *, batch_delay=BATCH_DELAY_SECONDS,
                 max_items=MAX_ITEMS_PER_ENVELOPE, snapshot_interval=SNAPSHOT_INTERVAL_SECONDS):
        self.link, self.clock, self.bans_in_force = link, clock, bans_in_force
        self.batch_delay, self.max_items = batch_delay, max_items
        self.snapshot_interval = snapshot_interval
        self._snapshots = task.LoopingCall(self.send_snapshot)
        self._snapshots.clock = clock
        self.online = False
        self.sent = 0
        self._changes: dict[str, tuple[str, dict]] = {}  # address -> (action, entry)
        self._later = FlushLater(clock, batch_delay, self.flush)
        for action in (ACTION_BAN, ACTION_UNBAN):
            link.handle("result." + action, self._answered)

    # -- events from the service -----------------------------------------------------------
    def banned(self, ban):
        self._change(ban.address, ACTION_BAN, ban_entry(ban))

    def unbanned(self, ban, reason):
        self._change(ban.address, ACTION_UNBAN,
                     {"address": ban.address, "jail": ban.jail, "reason": reason})

    # -- session ---------------------------------------------------------------------------
    def session_up(self):
        """A new XMPP session: every ban in force, as a snapshot, now and periodically."""
        self.online = True
        self._stop_snapshots()
        self._snapshots.start(self.snapshot_interval, now=True)

    def send_snapshot(self):
        """Every ban in force, replacing what the master holds for this host."""
        if not self.online:
            return
        self._changes.clear()  # the snapshot says it all
        self._later.cancel()
        entries = sorted((ban_entry(b) for b in self.bans_in_force()),
                         key=lambda e: e["address"])
        for number, chunk in enumerate(_chunks(entries, self.max_items)):
            self._send(ACTION_BAN, {"snapshot": number == 0, "bans": chunk})

    def session_down(self):
        self.online = False
        self._changes.clear()  # the snapshot at the next session says it all
        self._later.cancel()
        self._stop_snapshots()

    def stop(self):
        self._later.cancel()
        self._stop_snapshots()

    def _stop_snapshots(self):
        if self._snapshots.running:
            self._snapshots.stop()

    # -- internals -------------------------------------------------------------------------
    def _change(self, address, action, entry):
        if not self.online:
            return
        self._changes[address] = (action, entry)
        self._later.soon()

    def flush(self):
        """Send the gathered changes now."""
        self._later.cancel()
        changes, self._changes = self._changes, {}
        if not self.online or not changes:
            return
        ordered = [changes[address] for address in sorted(changes)]
        bans = [entry for action, entry in ordered if action == ACTION_BAN]
        unbans = [entry for action, entry in ordered if action == ACTION_UNBAN]
        if bans:
            for chunk in _chunks(bans, self.max_items):
                self._send(ACTION_BAN, {"snapshot": False, "bans": chunk})
        if unbans:
            for chunk in _chunks(unbans, self.max_items):
                self._send(ACTION_UNBAN, {"unbans": chunk})

    def _send(self, action, data):
        try:
            self.link.notify(action, data)
            self.sent += 1
        except LinkDown:
            # Lost between two callbacks: the snapshot of the next session covers it.
            self.online = False
        except Exception:
            self.log.failure("cannot send {action} to the master", action=action)

    def _answered(self, sender, envelope):
        if envelope.ret != 0:
            data = envelope.data if isinstance(envelope.data, dict) else {}
            self.log.warn("the master refused {action}: {ret} {error}",
                          action=envelope.action.removeprefix("result."), ret=envelope.ret,
                          error=data.get("message") or data.get("error"))
        return None
