"""Following files across rotation (rename, copytruncate) and truncation, resuming from
a saved position; the journal source's arguments, parsing and restarts."""

import json
import os

import pytest
from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from medulla_appliance.guard.sources import FileFollower, JournalSource, journal_text


class Collector:
    def __init__(self):
        self.lines = []

    def __call__(self, lines):
        self.lines.extend(lines)


def write(path, text, mode="a"):
    with open(path, mode) as f:
        f.write(text)


OPENED = []


@pytest.fixture(autouse=True)
def close_followers():
    yield
    while OPENED:
        OPENED.pop().close()


def follower(path, start="end"):
    got = Collector()
    f = FileFollower(str(path), got, start=start)
    OPENED.append(f)
    return f, got


def test_starts_at_the_end_and_reads_new_complete_lines(tmp_path):
    log = tmp_path / "auth.log"
    write(log, "old 1\nold 2\n")
    f, got = follower(log)
    f.poll()
    write(log, "new 1\nnew ")
    f.poll()
    assert got.lines == ["new 1"]
    write(log, "2\n")
    f.poll()
    assert got.lines == ["new 1", "new 2"]


def test_rotation_by_rename_reads_the_old_file_to_its_end_then_the_new(tmp_path):
    log = tmp_path / "auth.log"
    write(log, "")
    f, got = follower(log)
    f.poll()
    write(log, "a\n")
    f.poll()
    write(log, "b\nlast without newline")   # written just before logrotate renames it
    os.rename(log, tmp_path / "auth.log.1")
    write(log, "c\n", "w")
    f.poll()
    assert got.lines == ["a", "b", "last without newline", "c"]
    assert f.rotations == 1


def test_rotation_with_the_new_file_not_created_yet(tmp_path):
    log = tmp_path / "auth.log"
    write(log, "")
    f, got = follower(log)
    f.poll()
    os.rename(log, tmp_path / "auth.log.1")
    write(tmp_path / "auth.log.1", "late\n")
    f.poll()
    write(log, "fresh\n", "w")
    f.poll()
    assert got.lines == ["late", "fresh"]


def test_copytruncate_is_noticed(tmp_path):
    log = tmp_path / "auth.log"
    write(log, "x" * 50 + "\n")
    f, got = follower(log)
    f.poll()
    write(log, "a\n")
    f.poll()
    write(log, "", "w")              # copytruncate: the same inode, emptied
    write(log, "b\n")
    f.poll()
    assert got.lines == ["a", "b"]
    assert f.truncations == 1


def test_copytruncate_rewritten_past_our_offset_is_noticed_by_its_first_bytes(tmp_path):
    log = tmp_path / "auth.log"
    write(log, "2024-11-23T06:00:00 first line\n")
    f, got = follower(log)
    f.poll()
    write(log, "2024-11-23T07:00:00 other first line, longer than the old file was\n"
               "second\n", "w")
    f.poll()
    assert got.lines == ["2024-11-23T07:00:00 other first line, longer than the old file was",
                         "second"]


def test_a_missing_file_is_waited_for_and_then_read_from_its_start(tmp_path):
    log = tmp_path / "auth.log"
    f, got = follower(log)
    assert f.poll() is False
    write(log, "one\n")
    f.poll()
    assert got.lines == ["one"]


def test_saved_position_resumes_where_it_stopped(tmp_path):
    log = tmp_path / "auth.log"
    write(log, "a\n")
    f, got = follower(log)
    f.poll()
    write(log, "b\npartial")
    f.poll()
    saved = json.loads(json.dumps(f.position()))
    f.close()
    write(log, " line\nc\n")                 # written while the daemon was down
    g, again = follower(log, start=saved)
    g.poll()
    assert got.lines == ["b"]
    assert again.lines == ["partial line", "c"]


def test_saved_position_of_a_replaced_file_reads_the_new_one_from_its_start(tmp_path):
    log = tmp_path / "auth.log"
    write(log, "a\nb\n")
    f, _ = follower(log)
    f.poll()
    saved = f.position()
    f.close()
    os.rename(log, tmp_path / "auth.log.1")
    write(log, "after rotation\n", "w")
    g, again = follower(log, start=saved)
    g.poll()
    assert again.lines == ["after rotation"]


def test_big_backlogs_are_read_in_slices(tmp_path, monkeypatch):
    from medulla_appliance.guard import sources
    monkeypatch.setattr(sources, "MAX_READ_BYTES", 1000)
    log = tmp_path / "auth.log"
    f, got = follower(log, start="beginning")
    write(log, "".join("line %04d\n" % i for i in range(500)))
    rounds = 1
    while f.poll():
        rounds += 1
    assert rounds >= 5 and len(got.lines) == 500 and got.lines[-1] == "line 0499"


def test_invalid_utf8_is_kept_escaped(tmp_path):
    log = tmp_path / "auth.log"
    f, got = follower(log, start="beginning")
    with open(log, "wb") as out:
        out.write(b"Invalid user \xff\xfe from 192.0.2.1 port 22\n")
    f.poll()
    assert got.lines == ["Invalid user \\xff\\xfe from 192.0.2.1 port 22"]


# -- journal ---------------------------------------------------------------------------

def test_journal_arguments_start_at_the_end_or_after_the_cursor():
    source = JournalSource(Clock(), None, ["SYSLOG_IDENTIFIER=sshd", "_COMM=sshd"])
    argv = source.argv()
    assert "--follow" in argv and "--output=json" in argv and "--lines=0" in argv
    assert argv[-3:] == ["SYSLOG_IDENTIFIER=sshd", "+", "_COMM=sshd"]
    source.cursor = "s=abc;i=1"
    assert "--after-cursor=s=abc;i=1" in source.argv() and "--lines=0" not in source.argv()


def test_journal_entries_give_identifier_message_and_cursor():
    got = []
    source = JournalSource(Clock(), lambda ident, msg: got.append((ident, msg)))
    entries = [
        {"__CURSOR": "c1", "SYSLOG_IDENTIFIER": "sshd", "MESSAGE": "Failed password"},
        {"__CURSOR": "c2", "_COMM": "sshd", "MESSAGE": list(b"Invalid user \xff")},
        {"__CURSOR": "c3", "MESSAGE": None},
    ]
    source.entries([json.dumps(e).encode() for e in entries] + [b"not json", b"[1]"])
    assert got == [("sshd", "Failed password"), ("sshd", "Invalid user \\xff")]
    assert source.cursor == "c3"


def test_journal_text_refuses_what_is_not_text():
    assert journal_text([300]) is None and journal_text({"a": 1}) is None


class ProcessClock(Clock):
    """A Clock that records spawnProcess calls."""

    def __init__(self):
        super().__init__()
        self.spawnedProcesses = []

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None):
        self.spawnedProcesses.append((proto, args))


def test_journalctl_exit_restarts_it_with_a_growing_delay():
    reactor = ProcessClock()
    source = JournalSource(reactor, lambda *a: None, journalctl="/bin/false")
    source.start()
    assert len(reactor.spawnedProcesses) == 1
    source.ended(Failure(error.ProcessTerminated(1)))
    reactor.advance(1.0)
    assert len(reactor.spawnedProcesses) == 2
    source.ended(Failure(error.ProcessTerminated(1)))
    reactor.advance(1.0)
    assert len(reactor.spawnedProcesses) == 2
    reactor.advance(1.0)
    assert len(reactor.spawnedProcesses) == 3
    source.stop()
    source.ended(Failure(error.ProcessDone(0)))
    assert not reactor.getDelayedCalls()
