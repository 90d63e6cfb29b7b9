"""Admission control for registrations: a fleet coming back after a power cut must
converge, not stampede. Above the configured rate, agents are told how long to wait
(`ret` 429 with `retry_after`), with jitter so they do not all come back together.
"""

import random


class Admission:
    """A token bucket: `rate` registrations a second, bursts up to `burst`."""

    def __init__(self, rate, clock, *, burst=None, rand=random.random):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self.clock = clock
        self.rand = rand
        self._tokens = self.burst
        self._stamp = clock.seconds()
        self._waiting = 0.0  # seconds of demand already promised to later slots

    def admit(self):
        """None if admitted now, else the seconds the agent should wait (jittered)."""
        now = self.clock.seconds()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._waiting = max(0.0, self._waiting - elapsed)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        # Spread the refused ones over the time the backlog takes to drain.
        self._waiting += 1.0 / self.rate
        return round(1.0 + self._waiting * (1.0 + self.rand()), 3)
