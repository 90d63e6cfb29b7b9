"""The jails at run time and the sources feeding them.

``JailRunner`` is one jail: its configuration, its filter and its counting logic.
``SourceSet`` owns every followed file and journalctl child; ``attach(runners)`` makes it
follow exactly what the runners list, which is how both the start and a SIGHUP reload
work: a source kept across a reload keeps its place (nothing read twice, nothing
skipped) and only learns which runner its lines now go to; a source no jail lists any
more is closed; a new one starts from its saved position when the state file has one,
else from its end.
"""

import os

from twisted.internet import task
from twisted.logger import Logger

from .logic.jail import BanPolicy, JailLogic
from .sources import FileFollower, JournalSource

POLL_EVERY_S = 0.5


def same_jail(a, b):
    """Whether two ``config.Jail`` do the same thing (the file path aside)."""
    fields = ("name", "sources", "maxretry", "findtime", "bantime", "bantime_increment",
              "bantime_factor", "bantime_max", "repeat_window", "allowlist")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and \
        a.filter.signature == b.filter.signature


class JailRunner:
    """One jail at run time: its logic and its filter."""

    def __init__(self, jail, allowlist):
        self.jail = jail
        self.filter = jail.filter
        self.logic = JailLogic(
            jail.name, jail.maxretry, jail.findtime,
            BanPolicy(jail.bantime, increment=jail.bantime_increment,
                      factor=jail.bantime_factor, maximum=jail.bantime_max,
                      repeat_window=jail.repeat_window),
            allowlist)
        self.bans = 0

    def carry_over(self, previous, now):
        """A changed jail of the same name keeps the failures still within its (new)
        findtime and its counters: a reload is no amnesty."""
        self.logic.window.restore(previous.logic.window.snapshot(now), now)
        self.logic.failures_seen = previous.logic.failures_seen
        self.logic.ignored_allowed = previous.logic.ignored_allowed
        self.bans = previous.bans

    def describe(self):
        j = self.jail
        return {"name": j.name, "filter": self.filter.name, "sources": list(j.sources),
                "maxretry": j.maxretry, "findtime_s": j.findtime, "bantime_s": j.bantime,
                "bantime_increment": j.bantime_increment,
                "failures": self.logic.failures_seen, "tracked": len(self.logic.window),
                "bans": self.bans}


class SourceSet:
    """Every file followed and journal read, by jail; see the module docstring.

    ``on_lines(runner, lines)`` and ``on_message(runner, identifier, message)`` get what
    is read. ``saved`` is the state file's ``{"positions": ..., "cursors": ...}``.
    """

    log = Logger()

    def __init__(self, reactor, on_lines, on_message, *, saved=None, use_inotify=True,
                 journalctl="/usr/bin/journalctl"):
        self.reactor = reactor
        self.on_lines, self.on_message = on_lines, on_message
        saved = saved or {}
        self.positions = dict(saved.get("positions") or {})
        self.cursors = dict(saved.get("cursors") or {})
        self.use_inotify, self.journalctl = use_inotify, journalctl
        self.followers = {}  # (jail name, path) -> FileFollower
        self.journals = {}   # jail name -> (JournalSource, journalctl, matches)
        self._inotify = None
        self._watched = set()
        self._by_path = {}
        self._poll_scheduled = set()
        self._poller = task.LoopingCall(self.poll_all)
        self._poller.clock = reactor

    # -- what to follow ---------------------------------------------------------------------
    def attach(self, runners):
        """Follow exactly the sources of ``runners`` (see the module docstring)."""
        files, journals = {}, {}
        for runner in runners:
            for source in runner.jail.sources:
                if source == "journal":
                    journals[runner.jail.name] = runner
                else:
                    files[(runner.jail.name, source.partition(":")[2])] = runner
        self._attach_files(files)
        self._attach_journals(journals)
        self._by_path = {}
        for (_, path), follower in self.followers.items():
            self._by_path.setdefault(path, []).append(follower)
        self._watch_folders()
        if not self._poller.running:
            self._poller.start(POLL_EVERY_S, now=False)

    def _attach_files(self, wanted):
        for key in [k for k in self.followers if k not in wanted]:
            follower = self.followers.pop(key)
            follower.close()
            if all(path != key[1] for _, path in self.followers) and \
                    all(path != key[1] for _, path in wanted):
                # Nobody reads it now: re-added later, it starts from its end, so lines
                # written meanwhile are not counted as fresh failures.
                self.positions.pop(key[1], None)
            self.log.info("stopped following {path} for jail {jail}", path=key[1],
                          jail=key[0])
        for key, runner in wanted.items():
            follower = self.followers.get(key)
            on_lines = lambda lines, r=runner: self.on_lines(r, lines)  # noqa: E731
            if follower is not None:
                follower.on_lines = on_lines
                continue
            follower = FileFollower(key[1], on_lines, start=self.positions.get(key[1], "end"))
            self.followers[key] = follower
            self._poll(follower)  # now: "end" is where the file ends as we start

    def _attach_journals(self, wanted):
        for name in list(self.journals):
            source, journalctl, matches = self.journals[name]
            runner = wanted.get(name)
            if runner is not None and (journalctl, matches) == (
                    self.journalctl, runner.filter.journalmatch):
                continue
            source.stop()
            if source.cursor:
                self.cursors[name] = source.cursor
            del self.journals[name]
        for name, runner in wanted.items():
            if name not in self.journals:
                source = JournalSource(self.reactor, None, runner.filter.journalmatch,
                                       journalctl=self.journalctl,
                                       cursor=self.cursors.get(name))
                self.journals[name] = (source, self.journalctl, runner.filter.journalmatch)
                source.start()
            self.journals[name][0].on_entry = \
                lambda ident, msg, r=runner: self.on_message(r, ident, msg)

    def _watch_folders(self):
        if not self.use_inotify:
            return
        try:
            from twisted.internet import inotify
            from twisted.python.filepath import FilePath
        except ImportError:
            return
        folders = {os.path.dirname(path) for path in self._by_path}
        if self._inotify is None:
            if not folders:
                return
            self._inotify = inotify.INotify(self.reactor)
            self._inotify.startReading()
        for folder in self._watched - folders:
            self._inotify.ignore(FilePath(folder))
        mask = (inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO |
                inotify.IN_CLOSE_WRITE | inotify.IN_ATTRIB)
        watched = self._watched & folders
        for folder in folders - self._watched:
            try:
                self._inotify.watch(FilePath(folder), mask=mask, callbacks=[self._changed])
            except Exception as exc:  # a missing folder: the timer still polls
                self.log.warn("cannot watch {folder}: {error}", folder=folder, error=exc)
                continue
            watched.add(folder)
        self._watched = watched

    def _changed(self, _watch, path, _mask):
        for follower in self._by_path.get(os.fsdecode(path.path), ()):
            self._poll_soon(follower)

    # -- reading ----------------------------------------------------------------------------
    def _poll_soon(self, follower):
        if follower not in self._poll_scheduled:
            self._poll_scheduled.add(follower)
            self.reactor.callLater(0, self._poll, follower)

    def _poll(self, follower):
        self._poll_scheduled.discard(follower)
        if not any(f is follower for f in self.followers.values()):
            return  # stopped by a reload since this poll was scheduled
        try:
            more = follower.poll()
        except OSError as exc:
            self.log.warn("reading {path}: {error}", path=follower.path, error=exc)
            return
        if more:
            self._poll_soon(follower)

    def poll_all(self):
        for follower in list(self.followers.values()):
            self._poll(follower)

    # -- state and end ----------------------------------------------------------------------
    def state(self):
        """``{"positions", "cursors"}`` for the state file, the sources' current places
        over the saved ones."""
        for (_, path), follower in self.followers.items():
            position = follower.position()
            if position is not None:
                self.positions[path] = position
        for name, (source, _, _) in self.journals.items():
            if source.cursor:
                self.cursors[name] = source.cursor
        return {"positions": dict(self.positions), "cursors": dict(self.cursors)}

    def stop(self):
        if self._poller.running:
            self._poller.stop()
        for source, _, _ in self.journals.values():
            source.stop()
        for follower in self.followers.values():
            follower.close()
        if self._inotify is not None:
            self._inotify.loseConnection()
            self._inotify = None
