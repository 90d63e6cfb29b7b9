"""Refusals logged once per sender and reason per interval: a hostile peer must not be
able to flood the journal (or medulla-guard, which reads it). Used by the envelope
channel (senders are JIDs) and medulla-relay (senders are client addresses)."""

REFUSAL_LOG_INTERVAL = 60.0


class RefusalLog:
    """Logs a refusal once per (sender, reason) per interval, counting the rest, so a
    hostile account cannot flood the journal."""

    def __init__(self, log, clock, interval=REFUSAL_LOG_INTERVAL):
        self.log, self.clock, self.interval = log, clock, interval
        self._last = {}
        self._suppressed = {}

    def refused(self, sender, action, reason, message):
        key = (sender.userhost(), reason)
        now = self.clock.seconds()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) > 10_000:  # bound memory under a flood of senders
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        self.log.warn("refused {action} from {sender}: {reason}: {message}{more}",
                      action=action or "?", sender=sender.full()[:200], reason=reason,
                      message=message, more=" (+%d similar since)" % more if more else "")
