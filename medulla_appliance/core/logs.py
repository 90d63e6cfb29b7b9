"""Logging for every daemon: twisted.logger to stderr, which systemd hands to the journal.

Each event becomes exactly one line. Text that came from the network (a hostname, a JID,
a refused body) may hold newlines or terminal escapes; they are escaped here, so nobody
can forge a second log line, which matters because medulla-guard reads these logs.
"""

import os
import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)

LEVELS = {"DEBUG": LogLevel.debug, "INFO": LogLevel.info, "WARNING": LogLevel.warn,
          "ERROR": LogLevel.error, "CRITICAL": LogLevel.critical}
# sd-daemon(3) priority prefixes, which journald reads at the start of each stderr line.
SYSLOG_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4,
                   LogLevel.error: 3, LogLevel.critical: 2}
_CONTROL = {c: "\\x%02x" % c for c in list(range(0x20)) + [0x7F]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def one_line(text):
    """`text` with every control character escaped: it can only ever be one line."""
    return text.translate(_CONTROL)


def format_line(event, journal):
    """The line for one event: `<6>namespace: text` for journald, else with the level."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = "%s: %s" % (text, failure.getTraceback())
    level = event.get("log_level", LogLevel.info)
    namespace = event.get("log_namespace", "-")
    if journal:
        return "<%d>%s: %s\n" % (SYSLOG_PRIORITY.get(level, 6), namespace, one_line(text))
    return "%s [%s] %s\n" % (level.name.upper(), namespace, one_line(text))


def line_observer(stream, journal):
    """An observer writing `format_line` output to `stream`."""
    def observe(event):
        try:
            stream.write(format_line(event, journal))
            stream.flush()
        except Exception:  # a log line must never take the daemon down
            pass
    return observe


def start_logging(level_name, stream=None, environ=None):
    """Send twisted.logger events at `level_name` and above to stderr (or `stream`)."""
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level_name.upper()])
    observer = FilteringLogObserver(
        line_observer(stream, journal="JOURNAL_STREAM" in environ), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return predicate


def set_level(predicate, level_name):
    """Change the level of a running daemon (on reload)."""
    predicate.defaultLogLevel = LEVELS[level_name.upper()]
    # The predicate copied its default at construction: only this changes what it lets by.
    predicate.setLogLevelForNamespace("", predicate.defaultLogLevel)
