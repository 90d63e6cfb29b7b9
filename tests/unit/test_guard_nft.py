"""The nftables backend's scripts, its parsing of listings, its batching; the dry run.

Real nftables is exercised by tests/integration/test_guard_enforcement.py."""

import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from medulla_appliance.guard.nft import (
    DryRunBackend,
    NftBackend,
    NftError,
    ban_script,
    parse_set_listing,
    setup_script,
    unban_script,
)


class FakeRunner:
    """Records nft invocations; each returns a Deferred the test fires."""

    def __init__(self):
        self.calls = []

    def run(self, args, script=None):
        d = defer.Deferred()
        self.calls.append((args, script, d))
        return d


def test_setup_touches_only_our_table_and_never_flushes_sets():
    script = setup_script("medulla_guard")
    for line in script.strip().split("\n"):
        assert " inet medulla_guard" in line, line
    assert "flush set" not in script and "flush table" not in script and "delete" not in script
    assert "flush chain inet medulla_guard input" in script
    assert "flags timeout" in script and "banned4" in script and "banned6" in script
    assert "reject with tcp reset" in script
    assert "drop" in setup_script("medulla_guard", "drop")


@pytest.mark.parametrize("table", ["", "a b", "x;flush ruleset", "9x", "a" * 40])
def test_table_names_that_could_escape_the_script_are_refused(table):
    with pytest.raises(ValueError):
        setup_script(table)


def test_ban_renews_with_add_delete_add_and_a_timeout():
    script = ban_script("t", "192.0.2.1", 600)
    assert script.split("\n")[:3] == [
        "add element inet t banned4 { 192.0.2.1 }",
        "delete element inet t banned4 { 192.0.2.1 }",
        "add element inet t banned4 { 192.0.2.1 timeout 600000ms }"]
    assert "banned6 { 2001:db8::1 timeout 8500ms }" in ban_script("t", "2001:db8::1", 8.5)
    assert "delete element inet t banned6 { 2001:db8::1 }" in unban_script("t", "2001:db8::1")


def test_listing_gives_addresses_and_what_remains():
    text = json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"set": {"name": "banned4", "elem": [
            {"elem": {"val": "192.0.2.1", "timeout": 600, "expires": 594}},
            "192.0.2.99"]}}]})
    assert parse_set_listing(text) == [("192.0.2.1", 594.0)]
    assert parse_set_listing('{"nftables": [{"set": {"name": "banned6"}}]}') == []


def test_bans_asked_while_nft_runs_go_in_one_next_transaction():
    runner = FakeRunner()
    backend = NftBackend(runner, "t")
    first = backend.ban("192.0.2.1", 600)
    waiting = [backend.ban("192.0.2.%d" % i, 600) for i in range(2, 6)]
    assert len(runner.calls) == 1
    runner.calls[0][2].callback("")
    assert first.called and len(runner.calls) == 2
    batch = runner.calls[1][1]
    assert all("192.0.2.%d timeout" % i in batch for i in range(2, 6))
    runner.calls[1][2].callback("")
    assert all(d.called for d in waiting) and backend.transactions == 2


def test_a_failed_batch_is_retried_piece_by_piece():
    runner = FakeRunner()
    backend = NftBackend(runner, "t")
    backend.ban("192.0.2.1", 600)
    good, bad = backend.ban("192.0.2.2", 600), backend.ban("2001:db8::2", 600)
    runner.calls[0][2].callback("")
    runner.calls[1][2].errback(NftError("Error: Could not process rule"))
    assert len(runner.calls) == 4  # the batch of two, then each alone
    runner.calls[2][2].callback("")
    runner.calls[3][2].errback(NftError("Error: no such set"))
    assert good.called and good.result is None
    failures = []
    bad.addErrback(failures.append)
    assert failures and failures[0].check(NftError)


def test_setup_then_lists_both_sets():
    runner = FakeRunner()
    backend = NftBackend(runner, "t")
    found = []
    backend.setup().addCallback(found.extend)
    assert runner.calls[0][0] == ["-f", "-"]
    runner.calls[0][2].callback("")
    assert runner.calls[1][0] == ["-j", "list", "set", "inet", "t", "banned4"]
    runner.calls[1][2].callback(json.dumps({"nftables": [{"set": {"elem": [
        {"elem": {"val": "192.0.2.1", "timeout": 60, "expires": 30}}]}}]}))
    runner.calls[2][2].callback('{"nftables": []}')
    assert found == [("192.0.2.1", 30.0)]


def test_dry_run_lists_what_it_would_have_banned_until_it_expires():
    clock = Clock()
    backend = DryRunBackend(clock)
    backend.ban("192.0.2.1", 10)
    assert backend.list().result == [("192.0.2.1", 10)]
    clock.advance(10)
    assert backend.list().result == []
    backend.ban("192.0.2.2", 10)
    backend.unban("192.0.2.2")
    assert backend.setup().result == []
