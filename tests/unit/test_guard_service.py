"""medulla-guard's service over a fake clock and the dry-run backend: lines in a file
become bans, the allowlist holds, bans survive a restart (and a reboot that emptied the
firewall), and the control protocol speaks JSON lines."""

import json
import pathlib

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport

from medulla_appliance.core import config as core_config
from medulla_appliance.guard.config import SCHEMA, Jail, load_filter
from medulla_appliance.guard.control import ControlProtocol
from medulla_appliance.guard.nft import DryRunBackend
from medulla_appliance.guard.service import POLL_EVERY_S, GuardService

ROOT = pathlib.Path(__file__).resolve().parents[2]
SSHD = load_filter("sshd", str(ROOT / "etc/guard.d/filters/sshd.ini"))
FAIL = "Failed password for root from %s port 4242 ssh2\n"


@pytest.fixture
def env(tmp_path):
    ini = tmp_path / "guard.ini"
    ini.write_text("[guard]\nbackend = dryrun\nstate_dir = %s\ncontrol_socket = %s\n"
                   "allowlist = 192.0.2.200/29\n" % (tmp_path / "state", tmp_path / "run/c.sock"))
    log = tmp_path / "auth.log"
    log.write_text("")
    return core_config.load(str(ini), SCHEMA), log


def make(cfg, log, reactor=None, backend=None, at=1_700_000_000, **jail):
    reactor = reactor or MemoryReactorClock()
    reactor.advance(at)  # wall-clock-like times, as the real reactor gives
    backend = backend or DryRunBackend(reactor)
    jails = [Jail("sshd", SSHD, ("file:%s" % log,), **jail)]
    svc = GuardService(cfg, reactor, jails, backend=backend, use_inotify=False, local=[])
    svc.startService()
    assert svc.when_ready().called
    return svc, reactor, backend


def fail(log, reactor, address, times=1):
    with open(log, "a") as f:
        f.write(FAIL % address * times)
    reactor.advance(POLL_EVERY_S)


def test_five_failures_ban_and_the_ban_ends_after_bantime(env):
    cfg, log = env
    svc, reactor, backend = make(cfg, log, bantime=600)
    fail(log, reactor, "198.51.100.7", 4)
    assert backend.elements == {}
    fail(log, reactor, "198.51.100.7")
    assert list(backend.elements) == ["198.51.100.7"]
    [ban] = svc.control_bans()["bans"]
    assert ban["address"] == "198.51.100.7" and ban["jail"] == "sshd" and ban["failures"] == 5
    reactor.advance(600)
    assert svc.control_bans()["bans"] == [] and backend.list().result == []


def test_lines_already_in_the_file_at_start_do_not_count(env):
    cfg, log = env
    log.write_text(FAIL % "198.51.100.7" * 10)
    svc, reactor, backend = make(cfg, log)
    fail(log, reactor, "198.51.100.7", 4)
    assert backend.elements == {}


@pytest.mark.parametrize("address", ["127.0.0.1", "192.0.2.201", "10.9.9.9"])
def test_allowlist_loopback_and_own_addresses_are_never_banned(env, address):
    cfg, log = env
    reactor = MemoryReactorClock()
    svc = GuardService(cfg, reactor, [Jail("sshd", SSHD, ("file:%s" % log,))],
                       backend=DryRunBackend(reactor), use_inotify=False, local=["10.9.9.9"])
    svc.startService()
    fail(log, reactor, address, 50)
    assert svc.backend.elements == {}
    assert svc.runners[0].logic.ignored_allowed == 50


def test_restart_keeps_bans_and_a_reboot_gets_them_back(env):
    cfg, log = env
    svc, reactor, backend = make(cfg, log, bantime=600)
    fail(log, reactor, "198.51.100.7", 5)
    reactor.advance(100)
    svc.stopService()
    # A new process; the dry-run backend, like nftables after a reboot, is empty.
    again, reactor2, backend2 = make(cfg, log, at=reactor.seconds() + 50)
    [ban] = again.control_bans()["bans"]
    assert ban["address"] == "198.51.100.7" and ban["jail"] == "sshd"
    assert backend2.elements["198.51.100.7"] - reactor2.seconds() == pytest.approx(450)


def test_bans_found_in_the_firewall_are_restored(env):
    cfg, log = env
    reactor = MemoryReactorClock()
    backend = DryRunBackend(reactor)
    backend.elements = {"203.0.113.5": 300.0}  # reactor time 0: 300 s left
    svc = GuardService(cfg, reactor, [Jail("sshd", SSHD, ("file:%s" % log,))],
                       backend=backend, use_inotify=False, local=[])
    svc.startService()
    [ban] = svc.control_bans()["bans"]
    assert ban["address"] == "203.0.113.5" and ban["remaining_s"] == 300.0


def test_repeat_offender_is_banned_longer(env):
    cfg, log = env
    svc, reactor, backend = make(cfg, log, bantime=60, bantime_increment=True)
    fail(log, reactor, "198.51.100.7", 5)
    reactor.advance(61)
    fail(log, reactor, "198.51.100.7", 5)
    [ban] = svc.control_bans()["bans"]
    assert ban["offence"] == 2 and ban["banned_for_s"] == 120


def test_failures_of_a_banned_address_do_not_renew_its_ban(env):
    cfg, log = env
    svc, reactor, backend = make(cfg, log)
    fail(log, reactor, "198.51.100.7", 5)
    until = backend.elements["198.51.100.7"]
    fail(log, reactor, "198.51.100.7", 20)
    assert backend.elements["198.51.100.7"] == until


def test_state_file_is_written_and_bounded_junk_is_ignored(env, tmp_path):
    cfg, log = env
    state = tmp_path / "state" / "state.json"
    state.parent.mkdir()
    state.write_text("{not json")
    svc, reactor, _ = make(cfg, log)
    fail(log, reactor, "198.51.100.7", 5)
    svc.stopService()
    saved = json.loads(state.read_text())
    assert saved["bans"][0]["address"] == "198.51.100.7"
    assert str(log) in saved["positions"]


# -- control --------------------------------------------------------------------------

def ask(svc, *requests):
    proto = ControlProtocol(svc)
    transport = StringTransport()
    proto.makeConnection(transport)
    for request in requests:
        line = request if isinstance(request, bytes) else json.dumps(request).encode()
        proto.dataReceived(line + b"\n")
    return [json.loads(line) for line in transport.value().splitlines()]


def test_control_ban_list_unban(env):
    cfg, log = env
    svc, reactor, backend = make(cfg, log)
    ban, bans, unban, after = ask(
        svc, {"cmd": "ban", "address": "2001:DB8::7", "seconds": 90}, {"cmd": "bans"},
        {"cmd": "unban", "address": "2001:db8::7"}, {"cmd": "bans"})
    assert ban["ok"] and ban["ban"]["address"] == "2001:db8::7" and ban["ban"]["jail"] == "manual"
    assert [b["address"] for b in bans["bans"]] == ["2001:db8::7"]
    assert unban == {"ok": True, "address": "2001:db8::7", "was_banned": True}
    assert after["bans"] == [] and backend.elements == {}


def test_control_refuses_allowlisted_bad_and_unknown(env):
    cfg, log = env
    svc, _, backend = make(cfg, log)
    replies = ask(svc, {"cmd": "ban", "address": "127.0.0.1"},
                  {"cmd": "ban", "address": "not-an-ip"},
                  {"cmd": "ban", "address": "198.51.100.1", "seconds": -5},
                  {"cmd": "reboot"}, b"[1, 2]", b"{oops")
    assert [r.get("error") for r in replies] == [
        "allowlisted", "bad-address", "bad-request", "unknown-command", "bad-request",
        "bad-request"]
    assert backend.elements == {}


def test_control_status_names_jails_and_counts(env):
    cfg, log = env
    svc, reactor, _ = make(cfg, log)
    fail(log, reactor, "198.51.100.7", 2)
    [status] = ask(svc, {"cmd": "status"})
    assert status["backend"] == "dryrun" and status["bans"] == 0
    assert status["jails"][0]["name"] == "sshd" and status["jails"][0]["failures"] == 2
    assert "127.0.0.0/8" in status["allowlist"]


def test_control_answers_in_order_even_when_a_command_waits(env):
    cfg, log = env
    svc, _, backend = make(cfg, log)
    gate = defer.Deferred()
    backend.ban = lambda address, seconds: gate
    proto = ControlProtocol(svc)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b'{"cmd": "ban", "address": "198.51.100.9"}\n{"cmd": "bans"}\n')
    assert transport.value() == b""
    gate.callback(None)
    first, second = [json.loads(x) for x in transport.value().splitlines()]
    assert "ban" in first and "bans" in second


def test_control_refuses_overlong_requests(env):
    cfg, log = env
    svc, _, _ = make(cfg, log)
    [reply] = ask(svc, b"x" * 5000)
    assert reply["error"] == "too-long"


def test_the_masters_relays_and_xmpp_server_join_the_allowlist(env, tmp_path):
    cfg, log = env
    master = tmp_path / "master.ini"
    master.write_text("[xmpp]\nserver = 192.0.2.250\n[assessor]\n"
                      "relays = dmz 203.0.113.10:5222, lan [2001:db8::10]:5222\n")
    ini = tmp_path / "guard2.ini"
    ini.write_text("[guard]\nbackend = dryrun\nstate_dir = %s\ncontrol_socket = %s\n"
                   "fleet_from_master = %s\n" % (tmp_path / "s2", tmp_path / "run/d.sock", master))
    cfg2 = core_config.load(str(ini), SCHEMA)
    svc, reactor, backend = make(cfg2, log)
    for address in ("192.0.2.250", "203.0.113.10", "2001:db8::10"):
        assert address in svc.allowlist
        fail(log, reactor, address, 6)
    assert backend.elements == {}

