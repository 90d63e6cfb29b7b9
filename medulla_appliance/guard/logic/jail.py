"""A jail's decisions: count failures per address in a sliding window, say when to ban
and for how long, never for an allowed address. Plain code: times are passed in."""

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass

# Addresses followed at once by one jail; past this the one silent longest is forgotten,
# so a flood of one-off sources (spoofed UDP) costs bounded memory.
MAX_TRACKED = 200000


class Allowlist:
    """Addresses and networks that are never banned."""

    def __init__(self, networks=()):
        self._nets = {4: [], 6: []}
        for net in networks:
            net = ipaddress.ip_network(net, strict=False)
            self._nets[net.version].append(net)

    def __contains__(self, address):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._nets[ip.version])

    def networks(self):
        return [str(n) for n in self._nets[4] + self._nets[6]]


@dataclass(frozen=True)
class BanDecision:
    """Ban ``address`` for ``seconds``; it is offence number ``offence`` in the window."""

    address: str
    seconds: float
    offence: int
    failures: int


class FailureWindow:
    """Failure times per address, keeping only those within ``findtime``."""

    def __init__(self, findtime, max_tracked=MAX_TRACKED):
        self.findtime = findtime
        self.max_tracked = max_tracked
        self._times = OrderedDict()

    def add(self, address, now):
        """Record one failure; returns how many fall within the window now."""
        times = self._times.pop(address, None)
        if times is None:
            times = deque()
            if len(self._times) >= self.max_tracked:
                self._times.popitem(last=False)
        self._times[address] = times
        times.append(now)
        horizon = now - self.findtime
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)

    def forget(self, address):
        self._times.pop(address, None)

    def prune(self, now):
        """Drop addresses with no failure within the window."""
        horizon = now - self.findtime
        for address in [a for a, t in self._times.items() if not t or t[-1] <= horizon]:
            del self._times[address]

    def __len__(self):
        return len(self._times)

    def snapshot(self, now):
        """{address: [times]} of the failures still within the window (for the state file)."""
        self.prune(now)
        return {address: list(times) for address, times in self._times.items()}

    def restore(self, snapshot, now):
        """Failures from ``snapshot()``; those out of the window, and junk, are skipped."""
        if not isinstance(snapshot, dict):
            return
        horizon = now - self.findtime
        for address, times in list(snapshot.items())[-self.max_tracked:]:
            if not isinstance(times, list):
                continue
            kept = [float(t) for t in times if isinstance(t, (int, float)) and horizon < t <= now]
            if kept:
                self._times[address] = deque(sorted(kept))


class BanPolicy:
    """How long a ban lasts: ``bantime``, or growing for repeat offenders."""

    def __init__(self, bantime, *, increment=False, factor=2.0, maximum=7 * 86400.0,
                 repeat_window=86400.0):
        self.bantime, self.increment = bantime, increment
        self.factor, self.maximum, self.repeat_window = factor, maximum, repeat_window

    def offence(self, history, now):
        """The number of this offence given ``history`` = (count, time of last ban)."""
        if not history:
            return 1
        count, last = history
        return count + 1 if now - last <= self.repeat_window else 1

    def duration(self, offence):
        if not self.increment or offence <= 1:
            return self.bantime
        return min(self.maximum, self.bantime * self.factor ** (offence - 1))


class JailLogic:
    """One jail's counting and ban decisions (``failure`` is all the service calls)."""

    def __init__(self, name, maxretry, findtime, policy, allowlist):
        self.name, self.maxretry = name, maxretry
        self.window = FailureWindow(findtime)
        self.policy, self.allowlist = policy, allowlist
        self.failures_seen = 0
        self.ignored_allowed = 0

    def failure(self, address, now, history=None):
        """A failure from ``address`` at ``now``: a BanDecision, or None.

        ``history`` is (offences, time of the last ban) of the address, for increments.
        """
        self.failures_seen += 1
        if address in self.allowlist:
            self.ignored_allowed += 1
            return None
        count = self.window.add(address, now)
        if count < self.maxretry:
            return None
        self.window.forget(address)
        offence = self.policy.offence(history, now)
        return BanDecision(address, self.policy.duration(offence), offence, count)
