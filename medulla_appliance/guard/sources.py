"""Where log lines come from: files followed like ``tail -F``, and the systemd journal.

``FileFollower.poll()`` does one round: it notices rotation by rename (the path names
another inode: the old file is read to its end, then the new one from its start),
truncation (the file is shorter than our offset) and copytruncate rewritten past our
offset before we looked (its first bytes changed), and reads at most ``MAX_READ_BYTES``.
The service calls ``poll()`` when inotify says the folder changed and on a timer; tests
call it directly. Positions are saved as (device, inode, offset, first bytes), so a
restart resumes where it stopped, and a file replaced meanwhile is read from its start.

``JournalSource`` runs ``journalctl --follow --output=json`` as a child process, resumes
after its saved cursor, and restarts it with a growing delay if it exits.
"""

import json
import os

from twisted.internet import error, protocol
from twisted.logger import Logger

MAX_READ_BYTES = 4 * 1024 * 1024
MAX_LINE_BYTES = 16 * 1024
HEAD_BYTES = 128
JOURNAL_MAX_LINE_BYTES = 256 * 1024
JOURNAL_RESTART_MIN_S, JOURNAL_RESTART_MAX_S = 1.0, 60.0
JOURNAL_FIELDS = "MESSAGE,SYSLOG_IDENTIFIER,_COMM"


def _decode(data):
    return data.decode("utf-8", "backslashreplace")


class FileFollower:
    """Follows one file by path across rotation and truncation (see the module doc).

    ``on_lines(lines)`` gets complete lines (str, without the newline); ``start`` is
    "end" (skip what is there) or a saved ``position()`` dict.
    """

    log = Logger()

    def __init__(self, path, on_lines, start="end"):
        self.path = path
        self.on_lines = on_lines
        self._file = None
        self._ident = None  # (st_dev, st_ino)
        self._offset = 0
        self._head = b""
        self._partial = b""
        self._start = start
        self._missing_logged = False
        self.lines_read = 0
        self.rotations = 0
        self.truncations = 0

    # -- position ---------------------------------------------------------------------

    def position(self):
        """Where we are, for the state file; None before the file was ever opened."""
        if self._ident is None:
            return None
        return {"dev": self._ident[0], "ino": self._ident[1],
                "offset": self._offset - len(self._partial), "head": self._head.hex()}

    def _open(self):
        # The start rule applies to the first attempt only: a file that appears later,
        # or replaces a rotated one, is new and is read from its start.
        start, self._start = self._start, "beginning"
        try:
            handle = open(self.path, "rb")
        except OSError as exc:
            if not self._missing_logged:
                self.log.warn("cannot open {path} ({reason}); waiting for it",
                              path=self.path, reason=exc.strerror)
                self._missing_logged = True
            return False
        self._missing_logged = False
        info = os.fstat(handle.fileno())
        self._file, self._ident = handle, (info.st_dev, info.st_ino)
        self._head = os.pread(handle.fileno(), HEAD_BYTES, 0)
        self._partial = b""
        if isinstance(start, dict) and self._resumes(start, info):
            self._offset = int(start["offset"])
        elif start == "end":
            self._offset = info.st_size
        else:
            self._offset = 0
        return True

    def _resumes(self, saved, info):
        """Whether a saved position is this very file, at most as long as it is now."""
        try:
            head = bytes.fromhex(saved["head"])
            return (saved["dev"], saved["ino"]) == self._ident and \
                0 <= int(saved["offset"]) <= info.st_size and self._head.startswith(head)
        except (KeyError, TypeError, ValueError):
            return False

    # -- the round --------------------------------------------------------------------

    def poll(self):
        """Read what is new; returns True if more is waiting (call again soon)."""
        if self._file is None and not self._open():
            return False
        try:
            info = os.stat(self.path)
        except OSError:
            info = None
        if info is not None and (info.st_dev, info.st_ino) != self._ident:
            # Renamed away (or deleted) and replaced: finish the old file, then the new.
            more = self._read()
            if more:
                return True
            self._flush_partial()
            self._close()
            self.rotations += 1
            return self._open() and self._read()
        size = os.fstat(self._file.fileno()).st_size
        if size < self._offset or (self._offset and not self._same_head()):
            self.truncations += 1
            self._partial = b""
            self._offset = 0
            self._head = os.pread(self._file.fileno(), HEAD_BYTES, 0)
        elif len(self._head) < HEAD_BYTES and size > len(self._head):
            self._head = os.pread(self._file.fileno(), HEAD_BYTES, 0)
        return self._read()

    def _same_head(self):
        now = os.pread(self._file.fileno(), len(self._head), 0)
        return now == self._head

    def _read(self):
        data = os.pread(self._file.fileno(), MAX_READ_BYTES, self._offset)
        if not data:
            return False
        self._offset += len(data)
        chunk = self._partial + data
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._partial = chunk[-MAX_LINE_BYTES:] if len(chunk) > MAX_LINE_BYTES else chunk
            return len(data) == MAX_READ_BYTES
        self._partial = chunk[cut + 1:]
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial = b""
        lines = _decode(chunk[:cut]).split("\n")
        self.lines_read += len(lines)
        self.on_lines(lines)
        return len(data) == MAX_READ_BYTES

    def _flush_partial(self):
        """A last line without newline in a rotated file is a line all the same."""
        if self._partial:
            line, self._partial = _decode(self._partial), b""
            self.lines_read += 1
            self.on_lines([line])

    def _close(self):
        if self._file is not None:
            self._file.close()
        self._file = None

    def close(self):
        self._close()


class _JournalProtocol(protocol.ProcessProtocol):
    def __init__(self, source):
        self.source = source
        self._buffer = b""

    def outReceived(self, data):
        self._buffer += data
        if b"\n" not in self._buffer:
            if len(self._buffer) > JOURNAL_MAX_LINE_BYTES:
                self._buffer = b""  # an entry too big to be a log line: skip it
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        self.source.entries(lines)

    def errReceived(self, data):
        self.source.stderr(data)

    def processEnded(self, reason):
        self.source.ended(reason)


def journal_text(value):
    """A journal field as text: JSON gives a string, or a byte array when not UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return _decode(bytes(value))
    return None


class JournalSource:
    """``journalctl --follow`` as a child process; ``on_entry(identifier, message)``."""

    log = Logger()

    def __init__(self, reactor, on_entry, matches=(), *, journalctl="/usr/bin/journalctl",
                 cursor=None, extra_args=()):
        self.reactor, self.on_entry = reactor, on_entry
        self.matches, self.journalctl = tuple(matches), journalctl
        self.cursor = cursor
        self.extra_args = tuple(extra_args)
        self._proto = None
        self._delay = JOURNAL_RESTART_MIN_S
        self._restart_call = None
        self._stopping = False
        self.entries_read = 0

    def argv(self):
        args = [self.journalctl, "--follow", "--output=json", "--no-pager",
                "--output-fields=" + JOURNAL_FIELDS, *self.extra_args]
        args += ["--after-cursor=" + self.cursor] if self.cursor else ["--lines=0"]
        # journalctl ORs matches of one field and ANDs different fields; "+" is OR.
        for index, match in enumerate(self.matches):
            if index:
                args.append("+")
            args.append(match)
        return args

    def start(self):
        self._stopping = False
        self._proto = _JournalProtocol(self)
        argv = self.argv()
        self.reactor.spawnProcess(self._proto, argv[0], argv, env={"SYSTEMD_COLORS": "0"},
                                  childFDs={0: "w", 1: "r", 2: "r"})

    def stop(self):
        self._stopping = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        if self._proto is not None and self._proto.transport is not None:
            try:
                self._proto.transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass

    def entries(self, lines):
        for raw in lines:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            cursor = entry.get("__CURSOR")
            if isinstance(cursor, str):
                self.cursor = cursor
            message = journal_text(entry.get("MESSAGE"))
            if message is None:
                continue
            identifier = journal_text(entry.get("SYSLOG_IDENTIFIER")) or \
                journal_text(entry.get("_COMM"))
            self.entries_read += 1
            self._delay = JOURNAL_RESTART_MIN_S
            self.on_entry(identifier, message)

    def stderr(self, data):
        text = _decode(data).strip()
        if text:
            self.log.warn("journalctl: {text}", text=text[:500])

    def ended(self, reason):
        self._proto = None
        if self._stopping:
            return
        self.log.warn("journalctl ended ({reason}); restarting in {delay}s",
                      reason=reason.getErrorMessage(), delay=self._delay)
        self._restart_call = self.reactor.callLater(self._delay, self.start)
        self._delay = min(JOURNAL_RESTART_MAX_S, self._delay * 2)
