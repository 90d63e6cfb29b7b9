"""Syncthing's event stream: a long-poll of ``/rest/events`` kept up for as long as the
daemon runs, across Syncthing restarts.

At each (re)connection the stream learns the last event id, runs ``on_connect`` (apply the
configuration, look at everything afresh), then hands each later event to ``deliver``.
Events missed while Syncthing was away do not matter: ``on_connect`` looked at the state
itself. A restart between two polls is noticed by Syncthing's ``startTime`` changing.
"""

from __future__ import annotations

import random

from twisted.internet import defer, task
from twisted.logger import Logger

from ..core.xmpp.client import jittered_backoff
from .rest import EVENTS_POLL_SECONDS, SyncthingError

#: The events the controller acts on (Syncthing's default mask leaves some out).
EVENT_TYPES = ("ItemStarted", "ItemFinished", "LocalIndexUpdated", "RemoteIndexUpdated",
               "FolderSummary", "FolderCompletion", "StateChanged", "ConfigSaved",
               "DeviceConnected", "DeviceDisconnected")
MIN_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


class EventStream:
    """Delivers Syncthing's events one by one; ``on_connect()`` (may return a Deferred)
    runs at every (re)connection before the first poll, and ``on_gap()`` when events were
    dropped because we fell behind Syncthing's buffer."""

    log = Logger()

    def __init__(self, client, clock, deliver, *, on_connect, on_gap=lambda: None,
                 on_disconnect=lambda error: None, types=EVENT_TYPES,
                 poll_timeout=EVENTS_POLL_SECONDS, rand=random.random,
                 min_delay=MIN_RETRY_SECONDS, max_delay=MAX_RETRY_SECONDS):
        self.client, self.clock, self.deliver = client, clock, deliver
        self.on_connect, self.on_gap, self.on_disconnect = on_connect, on_gap, on_disconnect
        self.types, self.poll_timeout, self.rand = types, poll_timeout, rand
        self.min_delay, self.max_delay = min_delay, max_delay
        self.since = None  # None: (re)connect before the next poll
        self.start_time = None
        self.failures = 0
        self.connected = False
        self.last_error = None
        self._running = False
        self._pending = None  # the Deferred we wait on (a call or a retry delay)
        self._loop = None

    def start(self):
        self._running = True
        self._loop = defer.Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: f.trap(defer.CancelledError))
        self._loop.addErrback(lambda f: self.log.failure("Syncthing event stream died", f))

    def stop(self):
        """Stop polling; fires once the loop ended."""
        self._running = False
        if self._pending is not None:
            self._pending.cancel()
        return self._loop if self._loop is not None else defer.succeed(None)

    async def _wait(self, d):
        self._pending = d
        try:
            return await d
        finally:
            self._pending = None

    async def _run(self):
        while self._running:
            try:
                if self.since is None:
                    await self._connect()
                await self._poll()
            except (Exception, defer.CancelledError) as exc:  # SyncthingError, or a bug
                if not self._running:
                    return
                await self._lost(exc)

    async def _connect(self):
        status = await self._wait(self.client.status())
        latest = await self._wait(self.client.events(0, timeout=0, types=self.types, limit=1))
        self.since = latest[-1]["id"] if latest else 0
        self.start_time = status.get("startTime")
        await self._wait(defer.maybeDeferred(self.on_connect))
        if self.failures or not self.connected:
            self.log.info("Syncthing reachable (started {start}), following its events",
                          start=self.start_time)
        self.failures = 0
        self.connected = True
        self.last_error = None

    async def _poll(self):
        since = self.since
        events = await self._wait(self.client.events(since, timeout=self.poll_timeout,
                                                     types=self.types))
        if not events:
            status = await self._wait(self.client.status())
            if status.get("startTime") != self.start_time:
                self.log.info("Syncthing restarted: looking at everything again")
                self.since = None
            return
        if events[0]["id"] > since + 1:
            self.log.warn("missed Syncthing events {first}..{last}: looking at everything "
                          "again", first=since + 1, last=events[0]["id"] - 1)
            self.on_gap()
        for event in events:
            self.since = max(self.since, event["id"])
            try:
                self.deliver(event)
            except Exception:
                self.log.failure("handling Syncthing event {type}", type=event.get("type"))

    async def _lost(self, exc):
        self.failures += 1
        self.since = None
        reason = str(exc) or type(exc).__name__
        if reason != self.last_error:  # one line per new reason, not one per retry
            level = self.log.warn if isinstance(exc, SyncthingError) else self.log.error
            level("Syncthing unreachable: {error}; retrying", error=reason)
        self.last_error = reason
        if self.connected:
            self.connected = False
            self.on_disconnect(exc)
        delay = jittered_backoff(self.failures, minimum=self.min_delay,
                                 maximum=self.max_delay, rand=self.rand)
        await self._wait(task.deferLater(self.clock, delay, lambda: None))
