"""medulla-guard's SIGHUP reload over a fake clock and the dry-run backend: added,
removed and changed jails, filters and sources take effect; a bad rules folder is refused
whole and the running jails go on; counts, read positions and bans in force are kept."""

import pathlib

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from medulla_appliance.core import config as core_config
from medulla_appliance.guard.config import SCHEMA, load_rules
from medulla_appliance.guard.nft import DryRunBackend
from medulla_appliance.guard.service import POLL_EVERY_S, GuardService

ROOT = pathlib.Path(__file__).resolve().parents[2]
FAIL = "Failed password for root from %s port 4242 ssh2\n"
WEB_FILTER = "[filter]\ndaemon = web\nfailregex = ^bad login from <HOST>$\n"


class Reactor(MemoryReactorClock):
    """A fake clock that records the journalctl children started."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None):
        self.spawned.append(args)


class Setup:
    """guard.ini and a rules folder in ``tmp``; ``start()`` runs the service on them."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.rules = tmp / "rules"
        (self.rules / "jails").mkdir(parents=True)
        (self.rules / "filters").mkdir()
        (self.rules / "filters" / "sshd.ini").write_text(
            (ROOT / "etc/guard.d/filters/sshd.ini").read_text())
        self.filter("web", WEB_FILTER)
        self.ini = tmp / "guard.ini"
        self.write_ini()
        self.reactor = Reactor()
        self.reactor.advance(1_700_000_000)
        self.backend = DryRunBackend(self.reactor)
        self.svc = None

    def write_ini(self, extra=""):
        self.ini.write_text("[guard]\nbackend = dryrun\nrules_dir = %s\nstate_dir = %s\n"
                            "control_socket = %s\n%s" % (
                                self.rules, self.tmp / "state", self.tmp / "run/c.sock", extra))

    def cfg(self):
        return core_config.load(str(self.ini), SCHEMA)

    def jail(self, name, text):
        (self.rules / "jails" / (name + ".ini")).write_text("[jail]\n" + text)

    def filter(self, name, text):
        (self.rules / "filters" / (name + ".ini")).write_text(text)

    def log(self, name):
        path = self.tmp / name
        if not path.exists():
            path.write_text("")
        return path

    def start(self):
        cfg = self.cfg()
        self.svc = GuardService(cfg, self.reactor, load_rules(str(self.rules)),
                                backend=self.backend, use_inotify=False, local=[])
        self.svc.startService()
        assert self.svc.when_ready().called
        return self.svc

    def reload(self):
        return self.svc.reload(self.cfg())

    def write(self, path, text):
        with open(path, "a") as f:
            f.write(text)
        self.reactor.advance(POLL_EVERY_S)

    def runner(self, name):
        [runner] = [r for r in self.svc.runners if r.jail.name == name]
        return runner


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [formatEvent(e) for e in events
                   if e.get("log_namespace", "").startswith("medulla_appliance")]
    globalLogPublisher.removeObserver(events.append)


def test_an_added_jail_follows_its_file_from_the_end(setup):
    auth, web = setup.log("auth.log"), setup.log("web.log")
    setup.jail("sshd", "sources = file:%s\n" % auth)
    setup.start()
    setup.write(web, "bad login from 198.51.100.1\n" * 9)  # before the jail exists
    setup.jail("web", "sources = file:%s\nmaxretry = 3\n" % web)
    assert setup.reload() is True
    assert [r.jail.name for r in setup.svc.runners] == ["sshd", "web"]
    assert setup.backend.elements == {}  # what was there before is not counted
    setup.write(web, "bad login from 198.51.100.1\n" * 3)
    assert list(setup.backend.elements) == ["198.51.100.1"]
    assert setup.svc.book.get("198.51.100.1", setup.reactor.seconds()).jail == "web"


def test_a_removed_jail_stops_reading_and_its_bans_stay(setup):
    auth, web = setup.log("auth.log"), setup.log("web.log")
    setup.jail("sshd", "sources = file:%s\n" % auth)
    setup.jail("web", "sources = file:%s\n" % web)
    setup.start()
    setup.write(web, "bad login from 198.51.100.2\n" * 5)
    assert list(setup.backend.elements) == ["198.51.100.2"]
    (setup.rules / "jails" / "web.ini").unlink()
    setup.reload()
    assert [r.jail.name for r in setup.svc.runners] == ["sshd"]
    assert [path for _, path in setup.svc.sources.followers] == [str(auth)]
    setup.write(web, "bad login from 198.51.100.3\n" * 20)
    assert list(setup.backend.elements) == ["198.51.100.2"]  # kept; nothing new read
    assert setup.svc.control_bans()["bans"][0]["jail"] == "web"


def test_an_unchanged_jail_keeps_its_counts_its_reader_and_its_place(setup):
    auth = setup.log("auth.log")
    setup.jail("sshd", "sources = file:%s\n" % auth)
    setup.start()
    runner = setup.runner("sshd")
    [follower] = setup.svc.sources.followers.values()
    setup.write(auth, FAIL % "198.51.100.4" * 4)
    setup.write_ini("max_bans = 50\n")
    setup.reload()
    assert setup.runner("sshd") is runner
    assert list(setup.svc.sources.followers.values()) == [follower]
    assert setup.svc.book.max_bans == 50
    setup.write(auth, FAIL % "198.51.100.4")  # the 5th: nothing was read twice or lost
    assert list(setup.backend.elements) == ["198.51.100.4"]
    assert runner.logic.failures_seen == 5


def test_a_changed_jail_keeps_its_failures_within_its_new_findtime(setup):
    auth = setup.log("auth.log")
    setup.jail("sshd", "sources = file:%s\nmaxretry = 5\n" % auth)
    setup.start()
    setup.write(auth, FAIL % "198.51.100.5" * 3)
    setup.jail("sshd", "sources = file:%s\nmaxretry = 4\nbantime = 1h\n" % auth)
    setup.reload()
    runner = setup.runner("sshd")
    assert runner.jail.maxretry == 4 and runner.logic.failures_seen == 3
    setup.write(auth, FAIL % "198.51.100.5")  # 3 before the reload + 1 = the new maxretry
    [ban] = setup.svc.control_bans()["bans"]
    assert ban["address"] == "198.51.100.5" and ban["banned_for_s"] == 3600


def test_a_changed_filter_applies_to_new_lines_only(setup):
    web = setup.log("web.log")
    setup.jail("web", "sources = file:%s\nmaxretry = 2\n" % web)
    setup.start()
    setup.write(web, "denied 198.51.100.6\n" * 5)  # the old filter does not see these
    setup.filter("web", "[filter]\ndaemon = web\nfailregex = ^denied <HOST>$\n")
    setup.reload()
    assert setup.backend.elements == {}  # lines read before the reload are not re-read
    setup.write(web, "denied 198.51.100.6\n" * 2)
    assert list(setup.backend.elements) == ["198.51.100.6"]


def test_sources_added_and_removed_in_a_jail(setup):
    auth, other = setup.log("auth.log"), setup.log("auth2.log")
    setup.jail("sshd", "sources = file:%s\n" % auth)
    setup.start()
    setup.write(other, FAIL % "198.51.100.7" * 9)
    setup.jail("sshd", "sources = file:%s\n" % other)
    setup.reload()
    assert [path for _, path in setup.svc.sources.followers] == [str(other)]
    setup.write(auth, FAIL % "198.51.100.8" * 9)  # no longer followed
    assert setup.backend.elements == {}  # and the new one started at its end
    setup.write(other, FAIL % "198.51.100.7" * 5)
    assert list(setup.backend.elements) == ["198.51.100.7"]


def test_a_source_added_back_resumes_from_its_saved_position(setup):
    auth, other = setup.log("auth.log"), setup.log("auth2.log")
    setup.jail("sshd", "sources = file:%s, file:%s\n" % (auth, other))
    setup.start()
    setup.write(other, FAIL % "198.51.100.9" * 2)
    setup.svc.stopService()  # its position in auth2.log is saved
    setup.jail("sshd", "sources = file:%s\n" % auth)
    setup.start()            # a new process without auth2.log
    setup.write(other, FAIL % "198.51.100.9" * 3)
    assert setup.backend.elements == {}
    setup.jail("sshd", "sources = file:%s, file:%s\n" % (auth, other))
    setup.reload()           # back: read from the saved position, 2 + 3 failures
    assert list(setup.backend.elements) == ["198.51.100.9"]


def test_a_source_removed_then_added_in_one_run_starts_from_its_end(setup):
    auth, other = setup.log("auth.log"), setup.log("auth2.log")
    setup.jail("sshd", "sources = file:%s, file:%s\n" % (auth, other))
    setup.start()
    setup.svc._tick()  # a position for auth2.log is in the state
    setup.jail("sshd", "sources = file:%s\n" % auth)
    setup.reload()
    setup.write(other, FAIL % "198.51.100.10" * 9)  # while nobody follows it
    setup.jail("sshd", "sources = file:%s, file:%s\n" % (auth, other))
    setup.reload()
    assert setup.backend.elements == {}


def test_a_journal_restarts_only_when_its_match_changes(setup):
    setup.jail("sshd", "sources = journal\n")
    setup.start()
    assert len(setup.reactor.spawned) == 1
    source, _, _ = setup.svc.sources.journals["sshd"]
    source.entries([b'{"__CURSOR": "c1", "SYSLOG_IDENTIFIER": "sshd", "MESSAGE": "x"}'])
    setup.jail("sshd", "sources = journal\nmaxretry = 3\n")
    setup.reload()
    assert len(setup.reactor.spawned) == 1  # same journalmatch: the same child reads on
    assert setup.svc.sources.journals["sshd"][0] is source
    setup.filter("sshd", (setup.rules / "filters/sshd.ini").read_text().replace(
        "journalmatch = ", "journalmatch = _COMM=sshd-session, "))
    assert setup.reload() is True
    assert len(setup.reactor.spawned) == 2
    assert "--after-cursor=c1" in setup.reactor.spawned[1]  # it goes on where it was
    assert "_COMM=sshd-session" in setup.reactor.spawned[1]


def test_a_bad_rules_folder_is_refused_whole_and_the_old_jails_go_on(setup, logged):
    auth, web = setup.log("auth.log"), setup.log("web.log")
    setup.jail("sshd", "sources = file:%s\n" % auth)
    setup.start()
    setup.write(auth, FAIL % "198.51.100.11" * 2)
    # Tried: a new jail with a bad value, a filter with a broken regex, and a new
    # allowlist in guard.ini at the same time; none of it may apply.
    setup.jail("web", "sources = file:%s\nmaxretry = many\n" % web)
    setup.filter("broken", "[filter]\ndaemon = x\nfailregex = ^(<HOST>$\n")
    setup.write_ini("allowlist = 198.51.100.0/24\n")
    assert setup.reload() is False
    lines = [line for line in logged() if "reload refused" in line]
    assert len(lines) == 1 and "maxretry" in lines[0] and "broken" in lines[0]
    assert "\n" not in lines[0]
    assert [r.jail.name for r in setup.svc.runners] == ["sshd"]
    assert "198.51.100.11" not in setup.svc.allowlist
    setup.write(auth, FAIL % "198.51.100.11" * 3)
    assert list(setup.backend.elements) == ["198.51.100.11"]


def test_reload_changes_the_allowlist_and_max_bans(setup):
    auth = setup.log("auth.log")
    setup.jail("sshd", "sources = file:%s\n" % auth)
    setup.start()
    setup.write_ini("allowlist = 198.51.100.0/24\nmax_bans = 7\n")
    setup.reload()
    setup.write(auth, FAIL % "198.51.100.7" * 10)
    assert setup.backend.elements == {} and setup.svc.book.max_bans == 7
    assert "198.51.100.7" in setup.svc.runners[0].logic.allowlist
    assert "1 jails, 0 bans in force, 10 failures seen" == setup.svc.status_line()


def test_settings_that_need_a_restart_are_named_and_left_alone(setup, logged):
    setup.jail("sshd", "sources = file:%s\n" % setup.log("auth.log"))
    setup.start()
    setup.write_ini("verdict = drop\n[xmpp]\njid = master@medulla.test/guard\n")
    setup.reload()
    [line] = [line for line in logged() if "restart medulla-guard" in line]
    assert "[guard] verdict" in line and "[xmpp] jid" in line
    assert setup.svc.link is None and setup.svc.backend is setup.backend
