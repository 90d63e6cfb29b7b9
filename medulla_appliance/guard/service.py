"""medulla-guard's service tree: sources -> filters -> jail logic -> ban book -> backend.

Start-up order matters for "bans survive everything": the state file (offence history,
which jail banned whom) is read, the backend is set up and lists the bans still in the
firewall, bans the state file knows but the firewall lost (a reboot empties nftables)
are put back for what remains of them, and only then are sources followed and the
control socket opened.
"""

import ipaddress
import os

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from . import config as guard_config
from .control import CommandError, ControlFactory
from .filters import normalise_address
from .logic.bans import BanBook, BanRefused
from .logic.jail import Allowlist, BanPolicy, JailLogic
from .nft import DryRunBackend, NftBackend, NftRunner
from .sources import FileFollower, JournalSource
from .state import (
    local_addresses,
    master_fleet_hosts,
    read_state,
    remove_stale_socket,
    write_state,
)

STATE_FILE = "state.json"
STATE_EVERY_S = 5.0
POLL_EVERY_S = 0.5
MANUAL_JAIL = "manual"


def _networks(items):
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue
    return nets


class JailRunner:
    """One jail at run time: its logic, its filter, the sources feeding it."""

    def __init__(self, jail, allowlist):
        self.jail = jail
        self.filter = jail.filter
        self.logic = JailLogic(
            jail.name, jail.maxretry, jail.findtime,
            BanPolicy(jail.bantime, increment=jail.bantime_increment,
                      factor=jail.bantime_factor, maximum=jail.bantime_max,
                      repeat_window=jail.repeat_window),
            allowlist)
        self.followers = []
        self.journal = None
        self.bans = 0

    def describe(self):
        j = self.jail
        return {"name": j.name, "filter": self.filter.name, "sources": list(j.sources),
                "maxretry": j.maxretry, "findtime_s": j.findtime, "bantime_s": j.bantime,
                "bantime_increment": j.bantime_increment,
                "failures": self.logic.failures_seen, "tracked": len(self.logic.window),
                "bans": self.bans}


class GuardService(service.MultiService):
    """Everything medulla-guard runs, built from guard.ini and the rules folder."""

    log = Logger()

    def __init__(self, cfg, reactor, jails, *, backend=None, use_inotify=True,
                 local=None):
        super().__init__()
        self.cfg, self.reactor = cfg, reactor
        guard = cfg["guard"]
        self.state_path = os.path.join(guard["state_dir"], STATE_FILE)
        self.book = BanBook(guard["max_bans"])
        self._local = local_addresses() if local is None else list(local)
        self._fleet = []
        self.allowlist = self._make_allowlist(cfg, jails_allow=())
        self.backend = backend or self._make_backend(cfg, reactor)
        self.runners = [JailRunner(j, self._make_allowlist(cfg, j.allowlist)) for j in jails]
        self._use_inotify = use_inotify
        self._inotify = None
        self._saved = {"positions": {}, "cursors": {}}
        self._port = None
        self._poll_scheduled = set()
        self._ready = defer.Deferred()
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = reactor
        self._poller = task.LoopingCall(self._poll_all)
        self._poller.clock = reactor

    # -- construction -----------------------------------------------------------------

    @staticmethod
    def _make_backend(cfg, reactor):
        guard = cfg["guard"]
        if guard["backend"] == "dryrun":
            return DryRunBackend(reactor)
        return NftBackend(NftRunner(reactor, guard["nft"]), guard["table"], guard["verdict"])

    def _make_allowlist(self, cfg, jails_allow):
        items = list(cfg["guard"]["allowlist"]) + list(jails_allow)
        return Allowlist(_networks(items) + _networks(self._local) + _networks(self._fleet))

    # -- life cycle -------------------------------------------------------------------

    def startService(self):
        service.MultiService.startService(self)
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self._ready.callback, self._ready.errback)

    async def _start(self):
        now = self.reactor.seconds()
        state = read_state(self.state_path)
        self.book.load_state(state, now)
        for key in ("positions", "cursors"):
            if isinstance(state.get(key), dict):
                self._saved[key] = state[key]
        # Failures counted before a restart still count: a restart is no amnesty.
        windows = state.get("failures") if isinstance(state.get("failures"), dict) else {}
        for runner in self.runners:
            runner.logic.window.restore(windows.get(runner.jail.name), now)
        present = await self.backend.setup()
        await self._reconcile(present, now)
        await self._resolve_fleet()
        self._start_sources()
        await self._listen_control()
        self._ticker.start(STATE_EVERY_S, now=False)
        self.log.info("guarding with {jails} jails, backend {backend}, {bans} bans in force",
                      jails=len(self.runners), backend=self.backend.name, bans=len(self.book))

    async def _reconcile(self, present, now):
        seen = set()
        for address, remaining in present:
            host = normalise_address(address)
            if host is None:
                continue
            seen.add(host)
            self.book.restore(host, remaining, now)
        for ban in self.book.active(now):
            if ban.address not in seen and ban.remaining(now) >= 1:
                # The firewall lost it (a reboot): put it back for what remains.
                await self.backend.ban(ban.address, ban.remaining(now))
        if present or len(self.book):
            self.log.info("restored {count} bans", count=len(self.book))

    async def _resolve_fleet(self):
        resolved = []
        hosts = list(self.cfg["guard"]["fleet_hosts"])
        hosts += master_fleet_hosts(self.cfg["guard"]["fleet_from_master"])
        for host in dict.fromkeys(hosts):
            if normalise_address(host):
                resolved.append(host)
                continue
            try:
                resolved.append((await self.reactor.resolve(host, timeout=(2,))))
            except Exception as exc:
                self.log.warn("fleet host {host} not resolved ({error}); not allowlisted "
                              "until the next reload", host=host, error=exc)
        self._fleet = resolved
        self._refresh_allowlists(self.cfg)

    def _refresh_allowlists(self, cfg):
        self.allowlist = self._make_allowlist(cfg, ())
        for runner in self.runners:
            runner.logic.allowlist = self._make_allowlist(cfg, runner.jail.allowlist)

    def _start_sources(self):
        positions = self._saved["positions"]
        for runner in self.runners:
            for source in runner.jail.sources:
                if source == "journal":
                    key = runner.jail.name
                    runner.journal = JournalSource(
                        self.reactor, lambda ident, msg, r=runner: self._message(r, ident, msg),
                        runner.filter.journalmatch,
                        journalctl=self.cfg["guard"]["journalctl"],
                        cursor=self._saved["cursors"].get(key))
                    runner.journal.start()
                    continue
                path = source.partition(":")[2]
                follower = FileFollower(path, lambda lines, r=runner: self._lines(r, lines),
                                        start=positions.get(path, "end"))
                runner.followers.append(follower)
                self._poll(follower)
        self._watch_folders()
        self._poller.start(POLL_EVERY_S, now=False)

    def _watch_folders(self):
        if not self._use_inotify:
            return
        try:
            from twisted.internet import inotify
            from twisted.python.filepath import FilePath
        except ImportError:
            return
        folders = {}
        for runner in self.runners:
            for follower in runner.followers:
                folders.setdefault(os.path.dirname(follower.path), []).append(follower)
        if not folders:
            return
        self._inotify = inotify.INotify(self.reactor)
        self._inotify.startReading()
        mask = (inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO |
                inotify.IN_CLOSE_WRITE | inotify.IN_ATTRIB)
        for folder, followers in folders.items():
            by_name = {os.path.basename(f.path).encode(): f for f in followers}

            def changed(_watch, path, _mask, by_name=by_name):
                follower = by_name.get(path.basename())
                if follower is not None:
                    self._poll_soon(follower)
            try:
                self._inotify.watch(FilePath(folder), mask=mask, callbacks=[changed])
            except Exception as exc:  # a missing folder: the timer still polls
                self.log.warn("cannot watch {folder}: {error}", folder=folder, error=exc)

    async def _listen_control(self):
        path = self.cfg["guard"]["control_socket"]
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        remove_stale_socket(path)
        endpoint = endpoints.UNIXServerEndpoint(self.reactor, path, mode=0o660)
        self._port = await endpoint.listen(ControlFactory(self))

    def when_ready(self):
        return self._ready

    def stopService(self):
        for call in (self._ticker, self._poller):
            if call.running:
                call.stop()
        for runner in self.runners:
            if runner.journal is not None:
                runner.journal.stop()
            for follower in runner.followers:
                follower.close()
        if self._inotify is not None:
            self._inotify.loseConnection()
        self._write_state()
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        if self._port is not None:
            d.addCallback(lambda _: self._port.stopListening())
        return d

    def status_line(self):
        failures = sum(r.logic.failures_seen for r in self.runners)
        return "%d jails, %d bans in force, %d failures seen" % (
            len(self.runners), len(self.book), failures)

    def reload(self, cfg):
        """SIGHUP: the allowlist, max_bans, and fleet hosts (jails need a restart)."""
        self.cfg = cfg
        self.book.max_bans = cfg["guard"]["max_bans"]
        self._refresh_allowlists(cfg)
        d = defer.ensureDeferred(self._resolve_fleet())
        d.addErrback(lambda f: self.log.failure("fleet hosts", f))

    # -- lines to bans ----------------------------------------------------------------

    def _poll_soon(self, follower):
        if follower not in self._poll_scheduled:
            self._poll_scheduled.add(follower)
            self.reactor.callLater(0, self._poll, follower)

    def _poll(self, follower):
        self._poll_scheduled.discard(follower)
        try:
            more = follower.poll()
        except OSError as exc:
            self.log.warn("reading {path}: {error}", path=follower.path, error=exc)
            return
        if more:
            self._poll_soon(follower)

    def _poll_all(self):
        for runner in self.runners:
            for follower in runner.followers:
                self._poll(follower)

    def _lines(self, runner, lines):
        for hit, _line in runner.filter.scan(lines):
            self.failure(runner, hit.host)

    def _message(self, runner, identifier, message):
        hit = runner.filter.match_message(message, identifier)
        if hit is not None:
            self.failure(runner, hit.host)

    def failure(self, runner, address):
        """One failure from ``address`` seen by ``runner``'s jail."""
        now = self.reactor.seconds()
        if self.book.get(address, now) is not None:
            runner.logic.failures_seen += 1
            return  # already banned: lines written before the ban took effect
        decision = runner.logic.failure(address, now, self.book.history(address, now))
        if decision is None:
            return
        try:
            ban = self.book.add(address, runner.jail.name, decision.seconds, now,
                                offence=decision.offence, failures=decision.failures)
        except BanRefused as exc:
            self.log.error("not banning {address} ({jail}): {reason}", address=address,
                           jail=runner.jail.name, reason=exc)
            return
        runner.bans += 1
        self.log.warn("banned {address} for {seconds}s: {failures} failures in {jail} "
                      "(offence {offence})", address=address, seconds=round(ban.until - now),
                      failures=decision.failures, jail=runner.jail.name,
                      offence=decision.offence)
        self._apply(address, decision.seconds)

    def _apply(self, address, seconds):
        d = self.backend.ban(address, seconds)
        d.addErrback(lambda f: self.log.error("ban of {address} not applied: {error}",
                                              address=address, error=f.getErrorMessage()))
        return d

    # -- control commands (see control.py) --------------------------------------------

    def control_status(self):
        return {"backend": self.backend.name, "table": self.cfg["guard"]["table"],
                "bans": len(self.book.active(self.reactor.seconds())),
                "jails": [r.describe() for r in self.runners],
                "allowlist": self.allowlist.networks()}

    def control_bans(self):
        now = self.reactor.seconds()
        return {"bans": [b.describe(now) for b in self.book.active(now)]}

    def _address(self, text):
        host = normalise_address(text.strip())
        if host is None:
            raise CommandError("bad-address", "not an IP address: %r" % text[:100])
        return host

    async def control_ban(self, text, seconds=None):
        address = self._address(text)
        if address in self.allowlist:
            raise CommandError("allowlisted", "%s is in the allowlist; it is never banned"
                               % address)
        seconds = seconds or self.cfg["guard"]["manual_bantime"]
        now = self.reactor.seconds()
        try:
            ban = self.book.add(address, MANUAL_JAIL, seconds, now)
        except BanRefused as exc:
            raise CommandError("full", str(exc)) from None
        await self.backend.ban(address, seconds)
        self.log.warn("banned {address} for {seconds}s by the admin", address=address,
                      seconds=round(seconds))
        return {"ban": ban.describe(now)}

    async def control_unban(self, text):
        address = self._address(text)
        was = self.book.remove(address)
        for runner in self.runners:
            runner.logic.window.forget(address)
        await self.backend.unban(address)
        self.log.warn("unbanned {address} by the admin", address=address)
        return {"address": address, "was_banned": was is not None}

    # -- state --------------------------------------------------------------------------

    def _tick(self):
        now = self.reactor.seconds()
        self.book.expire(now)
        for runner in self.runners:
            runner.logic.window.prune(now)
        self._write_state()

    def _write_state(self):
        positions = dict(self._saved["positions"])
        cursors = dict(self._saved["cursors"])
        for runner in self.runners:
            for follower in runner.followers:
                position = follower.position()
                if position is not None:
                    positions[follower.path] = position
            if runner.journal is not None and runner.journal.cursor:
                cursors[runner.jail.name] = runner.journal.cursor
        now = self.reactor.seconds()
        state = self.book.to_state(now)
        state.update(positions=positions, cursors=cursors,
                     failures={r.jail.name: r.logic.window.snapshot(now) for r in self.runners})
        write_state(self.state_path, state)
        self._saved = {"positions": positions, "cursors": cursors}


def build(cfg, reactor):
    """The service for ``cfg``, with the jails of its rules folder."""
    jails = guard_config.load_rules(cfg["guard"]["rules_dir"])
    return GuardService(cfg, reactor, jails)
