"""Deployments on the master: create them, schedule their targets pass by pass, send
`deploy.start` to agents, record what they report, stop and restart them.

Everything lives in the store, so a restarted master carries on where it was; a pass
runs every `tick` seconds and whenever something changes (a result, a new deployment).
"""

import os

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from ..core.xmpp.channel import Refusal
from ..packages.descriptor import descriptor_sha256
from . import deploy_storage as ds
from .logic import scheduler

DEFAULT_WINDOW_SECONDS = 24 * 3600
#: `[deploy] missing_agent_after`: a started target's machine offline this long is
#: ABORT MISSING AGENT (long enough for a reboot step and the agent's return).
DEFAULT_MISSING_AGENT_SECONDS = 15 * 60
MASTER_RELAY = "master"


def parse_relay_urls(items):
    """{relay name: base URL} from config items 'NAME URL'."""
    urls = {}
    for item in items:
        name, _, url = item.partition(" ")
        if not url.strip().startswith(("http://", "https://")):
            raise ValueError("[deploy] relay_urls: %r is not 'NAME http(s)://...'" % item)
        urls[name] = url.strip()
    return urls


def _sync_items(items):
    if not isinstance(items, list) or len(items) > 10_000:
        raise Refusal(400, "bad-field", "expected a list of packages")
    out = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("package_id"), str)
                and isinstance(item.get("descriptor_sha256"), str)):
            raise Refusal(400, "bad-field", "expected {package_id, descriptor_sha256}")
        out.append((item["package_id"], item["descriptor_sha256"]))
    return out


class DeploymentError(Exception):
    """A deployment request we refuse: the message says why (shown by the API)."""


class DeploymentNotFound(DeploymentError):
    """No deployment has that id (the API answers 404)."""


class Deployments:
    """The master's deployment coordinator."""

    log = Logger()

    def __init__(self, store, clock, registry, channel, make_token, packages, relay_urls, *,
                 tick=1.0, missing_agent_after=DEFAULT_MISSING_AGENT_SECONDS,
                 rand=os.urandom, in_thread=threads.deferToThread):
        self.store, self.clock, self.registry, self.channel = store, clock, registry, channel
        self.make_token = make_token      # (claims) -> token text
        self.packages = packages          # a packages.store.PackageStore
        self.relay_urls = dict(relay_urls)
        self.rand = rand
        self.in_thread = in_thread       # for the package store's blocking file work
        self._loop = task.LoopingCall(self.run_pass)
        self._loop.clock = clock
        self._tick = tick
        self.missing_agent_after = missing_agent_after
        # {deployment id: {uuid: when its started target was first seen offline}}; in
        # memory only, so a restarted master gives every agent the full delay again.
        self._offline_since = {}
        self._passing = None

    def start(self):
        self._loop.start(self._tick, now=False)

    def stop(self):
        if self._loop.running:
            self._loop.stop()

    # -- admin requests ----------------------------------------------------------------

    @defer.inlineCallbacks
    def create(self, package_id, names, *, start_at=None, end_at=None, max_per_relay=10,
               retries=1, sequence="install"):
        try:
            descriptor = yield self.in_thread(self.packages.get, package_id)
            raw = yield self.in_thread(self.packages.descriptor_bytes, package_id)
            sha = descriptor_sha256(raw)
        except Exception as e:
            raise DeploymentError("no usable package %r: %s" % (package_id, e)) from None
        if sequence not in descriptor.sequences.get("linux", {}):
            raise DeploymentError("package %r has no linux %r sequence" % (package_id, sequence))
        uuids = yield self._resolve(names)
        now = self.clock.seconds()
        start_at = now if start_at is None else float(start_at)
        end_at = start_at + DEFAULT_WINDOW_SECONDS if end_at is None else float(end_at)
        if end_at <= start_at:
            raise DeploymentError("the window ends before it starts")
        dep = {"id": "dep-" + self.rand(8).hex(), "package_id": package_id,
               "package_name": descriptor.name, "package_version": descriptor.version,
               "descriptor_sha256": sha, "sequence": sequence, "start_at": start_at,
               "end_at": end_at, "max_per_relay": int(max_per_relay), "retries": int(retries),
               "created_at": now}
        yield self.store.run(ds.create, dep, uuids, now)
        self.log.info("deployment {id} of {pkg} to {n} machines created", id=dep["id"],
                      pkg=package_id, n=len(uuids))
        self.clock.callLater(0, self.run_pass)
        return dict(dep, target_count=len(uuids))

    def active_for_package(self, package_id):
        """Ids of deployments of `package_id` that still have work to do."""
        return self.store.run(ds.active_for_package, package_id, self.clock.seconds())

    @defer.inlineCallbacks
    def _resolve(self, names):
        uuids = []
        for name in names:
            if name.startswith("group:"):
                group = name[len("group:"):]
                members = yield self.store.run(ds.group_members, group)
                if members is None:
                    raise DeploymentError("no group named %r (medullactl group list)" % group)
                if not members:
                    raise DeploymentError("group %r has no machine (medullactl group add %s "
                                          "MACHINE...)" % (group, group))
                uuids.extend(members)
                continue
            found = yield self.registry.find_machines(name)
            if len(found) != 1:
                raise DeploymentError("%s machine named %r" % (
                    "no" if not found else "more than one", name))
            uuids.append(found[0]["uuid"])
        if not uuids:
            raise DeploymentError("no target")
        return list(dict.fromkeys(uuids))

    @defer.inlineCallbacks
    def stop_deployment(self, dep_id):
        if not (yield self.store.run(ds.stop, dep_id)):
            raise DeploymentNotFound("no deployment %r" % dep_id)
        for target in (yield self.store.run(ds.targets, dep_id)):
            if target["state"] == scheduler.STARTED:
                self._send(target["uuid"], "deploy.stop", {"deployment": dep_id},
                           target["session"])
        self.clock.callLater(0, self.run_pass)

    @defer.inlineCallbacks
    def restart_deployment(self, dep_id):
        if (yield self.store.run(ds.get, dep_id)) is None:
            raise DeploymentNotFound("no deployment %r" % dep_id)
        count = yield self.store.run(ds.restart, dep_id, self.clock.seconds())
        self.clock.callLater(0, self.run_pass)
        return count

    # -- scheduling --------------------------------------------------------------------

    def run_pass(self):
        """One scheduling pass (never two at once); errors are logged, never raised."""
        if self._passing is not None:
            return self._passing
        d = self._passing = defer.ensureDeferred(self._pass())
        d.addErrback(lambda f: self.log.failure("deployment pass failed", f))

        def done(_):
            self._passing = None
        d.addBoth(done)
        return d

    async def _pass(self):
        now = self.clock.seconds()
        online = self.registry.online_uuids()
        busy = await self.store.run(ds.running_per_relay)
        active = await self.store.run(ds.active, now)
        self._offline_since = {d["id"]: self._offline_since.get(d["id"], {}) for d in active}
        for dep in active:
            rows = await self.store.run(ds.targets, dep["id"])
            for row in await self._abort_missing(dep["id"], rows, online, now):
                row["state"] = scheduler.MISSING_AGENT
                busy[row["relay"]] = busy.get(row["relay"], 1) - 1
            ready = {MASTER_RELAY} | await self.store.run(
                ds.relays_with, dep["package_id"], dep["descriptor_sha256"])
            window = scheduler.Window(dep["start_at"], dep["end_at"], dep["max_per_relay"],
                                      dep["retries"], bool(dep["stopped"]))
            targets = [scheduler.Target(r["uuid"], r["state"], r["attempts"], r["relay"])
                       for r in rows]
            by_uuid = {r["uuid"]: r for r in rows}
            for d in scheduler.decide(now, window, targets, online, ready, busy):
                if d.start:
                    await self._start(dep, by_uuid[d.uuid], now)
                    busy[by_uuid[d.uuid]["relay"]] = busy.get(by_uuid[d.uuid]["relay"], 0) + 1
                else:
                    await self.store.run(ds.set_state, dep["id"], d.uuid, d.state, now)

    async def _abort_missing(self, dep_id, rows, online, now):
        """ABORT MISSING AGENT for started targets whose machine stayed offline too long;
        returns their rows."""
        targets = [scheduler.Target(r["uuid"], r["state"], r["attempts"], r["relay"])
                   for r in rows]
        missing, self._offline_since[dep_id] = scheduler.missing_agents(
            now, targets, online, self._offline_since[dep_id], self.missing_agent_after)
        by_uuid = {r["uuid"]: r for r in rows}
        for d in missing:
            row = by_uuid[d.uuid]
            await self.store.run(ds.set_state, dep_id, d.uuid, d.state, now,
                                 session=row["session"], step=row["step"], detail=d.detail)
            self.log.warn("deployment {dep} on {host} ({uuid}): {state}: {detail}", dep=dep_id,
                          host=row["hostname"], uuid=d.uuid, state=d.state, detail=d.detail)
        return [by_uuid[d.uuid] for d in missing]

    async def _start(self, dep, target, now):
        attempt = target["attempts"] + 1
        session = "%s:%s:%d" % (dep["id"], target["uuid"], attempt)
        relay = target["relay"] or MASTER_RELAY
        url = self.relay_urls.get(relay)
        claims = {"pkg": dep["package_id"], "dep": session, "exp": int(dep["end_at"]),
                  "sub": self.registry.bare_jid(target["uuid"])}
        data = {"deployment": dep["id"], "package": dep["package_id"],
                "descriptor_sha256": dep["descriptor_sha256"], "sequence": dep["sequence"],
                "url": "%s/packages/%s/" % (url.rstrip("/"), dep["package_id"]) if url else "",
                "token": self.make_token(claims), "deadline": dep["end_at"]}
        await self.store.run(ds.set_state, dep["id"], target["uuid"], scheduler.STARTED, now,
                             session=session, attempt=True, detail="attempt %d" % attempt)
        self._send(target["uuid"], "deploy.start", data, session)

    def _send(self, uuid, action, data, session):
        jid = self.registry.full_jid(uuid)
        if jid is None:
            return
        self.channel.send_new(jid, action, data, sessionid=session)

    # -- what agents report ------------------------------------------------------------

    async def _own_target(self, sender, envelope):
        """The target `envelope`'s session belongs to, if `sender` is its machine. A
        session of an earlier attempt (the deployment was restarted since) still names
        its target: its reports are kept, they do not change the state."""
        target = await self.store.run(ds.target_by_session, envelope.sessionid)
        if target is None:
            target = await self.store.run(ds.target_of_old_session, envelope.sessionid)
        if target is None or self.registry.uuid_for(sender) != target["uuid"]:
            raise Refusal(403, "not-your-deployment",
                          "session %s does not belong to the sender" % envelope.sessionid[:128])
        return target

    async def on_progress(self, sender, envelope):
        """deploy.progress: one step's outcome, kept in the audit log."""
        target = await self._own_target(sender, envelope)
        d = envelope.data
        await self.store.run(ds.log, target["deployment_id"], target["uuid"],
                             self.clock.seconds(), envelope.sessionid, "step",
                             str(d.get("label", ""))[:128], bool(d.get("ok")),
                             d.get("ret") if isinstance(d.get("ret"), int) else None,
                             str(d.get("output", "")))
        return None

    async def on_result(self, sender, envelope):
        """deploy.result: the final state of a target; acknowledged so the agent forgets it.

        The agent's word wins over ABORT MISSING AGENT (which only guessed that it was
        gone): a result arriving after it replaces it. A result of an earlier attempt, or
        a second copy of one already recorded, is written to the audit log only."""
        target = await self._own_target(sender, envelope)
        d = envelope.data
        state = scheduler.outcome_state(d.get("state"))
        step, message = str(d.get("step", ""))[:128], str(d.get("message", ""))
        current = target["session"] == envelope.sessionid
        now = self.clock.seconds()
        if current and target["state"] in (scheduler.STARTED, scheduler.MISSING_AGENT):
            if target["state"] == scheduler.MISSING_AGENT:
                message = "result after %s: %s" % (scheduler.MISSING_AGENT, message)
            await self.store.run(ds.set_state, target["deployment_id"], target["uuid"], state,
                                 now, session=envelope.sessionid, step=step, detail=message)
            self.log.info("deployment {dep} on {uuid}: {state}",
                          dep=target["deployment_id"], uuid=target["uuid"], state=state)
            self.clock.callLater(0, self.run_pass)
        elif not current:
            await self.store.run(ds.log, target["deployment_id"], target["uuid"], now,
                                 envelope.sessionid, "late", state, None,
                                 d.get("ret") if isinstance(d.get("ret"), int) else None,
                                 "result of an earlier attempt, kept for the record (the "
                                 "state stays %s): %s" % (target["state"], message))
        return {"recorded": True}

    async def on_package_synced(self, sender, envelope):
        """package.synced from medulla-syncthing: which packages are complete on a relay."""
        d = envelope.data
        relay = d.get("relay")
        if not isinstance(relay, str) or not relay:
            raise Refusal(400, "bad-field", "relay: expected a name")
        complete = _sync_items(d.get("complete", []))
        gone = _sync_items(d.get("gone", []))
        await self.store.run(ds.packages_synced, relay, complete, gone,
                             bool(d.get("snapshot")), self.clock.seconds())
        self.clock.callLater(0, self.run_pass)
        return None

    # -- what the API reads ------------------------------------------------------------

    def summary(self):
        return self.store.run(ds.summary)

    @defer.inlineCallbacks
    def details(self, dep_id):
        dep = yield self.store.run(ds.get, dep_id)
        if dep is None:
            raise DeploymentNotFound("no deployment %r" % dep_id)
        dep["targets"] = yield self.store.run(ds.targets, dep_id)
        return dep

    def audit(self, dep_id, uuid):
        return self.store.run(ds.audit, dep_id, uuid)


class Groups:
    """Saved groups of machines, the `group:NAME` targets of a deployment. Names come
    resolved to uuids (the API does it, refusing unknown and ambiguous ones); each
    method returns a Deferred of plain data."""

    def __init__(self, store, clock):
        self.store, self.clock = store, clock

    def list(self):
        return self.store.run(ds.groups)

    def get(self, name):
        """The group and its machines, or None."""
        return self.store.run(ds.group, name)

    def create(self, name, uuids, replace=False):
        """"created", "replaced" or "exists" (nothing done)."""
        return self.store.run(ds.create_group, name, list(dict.fromkeys(uuids)),
                              self.clock.seconds(), replace)

    def change(self, name, add=(), remove=()):
        """(added, removed, size) or None when there is no such group."""
        return self.store.run(ds.change_group, name, list(dict.fromkeys(add)),
                              list(dict.fromkeys(remove)), self.clock.seconds())

    def delete(self, name):
        return self.store.run(ds.delete_group, name)
