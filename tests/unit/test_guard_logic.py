"""medulla-guard's decisions: the seeds' rule (5 failures in 10 minutes ban for 10
minutes), ban-time increase, the allowlist, and the ban book's limits and state."""

import pytest

from medulla_appliance.guard.logic.bans import HISTORY_SECONDS, BanBook, BanRefused
from medulla_appliance.guard.logic.jail import Allowlist, BanPolicy, FailureWindow, JailLogic


def seeds_jail(allow=("127.0.0.0/8",), **policy):
    return JailLogic("sshd", 5, 600, BanPolicy(600, **policy), Allowlist(allow))


def test_fifth_failure_within_ten_minutes_bans_for_ten_minutes():
    jail = seeds_jail()
    decisions = [jail.failure("192.0.2.1", t * 100.0) for t in range(5)]
    assert decisions[:4] == [None] * 4
    assert decisions[4].address == "192.0.2.1"
    assert decisions[4].seconds == 600 and decisions[4].failures == 5


def test_failures_spread_over_more_than_findtime_never_ban():
    jail = seeds_jail()
    assert all(jail.failure("192.0.2.1", t * 151.0) is None for t in range(20))


def test_each_address_is_counted_on_its_own():
    jail = seeds_jail()
    for t in range(4):
        assert jail.failure("192.0.2.1", t) is None
        assert jail.failure("2001:db8::1", t) is None
    assert jail.failure("2001:db8::1", 5).address == "2001:db8::1"


def test_count_starts_again_after_a_ban():
    jail = seeds_jail()
    for t in range(5):
        jail.failure("192.0.2.1", t)
    assert all(jail.failure("192.0.2.1", 10 + t) is None for t in range(4))


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "::ffff:10.1.2.3", "::1"])
def test_allowlisted_addresses_are_never_banned(address):
    jail = seeds_jail(allow=("127.0.0.0/8", "10.0.0.0/8", "::1/128"))
    assert all(jail.failure(address, t) is None for t in range(100))
    assert jail.ignored_allowed == 100


def test_repeat_offenders_get_longer_bans_up_to_the_maximum():
    policy = BanPolicy(600, increment=True, factor=2, maximum=3000, repeat_window=86400)
    assert policy.offence(None, 0) == 1
    assert policy.offence((1, 0), 3600) == 2
    assert policy.offence((3, 0), 90000) == 1  # the last ban is too old: a first offence
    assert [policy.duration(n) for n in (1, 2, 3, 4)] == [600, 1200, 2400, 3000]


def test_without_increment_every_ban_lasts_bantime():
    policy = BanPolicy(600)
    assert policy.duration(7) == 600


def test_jail_uses_the_history_for_the_ban_time():
    jail = seeds_jail(increment=True)
    for t in range(4):
        jail.failure("192.0.2.1", 1000 + t)
    decision = jail.failure("192.0.2.1", 1004, history=(2, 500))
    assert decision.offence == 3 and decision.seconds == 2400


def test_failure_window_is_bounded():
    window = FailureWindow(600, max_tracked=3)
    for i in range(10):
        window.add("192.0.2.%d" % i, i)
    assert len(window) == 3
    window.prune(10000)
    assert len(window) == 0


def test_book_refuses_past_max_bans_and_keeps_renewals():
    book = BanBook(max_bans=2)
    book.add("192.0.2.1", "sshd", 600, 0)
    book.add("192.0.2.2", "sshd", 600, 0)
    with pytest.raises(BanRefused):
        book.add("192.0.2.3", "sshd", 600, 0)
    book.add("192.0.2.2", "sshd", 1200, 10)  # a renewal is not a new entry
    assert book.get("192.0.2.2", 11).until == 1210
    assert book.refused_full == 1


def test_book_expires_bans_and_remembers_offences():
    book = BanBook(10)
    book.add("192.0.2.1", "sshd", 600, 0, offence=2)
    assert book.get("192.0.2.1", 599) is not None
    assert book.get("192.0.2.1", 600) is None
    assert book.history("192.0.2.1", 700) == (2, 0)
    assert book.history("192.0.2.1", HISTORY_SECONDS + 1) is None


def test_unban_is_a_pardon():
    book = BanBook(10)
    book.add("192.0.2.1", "sshd", 600, 0, offence=3)
    assert book.remove("192.0.2.1") is not None
    assert book.history("192.0.2.1", 1) is None


def test_book_state_round_trip_skips_expired_and_junk():
    book = BanBook(10)
    book.add("192.0.2.1", "sshd", 600, 0, offence=2, failures=5)
    book.add("192.0.2.2", "sshd", 10, 0)
    state = book.to_state(5)
    state["bans"].append({"address": "x"})  # junk: skipped
    again = BanBook(10)
    again.load_state(state, 100)
    assert [b.address for b in again.active(100)] == ["192.0.2.1"]
    assert again.get("192.0.2.1", 100).jail == "sshd"
    assert again.history("192.0.2.1", 100) == (2, 0)
    again.load_state({"version": 99}, 100)  # an unknown version changes nothing
    assert len(again) == 1


def test_restore_keeps_the_jail_known_from_state():
    book = BanBook(10)
    book.add("192.0.2.1", "sshd", 600, 0)
    ban = book.restore("192.0.2.1", 300, 100)
    assert ban.jail == "sshd" and ban.until == 400
    assert book.restore("192.0.2.9", 50, 100).jail == "restored"


def test_failure_window_survives_a_snapshot_but_not_its_age():
    window = FailureWindow(600)
    window.add("192.0.2.1", 100)
    window.add("192.0.2.1", 500)
    window.add("192.0.2.2", 50)
    snapshot = window.snapshot(640)
    again = FailureWindow(600)
    again.restore(snapshot, 700)
    assert again.add("192.0.2.1", 700) == 2   # 100 fell out, 500 and 700 remain
    assert len(again) == 1
    again.restore({"x": "junk", "192.0.2.3": [1, "a"]}, 700)
    assert len(again) == 1
