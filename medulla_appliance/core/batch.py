"""Gathering changes for a moment and sending them together."""


class FlushLater:
    """Calls ``flush()`` once, ``delay`` seconds after the first ``soon()`` since the last
    flush: changes that come in a burst leave in one message instead of one each."""

    def __init__(self, clock, delay, flush):
        self.clock, self.delay, self._flush = clock, delay, flush
        self._call = None

    def soon(self):
        if self._call is None:
            self._call = self.clock.callLater(self.delay, self._fire)

    def cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self):
        self._call = None
        self._flush()
