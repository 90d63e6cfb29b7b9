"""Admission control: a fleet coming back after a power cut converges instead of
stampeding. Time comes from task.Clock, jitter from an injected `rand`."""

import collections
import random

import pytest
from twisted.internet.task import Clock

from medulla_appliance.master.logic.admission import Admission


def admit_many(admission, n):
    return [admission.admit() for _ in range(n)]


def test_a_burst_up_to_the_bucket_size_is_admitted_at_once():
    admission = Admission(10, Clock(), burst=25, rand=lambda: 0.5)
    assert admit_many(admission, 25) == [None] * 25
    assert admission.admit() is not None


def test_burst_defaults_to_the_rate():
    admission = Admission(10, Clock(), rand=lambda: 0.5)
    assert admit_many(admission, 10) == [None] * 10
    assert admission.admit() is not None


def test_above_the_rate_the_agent_is_told_to_wait_a_sane_time():
    admission = Admission(10, Clock(), burst=10, rand=lambda: 0.5)
    admit_many(admission, 10)
    first = admission.admit()
    # One slot of backlog (0.1 s) on top of a 1 s floor, times 1 + jitter.
    assert first == 1.15
    waits = admit_many(admission, 99)
    assert all(1.0 <= w <= 1.0 + 2 * 100 / 10 for w in waits)
    assert waits == sorted(waits)  # later arrivals wait longer


def test_jitter_stays_between_one_and_two_backlogs():
    low = Admission(10, Clock(), burst=1, rand=lambda: 0.0)
    high = Admission(10, Clock(), burst=1, rand=lambda: 0.999)
    low.admit(), high.admit()
    lows, highs = admit_many(low, 50), admit_many(high, 50)
    for k, (a, b) in enumerate(zip(lows, highs, strict=True), start=1):
        backlog = k / 10
        assert a == pytest.approx(1.0 + backlog, abs=0.002)
        assert b == pytest.approx(1.0 + backlog * 1.999, abs=0.002)


def test_tokens_refill_at_the_rate():
    clock = Clock()
    admission = Admission(10, clock, burst=10, rand=lambda: 0.5)
    admit_many(admission, 10)
    assert admission.admit() is not None
    clock.advance(0.5)
    # 0.5 s at 10/s: five more places, not six.
    assert admit_many(admission, 5) == [None] * 5
    assert admission.admit() is not None


def test_refill_never_exceeds_the_burst():
    clock = Clock()
    admission = Admission(10, clock, burst=10, rand=lambda: 0.5)
    clock.advance(3600)
    assert admit_many(admission, 10) == [None] * 10
    assert admission.admit() is not None


def test_backlog_drains_with_time():
    clock = Clock()
    admission = Admission(10, clock, burst=10, rand=lambda: 0.0)
    admit_many(admission, 10)
    waits = admit_many(admission, 100)
    assert waits[-1] == 11.0  # 100 refused: 10 s of backlog
    clock.advance(60)
    admit_many(admission, 10)
    # The backlog is gone: the next refused agent waits as little as the first did.
    assert admission.admit() == 1.1


def test_same_rand_gives_the_same_answers():
    def run(seed):
        admission = Admission(50, Clock(), rand=random.Random(seed).random)
        return admit_many(admission, 500)

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_storm_of_5000_is_spread_so_rearrivals_stay_near_the_rate():
    rate = 50
    admission = Admission(rate, Clock(), rand=random.Random(7).random)
    answers = admit_many(admission, 5000)
    waits = [w for w in answers if w is not None]
    assert len(waits) == 5000 - rate
    per_second = collections.Counter(int(w) for w in waits)
    drain = len(waits) / rate  # seconds the backlog needs at the rate
    assert max(per_second.values()) <= 1.5 * rate
    # Nobody comes back at once, and nobody is sent away for longer than twice the drain.
    assert min(waits) >= 1.0 and max(waits) <= 1.0 + 2 * drain + 1
    # While the backlog drains, every second sees a steady share of the rate come back.
    busy = [per_second.get(s, 0) for s in range(1, int(drain))]
    assert all(0.3 * rate <= n <= 1.5 * rate for n in busy)
    assert 0.5 * rate <= sum(busy) / len(busy) <= rate


def test_storm_of_5000_converges_with_every_agent_obeying_retry_after():
    rate = 50
    clock = Clock()
    admission = Admission(rate, clock, rand=random.Random(11).random)
    admitted = collections.Counter()
    tries = collections.Counter()

    def arrive(agent):
        tries[agent] += 1
        wait = admission.admit()
        if wait is None:
            admitted[int(clock.seconds())] += 1
        else:
            clock.callLater(wait, arrive, agent)

    for agent in range(5000):
        arrive(agent)
    while clock.getDelayedCalls():
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())

    assert sum(admitted.values()) == 5000
    assert max(admitted.values()) <= 1.5 * rate          # never a stampede
    assert clock.seconds() <= 2 * 5000 / rate + 5       # all in within twice the ideal
    assert max(tries.values()) <= 3                      # almost nobody is turned away twice
    assert sum(1 for t in tries.values() if t > 2) <= 0.01 * 5000
