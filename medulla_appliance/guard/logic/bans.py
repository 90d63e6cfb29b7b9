"""The ban book: who is banned until when and by which jail, and past offences (for
ban-time increase). Plain code with times passed in; the service persists ``to_state()``
in its state folder so a restart keeps the history, while nftables keeps the bans."""

from dataclasses import asdict, dataclass

# How long a past offence is remembered, and how many addresses at most.
HISTORY_SECONDS = 30 * 86400.0
MAX_HISTORY = 200000
STATE_VERSION = 1


class BanRefused(Exception):
    """A ban that must not happen (allowlisted address, book full); str() says why."""


@dataclass
class Ban:
    address: str
    jail: str
    start: float
    until: float
    offence: int = 1
    failures: int = 0
    manual: bool = False  # by the admin (medullactl guard ban), not by a jail

    def remaining(self, now):
        return max(0.0, self.until - now)

    def describe(self, now):
        """The JSON-ready view of the ban (control socket, status)."""
        return {"address": self.address, "jail": self.jail, "offence": self.offence,
                "failures": self.failures, "remaining_s": round(self.remaining(now), 1),
                "banned_for_s": round(self.until - self.start, 1)}


class BanBook:
    """Current bans and the offence history, bounded by ``max_bans``.

    ``on_expired(ban)`` is told of each ban that ran out (the master hears of it); a ban
    lifted by ``remove()`` or replaced by ``add()`` is the caller's to report.
    """

    def __init__(self, max_bans, on_expired=lambda ban: None):
        self.max_bans = max_bans
        self.on_expired = on_expired
        self._bans = {}
        self._history = {}  # address -> [offences, time of the last ban]
        self.refused_full = 0

    def active(self, now):
        """The bans still running, soonest expiry first."""
        self.expire(now)
        return sorted(self._bans.values(), key=lambda b: b.until)

    def get(self, address, now):
        ban = self._bans.get(address)
        if ban is not None and ban.until <= now:
            del self._bans[address]
            self.on_expired(ban)
            return None
        return ban

    def history(self, address, now):
        """(offences, time of last ban) within HISTORY_SECONDS, or None."""
        item = self._history.get(address)
        if item is None or now - item[1] > HISTORY_SECONDS:
            return None
        return tuple(item)

    def add(self, address, jail, seconds, now, *, offence=1, failures=0, manual=False):
        """Record a ban; raises BanRefused when the book is full."""
        self.expire(now)
        if address not in self._bans and len(self._bans) >= self.max_bans:
            self.refused_full += 1
            raise BanRefused("%d addresses are banned already (max_bans)" % len(self._bans))
        ban = Ban(address, jail, now, now + seconds, offence, failures, manual)
        self._bans[address] = ban
        self._history[address] = [offence, now]
        if len(self._history) > MAX_HISTORY:
            self._forget_oldest()
        return ban

    def remove(self, address):
        """Forget a ban (and its offence count: an admin's unban is a pardon)."""
        self._history.pop(address, None)
        return self._bans.pop(address, None)

    def restore(self, address, remaining, now, jail="restored"):
        """A ban found in the firewall at start; keeps what the state file said of it."""
        known = self._bans.get(address)
        if known is not None:
            known.until = now + remaining
            return known
        ban = Ban(address, jail, now, now + remaining)
        self._bans[address] = ban
        return ban

    def expire(self, now):
        for address in [a for a, b in self._bans.items() if b.until <= now]:
            self.on_expired(self._bans.pop(address))

    def _forget_oldest(self):
        oldest = sorted(self._history.items(), key=lambda item: item[1][1])
        for address, _ in oldest[:len(self._history) - MAX_HISTORY]:
            del self._history[address]

    def __len__(self):
        return len(self._bans)

    # -- persistence (wall-clock times, as written in the state file) --------------------

    def to_state(self, now):
        self.expire(now)
        return {"version": STATE_VERSION,
                "bans": [asdict(b) for b in self._bans.values()],
                "history": {a: h for a, h in self._history.items()
                            if now - h[1] <= HISTORY_SECONDS}}

    def load_state(self, state, now):
        """Bans and history from ``to_state()`` output; bad entries are skipped."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return
        for item in state.get("bans", []):
            try:
                ban = Ban(**item)
            except TypeError:
                continue
            if ban.until > now:
                self._bans[ban.address] = ban
        for address, item in (state.get("history") or {}).items():
            if isinstance(item, list) and len(item) == 2 and now - item[1] <= HISTORY_SECONDS:
                self._history[address] = [int(item[0]), float(item[1])]
