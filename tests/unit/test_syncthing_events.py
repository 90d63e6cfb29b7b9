"""The event stream: long-poll, order, gaps, reconnection with backoff, one log line per
new reason."""

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from medulla_appliance.syncthing.events import EventStream
from medulla_appliance.testing.fake_syncthing import FakeSyncthingClient


class Stream:
    def __init__(self):
        self.clock = Clock()
        self.syncthing = FakeSyncthingClient(self.clock)
        self.delivered, self.connects, self.gaps = [], 0, 0
        self.stream = EventStream(self.syncthing, self.clock, self.deliver,
                                  on_connect=self.connected, on_gap=self.gap,
                                  types=("ItemStarted", "ItemFinished"), rand=lambda: 0.5)

    def deliver(self, event):
        if event["data"].get("boom"):
            raise RuntimeError("a handler bug")
        self.delivered.append(event["id"])

    def connected(self):
        self.connects += 1

    def gap(self):
        self.gaps += 1


@pytest.fixture
def s():
    stream = Stream()
    yield stream
    stream.stream.stop()


def test_events_after_the_connection_are_delivered_in_order(s):
    s.syncthing.emit("ItemStarted", item="old")  # before we connect: not ours to replay
    s.stream.start()
    assert s.connects == 1 and s.stream.since == 1
    s.syncthing.emit("ItemStarted", item="a")
    s.syncthing.emit("ItemFinished", item="a", boom=True)  # a failing handler is logged
    s.syncthing.emit("ItemFinished", item="b")
    assert s.delivered == [2, 4] and s.stream.since == 4


def test_events_lost_in_between_ask_for_a_full_look(s):
    s.stream.start()
    s.syncthing._next_event += 5  # Syncthing's buffer overflowed: ids jump
    s.syncthing.emit("ItemStarted", item="a")
    assert s.gaps == 1 and s.delivered == [6]


def test_reconnection_backs_off_and_logs_one_line_per_reason(s):
    logged = []

    def observer(event):
        if event.get("log_level") in (LogLevel.warn, LogLevel.error) and \
                event.get("log_namespace", "").endswith("EventStream"):
            logged.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        s.syncthing.available = False
        s.stream.start()
        times = []
        for _ in range(300):
            before = s.syncthing.calls.count("status")
            s.clock.advance(0.5)
            if s.syncthing.calls.count("status") > before:
                times.append(s.clock.seconds())
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps == sorted(gaps) and gaps[-1] <= 30 and gaps[0] < 2
        assert len(logged) == 1
        s.syncthing.available = True
        s.clock.advance(30)
        assert s.stream.connected and s.connects == 1
    finally:
        globalLogPublisher.removeObserver(observer)


def test_stop_ends_the_poll_in_progress(s):
    s.stream.start()
    d = s.stream.stop()
    assert d.called
    assert s.clock.getDelayedCalls() == []
