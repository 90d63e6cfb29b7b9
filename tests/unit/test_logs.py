"""Daemon logging: one line per event whatever the network sent, journald priorities,
and the level filter."""

import io

import pytest
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from medulla_appliance.core import logs

FORGED = "x\nFailed password for root from 1.2.3.4 port 22 ssh2"


def event(fmt="machine {host} enrolled", level=LogLevel.info, namespace="medulla.master",
          **kwargs):
    return {"log_format": fmt, "log_level": level, "log_namespace": namespace, **kwargs}


@pytest.mark.parametrize("text, escaped", [
    ("a\nb", "a\\nb"), ("a\rb", "a\\rb"), ("a\tb", "a\\tb"), ("a\x1b[31mb", "a\\x1b[31mb"),
    ("a\x00b", "a\\x00b"), ("a\x7fb", "a\\x7fb"), ("a\x0bb\x0cc", "a\\x0bb\\x0cc"),
    ("plain text, é ü 日本", "plain text, é ü 日本"),
])
def test_one_line_escapes_control_characters(text, escaped):
    assert logs.one_line(text) == escaped


def test_a_crafted_hostname_cannot_forge_a_second_line():
    line = logs.format_line(event(host=FORGED), journal=True)
    assert line.count("\n") == 1 and line.endswith("\n")
    assert line == ("<6>medulla.master: machine x\\nFailed password for root from 1.2.3.4 "
                    "port 22 ssh2 enrolled\n")


def test_a_traceback_stays_on_the_same_line():
    try:
        raise RuntimeError("boom\nsecond")
    except RuntimeError:
        failure = Failure()
    line = logs.format_line(event("handler failed", level=LogLevel.critical,
                                  log_failure=failure), journal=False)
    assert line.count("\n") == 1
    assert line.startswith("CRITICAL [medulla.master] handler failed: Traceback")
    assert "RuntimeError: boom\\nsecond" in line


@pytest.mark.parametrize("level, prefix", [
    (LogLevel.debug, "<7>"), (LogLevel.info, "<6>"), (LogLevel.warn, "<4>"),
    (LogLevel.error, "<3>"), (LogLevel.critical, "<2>"),
])
def test_journal_lines_start_with_the_syslog_priority(level, prefix):
    assert logs.format_line(event(level=level, host="pc01"), journal=True) == (
        prefix + "medulla.master: machine pc01 enrolled\n")


def test_plain_lines_name_the_level_and_namespace():
    assert logs.format_line(event(level=LogLevel.warn, host="pc01"), journal=False) == (
        "WARN [medulla.master] machine pc01 enrolled\n")


def test_an_event_without_level_or_namespace_is_still_one_line():
    line = logs.format_line({"log_format": "bare {x}", "x": FORGED}, journal=True)
    assert line.startswith("<6>-: bare x\\nFailed") and line.count("\n") == 1


def test_an_unformattable_event_is_still_one_line():
    line = logs.format_line(event("bad {missing} key", host=FORGED), journal=False)
    assert line.count("\n") == 1


def test_a_broken_stream_never_raises():
    class Broken:
        def write(self, text):
            raise OSError("EPIPE")

        def flush(self):
            pass

    logs.line_observer(Broken(), journal=False)(event(host="pc01"))


class Beginner:
    """Stands in for globalLogBeginner: records the observers it is given."""

    def __init__(self):
        self.observers = None

    def beginLoggingTo(self, observers, redirectStandardIO=True):
        self.observers = observers
        self.redirected = redirectStandardIO


@pytest.fixture
def beginner(monkeypatch):
    fake = Beginner()
    monkeypatch.setattr(logs, "globalLogBeginner", fake)
    return fake


def emit(beginner, **kwargs):
    for observer in beginner.observers:
        observer(event(**kwargs))


def test_journald_prefix_when_journal_stream_is_set(beginner):
    out = io.StringIO()
    logs.start_logging("info", stream=out, environ={"JOURNAL_STREAM": "8:12345"})
    emit(beginner, level=LogLevel.error, host="pc01")
    assert out.getvalue() == "<3>medulla.master: machine pc01 enrolled\n"
    assert beginner.redirected is False


def test_plain_lines_without_journal_stream(beginner):
    out = io.StringIO()
    logs.start_logging("INFO", stream=out, environ={})
    emit(beginner, level=LogLevel.info, host="pc01")
    assert out.getvalue() == "INFO [medulla.master] machine pc01 enrolled\n"


def test_events_below_the_level_are_filtered(beginner):
    out = io.StringIO()
    logs.start_logging("warning", stream=out, environ={})
    for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error):
        emit(beginner, level=level, host=level.name)
    assert out.getvalue().splitlines() == [
        "WARN [medulla.master] machine warn enrolled",
        "ERROR [medulla.master] machine error enrolled"]


def test_the_level_can_be_changed_on_reload(beginner):
    out = io.StringIO()
    predicate = logs.start_logging("error", stream=out, environ={})
    emit(beginner, level=LogLevel.info, host="before")
    logs.set_level(predicate, "debug")
    emit(beginner, level=LogLevel.debug, host="after")
    assert out.getvalue() == "DEBUG [medulla.master] machine after enrolled\n"
    logs.set_level(predicate, "ERROR")
    emit(beginner, level=LogLevel.warn, host="quiet")
    assert "quiet" not in out.getvalue()


def test_an_unknown_level_name_is_refused(beginner):
    with pytest.raises(KeyError):
        logs.start_logging("verbose", stream=io.StringIO(), environ={})
