"""How many transfers may run, in all and per client; how many refusal lines we log."""

from collections import Counter


class TooManyTransfers(Exception):
    """A new transfer would go over a limit; the message says which."""


class SessionLimits:
    """Counts running transfers per client address against two ceilings."""

    def __init__(self, max_total: int, max_per_client: int):
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._per_client = Counter()
        self.total = 0

    def acquire(self, client: str) -> None:
        """Count one more transfer for ``client``, or raise ``TooManyTransfers``."""
        if self.total >= self.max_total:
            raise TooManyTransfers("server busy: %d transfers running (max_sessions)"
                                   % self.total)
        if self._per_client[client] >= self.max_per_client:
            raise TooManyTransfers("%d transfers already running for this client "
                                   "(max_sessions_per_client)" % self._per_client[client])
        self._per_client[client] += 1
        self.total += 1

    def release(self, client: str) -> None:
        count = self._per_client[client] - 1
        if count < 0:
            raise ValueError("release without acquire for %s" % client)
        if count:
            self._per_client[client] = count
        else:
            del self._per_client[client]
        self.total -= 1

    def running(self, client: str) -> int:
        return self._per_client[client]


class LineBudget:
    """At most ``per_second`` log lines a second; the rest are counted, then summed up.

    Every refusal gets its own line in normal life; a flood of junk requests must not
    flood the journal too (medulla-guard reads it).
    """

    def __init__(self, clock, per_second: int):
        self.clock = clock
        self.per_second = per_second
        self._second = None
        self._used = 0
        self.suppressed = 0

    def take(self) -> tuple[bool, int]:
        """(may log now, lines suppressed since the last allowed one)."""
        second = int(self.clock.seconds())
        if second != self._second:
            self._second, self._used = second, 0
        if self._used >= self.per_second:
            self.suppressed += 1
            return False, 0
        self._used += 1
        suppressed, self.suppressed = self.suppressed, 0
        return True, suppressed
