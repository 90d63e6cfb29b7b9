"""The controller: configures Syncthing, follows its events, and keeps the ``.complete``
markers (and the listener) in step with what is really complete.

A look at the packages ("evaluation") asks Syncthing what is still needed, verifies the
package folders in a thread, and then changes the markers on the reactor. Syncthing
events only schedule a look, except the ones that announce a change to a package
(``ItemStarted``): that package's marker goes at once, before its files are replaced.
A package Syncthing touched while a look was under way gets no marker from that look,
only from the next one.
"""

from __future__ import annotations

import random

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from ..packages.token import PACKAGE_ID_RE
from . import configure, packages
from .completion import (
    LocalCompletion,
    RemoteCompletion,
    held_by,
    package_of,
    pending_packages,
)
from .events import EventStream
from .rest import SyncthingError, SyncthingNotFound

#: Events that can make a package complete or incomplete, per item name.
_ITEM_EVENTS = ("ItemStarted", "ItemFinished")


class LogListener:
    """A PackageListener that only logs (no XMPP configured)."""

    log = Logger()

    def on_package_complete(self, relay_name, package_id, descriptor_sha256):
        self.log.info("package {package} complete on {relay} (descriptor {sha})",
                      package=package_id, relay=relay_name, sha=descriptor_sha256[:12])

    def on_package_gone(self, relay_name, package_id, descriptor_sha256):
        self.log.info("package {package} no longer complete on {relay}",
                      package=package_id, relay=relay_name)


def _in_thread(reactor):
    def run(fn, *args):
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)
    return run


class SyncthingController(service.Service):
    """Drives one Syncthing through ``client`` (a SyncthingClient) for ``settings``.

    ``listener`` is told of packages complete here (as ``settings.name``) and, on the
    master, on each relay (as the peer's name). ``run_in_thread(fn, *args)`` runs the disk
    work; the reactor's thread pool by default.
    """

    log = Logger()

    def __init__(self, client, settings, listener=None, *, clock, run_in_thread=None,
                 rand=random.random):
        self.client, self.settings, self.clock = client, settings, clock
        self.listener = listener or LogListener()
        self.run_in_thread = run_in_thread or _in_thread(clock)
        self.root = settings.packages_root
        self.device_id = None
        self.local = LocalCompletion()
        self.remote = RemoteCompletion()
        self.verified: dict[str, packages.Verified] = {}  # verification cache, by package
        self.stream = EventStream(client, clock, self._on_event, on_connect=self._connected,
                                  on_gap=self.request_evaluation, rand=rand)
        self.last_error = None
        self.evaluations = 0
        self._ready = defer.Deferred()
        self._timer = None
        self._evaluation = None
        self._again = False
        self._reconfigure = False
        self._seq = 0  # counts the events that may change what is complete
        self._index_seq = 0  # _seq of the last index change (what is needed may differ)
        self._touched: dict[str, int] = {}  # package -> _seq of its last change
        self._resync = task.LoopingCall(self.request_evaluation)
        self._resync.clock = clock

    # -- service -------------------------------------------------------------------------
    def startService(self):
        super().startService()
        packages.ensure_layout(self.root)
        # Empty: the first look announces every complete package, markers already there
        # included, so the listener (and the master) learn the whole state.
        self.local = LocalCompletion()
        self.stream.start()
        self._resync.start(self.settings.resync_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._resync.running:
            self._resync.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._evaluation is not None:
            self._evaluation.cancel()  # a thread still hashing stops at its next chunk
        d = self.stream.stop()
        d.addBoth(lambda _: self.client.close())
        return d

    def when_ready(self):
        """Fires once Syncthing answered and the configuration was applied."""
        return self._ready

    @property
    def connected(self):
        return self.stream.connected

    def status_line(self):
        state = "connected" if self.connected else "unreachable"
        line = "Syncthing %s (%s); %d packages complete here" % (
            state, self.settings.role, len(self.local.complete))
        if self.remote.complete:
            line += "; on relays: " + ", ".join(
                "%s %d" % (name, len(done)) for name, done in sorted(self.remote.complete.items()))
        return line

    def update_settings(self, settings):
        """Reload: new peers and discovery options are applied to Syncthing."""
        for name in set(self.remote.complete) - {p.name for p in settings.peers}:
            for package_id, sha in self.remote.forget(name).items():
                self._tell_gone(name, package_id, sha)
        self.settings = settings
        self._reconfigure = True
        self.request_evaluation(0)

    # -- connection ----------------------------------------------------------------------
    async def _connected(self):
        status = await self.client.status()
        self.device_id = status["myID"]
        await self._apply_config()
        if not self._ready.called:
            self._ready.callback(None)
        self.request_evaluation(0)

    async def _apply_config(self):
        self._reconfigure = False
        changes = await configure.apply(self.client, self.settings, self.device_id)
        if changes:
            self.log.info("Syncthing configured: {changes}", changes="; ".join(changes))

    # -- events --------------------------------------------------------------------------
    def _on_event(self, event):
        kind, data = event.get("type"), event.get("data") or {}
        folder = data.get("folder")
        if folder is not None and folder != self.settings.folder_id:
            return
        if kind in _ITEM_EVENTS:
            package_id = package_of(data.get("item") or "")
            self._touch(package_id)
            if kind == "ItemStarted":
                self._withdraw(package_id)
            self.request_evaluation()
        elif kind == "LocalIndexUpdated":
            for name in data.get("filenames") or ():
                self._touch(package_of(name))
            self._index_seq = self._seq = self._seq + 1
            self.request_evaluation()
        elif kind == "RemoteIndexUpdated":
            # What this node needs may have changed for any package: look now, before the
            # puller (it waits a second or two) starts replacing files.
            self._index_seq = self._seq = self._seq + 1
            self.request_evaluation(0 if self.settings.role == "relay" else None)
        elif kind == "FolderCompletion":
            if self.settings.peer_by_device(data.get("device", "")) is not None:
                self.request_evaluation()
        elif kind == "ConfigSaved":
            self._reconfigure = True
            self.request_evaluation()
        elif kind in ("FolderSummary", "StateChanged", "DeviceConnected"):
            self.request_evaluation()

    def _touch(self, package_id):
        self._seq += 1
        self._touched[package_id] = self._seq

    def _withdraw(self, package_id):
        if self.settings.role != "relay" or not PACKAGE_ID_RE.fullmatch(package_id):
            return  # the master's folder is the source: Syncthing never writes into it
        removed = packages.remove_marker(self.root, package_id)
        sha = self.local.withdraw(package_id)
        if removed or sha:
            self.log.info("package {package} is changing: no longer offered", package=package_id)
        if sha:
            self._tell_gone(self.settings.name, package_id, sha)

    # -- scheduling ----------------------------------------------------------------------
    def request_evaluation(self, delay=None):
        """Look at the packages after ``delay`` (default: the settle delay)."""
        if not self.running or self.device_id is None:
            return
        if delay is None:
            delay = self.settings.settle_delay
        if self._evaluation is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() - self.clock.seconds() > delay:
                self._timer.reset(delay)
            return
        self._timer = self.clock.callLater(delay, self._start_evaluation)

    def _start_evaluation(self):
        self._timer = None
        self._again = False
        d = self._evaluation = defer.Deferred.fromCoroutine(self._evaluate())
        d.addErrback(self._evaluation_failed)
        d.addBoth(self._evaluation_done)

    def _evaluation_failed(self, failure):
        if failure.check(packages.Interrupted, defer.CancelledError) and not self.running:
            return
        self.last_error = failure.getErrorMessage()
        if failure.check(SyncthingError):
            self.log.warn("cannot check packages: {error}", error=self.last_error)
        else:
            self.log.failure("checking packages failed", failure)
        self._again = True

    def _evaluation_done(self, _):
        self._evaluation = None
        self.evaluations += 1
        if self._again and self.running:
            self.request_evaluation()

    # -- the look itself -------------------------------------------------------------------
    async def _evaluate(self):
        if self._reconfigure:
            await self._apply_config()
        start = self._seq
        folder = self.settings.folder_id
        pending = set()
        if self.settings.role == "relay":
            summary = await self.client.db_status(folder)
            if summary.get("receiveOnlyTotalItems") and self.settings.revert_local_changes:
                self.log.warn("{count} files were changed by hand in the packages folder: "
                              "reverting them to the master's", count=summary[
                                  "receiveOnlyTotalItems"])
                await self.client.revert(folder)
            if summary.get("needTotalItems"):
                pending = pending_packages(await self.client.need(folder))
        found, markers = await self.run_in_thread(packages.scan, self.root, self.verified,
                                                  lambda: not self.running)
        if not self.running:
            return

        relay = self.settings.role == "relay"

        def may_write(package_id):
            # Nothing of this package was touched since we started looking and, on a relay,
            # Syncthing's index did not change since we asked what it still needs.
            return self._touched.get(package_id, 0) <= start and not (
                relay and self._index_seq > start)

        # Markers withdrawn meanwhile are still in `markers`: their packages were touched,
        # so this look neither writes nor announces them.
        self._apply_local(self.local.decide(found, pending, markers, may_write=may_write),
                          found)
        for package_id, seq in list(self._touched.items()):
            if seq <= start:
                del self._touched[package_id]
        if self.settings.role == "master":
            await self._evaluate_relays(found)
        self.last_error = None

    def _apply_local(self, changes, found):
        for package_id in sorted(changes.remove):
            packages.remove_marker(self.root, package_id)
        for verified in changes.write.values():
            packages.write_marker(self.root, verified)
        for package_id, sha in sorted(changes.gone.items()):
            self.log.info("package {package} withdrawn: {why}", package=package_id,
                          why=_why(found.get(package_id)))
            self._tell_gone(self.settings.name, package_id, sha)
        for package_id, sha in sorted(changes.completed.items()):
            self.log.info("package {package} complete and verified (descriptor {sha})",
                          package=package_id, sha=sha[:12])
            self._tell_complete(self.settings.name, package_id, sha)
        for package_id, verified in found.items():
            if verified.problem and package_id not in self.local.complete:
                self.log.debug("package {package} not complete: {problem}",
                               package=package_id, problem=verified.problem)

    async def _evaluate_relays(self, found):
        folder = self.settings.folder_id
        local = dict(self.local.complete)
        for peer in self.settings.peers:
            pending = pending_packages(await self.client.remote_need(folder, peer.device_id))
            known = self.remote.complete.get(peer.name, {})
            held = set()
            for package_id, sha in local.items():
                if package_id in pending:
                    continue
                if known.get(package_id) == sha or await self._held(
                        peer.device_id, package_id, found.get(package_id)):
                    held.add(package_id)
            self.log.debug("{relay}: needs items of {pending}; holds {held}",
                           relay=peer.name, pending=sorted(pending), held=sorted(held))
            completed, gone = self.remote.decide(peer.name, local, held, pending)
            for package_id, sha in sorted(gone.items()):
                self._tell_gone(peer.name, package_id, sha)
            for package_id, sha in sorted(completed.items()):
                self._tell_complete(peer.name, package_id, sha)

    async def _held(self, device_id, package_id, verified):
        """Whether ``device_id`` holds the global version of every file of the package, at
        the size it has here."""
        if verified is None or verified.fingerprint is None:
            return False
        for path, size, mtime_ns, *_ in verified.fingerprint:
            try:
                record = await self.client.file(self.settings.folder_id,
                                                f"{package_id}/{path}")
            except SyncthingNotFound:
                return False  # not scanned by Syncthing yet
            if not held_by(record or {}, device_id, size, mtime_ns):
                return False
        return True

    # -- telling ---------------------------------------------------------------------------
    def _tell_complete(self, relay, package_id, sha):
        try:
            self.listener.on_package_complete(relay, package_id, sha)
        except Exception:
            self.log.failure("listener failed on {package}", package=package_id)

    def _tell_gone(self, relay, package_id, sha):
        try:
            self.listener.on_package_gone(relay, package_id, sha)
        except Exception:
            self.log.failure("listener failed on {package}", package=package_id)


def _why(verified):
    if verified is None:
        return "deleted"
    if verified.complete:
        return "changed"
    return verified.problem
