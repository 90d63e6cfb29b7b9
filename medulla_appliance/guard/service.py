"""medulla-guard's service tree: sources -> filters -> jail logic -> ban book -> backend,
and, when an XMPP account is configured, ban events to the master.

Start-up order matters for "bans survive everything": the state file (offence history,
which jail banned whom) is read, the backend is set up and lists the bans still in the
firewall, bans the state file knows but the firewall lost (a reboot empties nftables)
are put back for what remains of them, and only then are sources followed, the control
socket opened and the master told (its link starts last: its first snapshot lists the
restored bans).

SIGHUP (``reload``) re-reads guard.ini and the rules folder; a bad rule refuses the whole
reload and the running jails go on. Added, removed and changed jails, filters and sources
take effect; bans in force are kept (see ``runners.SourceSet.attach``).
"""

import ipaddress
import os

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from ..core.config import ConfigError
from ..core.xmpp.link import ApplianceLink
from . import config as guard_config
from .control import CommandError, ControlFactory
from .filters import normalise_address
from .logic.bans import BanBook, BanRefused
from .logic.jail import Allowlist
from .nft import DryRunBackend, NftBackend, NftRunner
from .notify import BanNotifier
from .runners import POLL_EVERY_S, JailRunner, SourceSet, same_jail
from .state import (
    local_addresses,
    master_fleet_hosts,
    read_state,
    remove_stale_socket,
    write_state,
)

__all__ = ("POLL_EVERY_S", "GuardService", "build")

STATE_FILE = "state.json"
STATE_EVERY_S = 5.0
MANUAL_JAIL = "manual"
#: Changing these needs a restart: they name what the running daemon is attached to.
_FIXED = (("guard", "backend"), ("guard", "table"), ("guard", "verdict"), ("guard", "nft"),
          ("guard", "state_dir"), ("guard", "control_socket"))


def _networks(items):
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue
    return nets


def _one_line(error):
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


class GuardService(service.MultiService):
    """Everything medulla-guard runs, built from guard.ini and the rules folder."""

    log = Logger()

    def __init__(self, cfg, reactor, jails, *, backend=None, use_inotify=True,
                 local=None, link=None):
        super().__init__()
        self.cfg, self.reactor = cfg, reactor
        guard = cfg["guard"]
        self.state_path = os.path.join(guard["state_dir"], STATE_FILE)
        self.book = BanBook(guard["max_bans"],
                            on_expired=lambda ban: self._tell_unbanned(ban, "expired"))
        self._local = local_addresses() if local is None else list(local)
        self._fleet = []
        self.allowlist = self._make_allowlist(cfg, jails_allow=())
        self.backend = backend or self._make_backend(cfg, reactor)
        self.runners = [JailRunner(j, self._make_allowlist(cfg, j.allowlist)) for j in jails]
        self._use_inotify = use_inotify
        self.sources = None
        self._port = None
        self._ready = defer.Deferred()
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = reactor
        # The link to the master: ApplianceLink from [xmpp] (tests pass their own).
        self.link, self._own_link = link, False
        if link is None and cfg["xmpp"]["jid"]:
            self.link, self._own_link = ApplianceLink(cfg, reactor, name="medulla-guard"), True
        self.notifier = None
        if self.link is not None:
            self.notifier = BanNotifier(self.link, reactor,
                                        lambda: self.book.active(self.reactor.seconds()),
                                        snapshot_interval=guard["snapshot_interval"])
            self.link.on_session(self.notifier.session_up, self.notifier.session_down)

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
        # Failures counted before a restart still count: a restart is no amnesty.
        windows = state.get("failures") if isinstance(state.get("failures"), dict) else {}
        for runner in self.runners:
            runner.logic.window.restore(windows.get(runner.jail.name), now)
        present = await self.backend.setup()
        await self._reconcile(present, now)
        await self._resolve_fleet()
        self.sources = SourceSet(self.reactor, self._lines, self._message,
                                 saved={k: state.get(k) if isinstance(state.get(k), dict)
                                        else {} for k in ("positions", "cursors")},
                                 use_inotify=self._use_inotify,
                                 journalctl=self.cfg["guard"]["journalctl"])
        self.sources.attach(self.runners)
        await self._listen_control()
        self._ticker.start(STATE_EVERY_S, now=False)
        if self._own_link:
            self.link.setServiceParent(self)  # started now, as the parent runs
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

    async def _listen_control(self):
        path = self.cfg["guard"]["control_socket"]
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        remove_stale_socket(path)
        endpoint = endpoints.UNIXServerEndpoint(self.reactor, path, mode=0o660)
        self._port = await endpoint.listen(ControlFactory(self))

    def when_ready(self):
        return self._ready

    def stopService(self):
        if self._ticker.running:
            self._ticker.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if self.sources is not None:
            self._write_state()
            self.sources.stop()
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        if self._port is not None:
            d.addCallback(lambda _: self._port.stopListening())
        return d

    def status_line(self):
        failures = sum(r.logic.failures_seen for r in self.runners)
        line = "%d jails, %d bans in force, %d failures seen" % (
            len(self.runners), len(self.book), failures)
        if self.link is not None:
            line += "; master " + ("connected" if self.link.connected else "not connected")
        return line

    # -- reload -----------------------------------------------------------------------

    def reload(self, cfg):
        """SIGHUP: jails, filters, sources, the allowlist, limits and fleet hosts.

        A rule file with a mistake refuses the whole reload (one log line) and the
        running configuration goes on; bans in force are never touched.
        """
        try:
            jails = guard_config.load_rules(cfg["guard"]["rules_dir"])
        except ConfigError as exc:
            self.log.error("reload refused, the running jails go on: {error}",
                           error=_one_line(exc))
            return False
        keys = list(_FIXED) + [(section, key) for section in ("xmpp", "keys")
                               for key in cfg[section]]
        fixed = ["[%s] %s" % (s, k) for s, k in keys if cfg[s][k] != self.cfg[s][k]]
        if fixed:
            self.log.warn("{keys} changed: restart medulla-guard to apply",
                          keys=", ".join(fixed))
        self.cfg = cfg
        self.book.max_bans = cfg["guard"]["max_bans"]
        self.runners = self._new_runners(jails, self.reactor.seconds())
        self._refresh_allowlists(cfg)
        if self.sources is not None:
            self.sources.journalctl = cfg["guard"]["journalctl"]
            self.sources.attach(self.runners)
        self.log.info("reloaded: jails {names}", names=", ".join(
            r.jail.name for r in self.runners) or "none")
        d = defer.ensureDeferred(self._resolve_fleet())
        d.addErrback(lambda f: self.log.failure("fleet hosts", f))
        return True

    def _new_runners(self, jails, now):
        old = {runner.jail.name: runner for runner in self.runners}
        runners = []
        for jail in jails:
            previous = old.get(jail.name)
            if previous is not None and same_jail(previous.jail, jail):
                runners.append(previous)  # unchanged: counts, sources, all kept
                continue
            runner = JailRunner(jail, self._make_allowlist(self.cfg, jail.allowlist))
            if previous is not None:
                runner.carry_over(previous, now)
            runners.append(runner)
        return runners

    # -- lines to bans ----------------------------------------------------------------

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
        self._tell_banned(ban)

    def _apply(self, address, seconds):
        d = self.backend.ban(address, seconds)
        d.addErrback(lambda f: self.log.error("ban of {address} not applied: {error}",
                                              address=address, error=f.getErrorMessage()))
        return d

    def _tell_banned(self, ban):
        if self.notifier is not None:
            self.notifier.banned(ban)

    def _tell_unbanned(self, ban, reason):
        if self.notifier is not None:
            self.notifier.unbanned(ban, reason)

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
            ban = self.book.add(address, MANUAL_JAIL, seconds, now, manual=True)
        except BanRefused as exc:
            raise CommandError("full", str(exc)) from None
        await self.backend.ban(address, seconds)
        self.log.warn("banned {address} for {seconds}s by the admin", address=address,
                      seconds=round(seconds))
        self._tell_banned(ban)
        return {"ban": ban.describe(now)}

    async def control_unban(self, text):
        address = self._address(text)
        was = self.book.remove(address)
        for runner in self.runners:
            runner.logic.window.forget(address)
        await self.backend.unban(address)
        self.log.warn("unbanned {address} by the admin", address=address)
        if was is not None:
            self._tell_unbanned(was, "admin")
        return {"address": address, "was_banned": was is not None}

    # -- state --------------------------------------------------------------------------

    def _tick(self):
        now = self.reactor.seconds()
        self.book.expire(now)
        for runner in self.runners:
            runner.logic.window.prune(now)
        self._write_state()

    def _write_state(self):
        now = self.reactor.seconds()
        state = self.book.to_state(now)
        state.update(self.sources.state(),
                     failures={r.jail.name: r.logic.window.snapshot(now) for r in self.runners})
        write_state(self.state_path, state)


def build(cfg, reactor):
    """The service for ``cfg``, with the jails of its rules folder."""
    jails = guard_config.load_rules(cfg["guard"]["rules_dir"])
    return GuardService(cfg, reactor, jails)
