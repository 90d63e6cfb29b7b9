"""Deployments on the workstation: what the master orders with `deploy.start`, done one
at a time and written down at every stage, so that an agent restart (or a reboot the
package asked for) resumes honestly: the download goes on where it stopped, the step
engine knows which step was running, and a result is sent again until the master says it
has it.

Order of work for one job: descriptor (its SHA-256 must be the one in the signed order),
files (resume, size limit, SHA-256), steps, result. Nothing runs unless all of it checks.
"""

import json
import os
import re
import shutil
import urllib.parse

from twisted.internet import defer
from twisted.logger import Logger

from medulla_appliance.core.xmpp.channel import Refusal
from medulla_appliance.packages.descriptor import (
    MAX_DESCRIPTOR_BYTES,
    DescriptorError,
    descriptor_sha256,
    parse_descriptor,
)

from .download import HashError, TransferError
from .steps import StepEngine

SESSION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
SHA_RE = re.compile(r"^[0-9a-f]{64}\Z")
DOWNLOAD, STEPS, REPORT = "download", "steps", "report"


def job_folder_name(session):
    return session.replace(":", "_")


class Jobs:
    """The agent's deployments: `on_start`/`on_stop` are envelope handlers, `on_ack`
    handles result.deploy.result, `resume()` picks up what a previous run left."""

    log = Logger()

    def __init__(self, root, reactor, send, downloader, make_runner, *, max_bytes,
                 env=None):
        self.root = root                  # state_dir/deployments
        self.reactor = reactor
        self.send = send                  # (action, data, sessionid) -> None, to the master
        self.downloader = downloader
        self.make_runner = make_runner    # (cwd) -> a steps runner
        self.max_bytes = max_bytes
        self.env = dict(env or {})
        self.jobs = {}                    # session -> job dict (persisted)
        self.engine = None
        self.current = None
        os.makedirs(root, mode=0o700, exist_ok=True)

    # -- persistence -------------------------------------------------------------------

    def _folder(self, session):
        return os.path.join(self.root, job_folder_name(session))

    def _save(self, job):
        folder = self._folder(job["session"])
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = os.path.join(folder, "job.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(job, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, "job.json"))

    def resume(self):
        """Load the jobs a previous run left, resend results, carry on with the rest."""
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name, "job.json")
            try:
                with open(path, encoding="utf-8") as f:
                    job = json.load(f)
            except (OSError, ValueError):
                continue
            self.jobs[job["session"]] = job
        self.resend_results()
        self._next()

    # -- orders from the master --------------------------------------------------------

    def on_start(self, sender, envelope):
        data, session = envelope.data, envelope.sessionid
        url, token = data.get("url"), data.get("token")
        if not (isinstance(url, str) and url.startswith(("http://", "https://"))
                and isinstance(token, str) and token
                and isinstance(data.get("descriptor_sha256"), str)
                and SHA_RE.match(data["descriptor_sha256"])
                and isinstance(data.get("sequence"), str)):
            raise Refusal(400, "bad-field", "deploy.start needs url, token, "
                          "descriptor_sha256 and sequence")
        if session not in self.jobs:
            job = {"session": session, "order": data, "phase": DOWNLOAD, "engine": None,
                   "result": None}
            self._save(job)
            self.jobs[session] = job
            self.log.info("deployment {session}: package {pkg} ordered",
                          session=session, pkg=data.get("package"))
            self.reactor.callLater(0, self._next)
        return {"accepted": True}

    def on_stop(self, sender, envelope):
        for session, job in list(self.jobs.items()):
            if job["order"].get("deployment") != envelope.data.get("deployment"):
                continue
            if job["phase"] == REPORT:
                continue
            if session == self.current and self.engine is not None:
                job["stopping"] = True
                self.engine.stop("stopped by the admin")  # reports through on_done
            elif session != self.current or job["phase"] == DOWNLOAD:
                self._report(job, "stopped", "", -1, "stopped by the admin")
        return None

    def on_ack(self, sender, envelope):
        job = self.jobs.pop(envelope.sessionid, None)
        if job is not None:
            shutil.rmtree(self._folder(job["session"]), ignore_errors=True)
        return None

    def resend_results(self):
        """The master (re)appeared: results it may not have are sent again."""
        for job in self.jobs.values():
            if job["phase"] == REPORT:
                self.send("deploy.result", job["result"], job["session"])

    # -- the work ----------------------------------------------------------------------

    def _next(self):
        if self.current is not None:
            return
        pending = [j for j in self.jobs.values() if j["phase"] != REPORT]
        if not pending:
            return
        job = pending[0]
        self.current = job["session"]
        d = defer.ensureDeferred(self._run(job))
        d.addErrback(lambda f: self._crashed(job, f))

    async def _run(self, job):
        order, folder = job["order"], self._folder(job["session"])
        files = os.path.join(folder, "files")
        os.makedirs(files, mode=0o700, exist_ok=True)
        try:
            raw = await self.downloader.fetch_bytes(order["url"] + "descriptor.json",
                                                    order["token"], MAX_DESCRIPTOR_BYTES)
            if descriptor_sha256(raw) != order["descriptor_sha256"]:
                raise HashError("descriptor.json is not the one the master signed for")
            descriptor = parse_descriptor(raw)
            steps = descriptor.sequences.get("linux", {}).get(order["sequence"])
            if steps is None:
                return self._report(job, "error", "", -1, "no linux %r sequence"
                                    % order["sequence"])
            total = sum(f.size for f in descriptor.files)
            if total > self.max_bytes or shutil.disk_usage(files).free < total * 1.1:
                raise TransferError("the package (%d bytes) does not fit" % total)
            if job["phase"] == DOWNLOAD:
                for entry in descriptor.files:
                    if job["phase"] == REPORT:
                        return None  # stopped meanwhile; already reported
                    path = os.path.join(files, entry.path)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    await self.downloader.fetch(
                        order["url"] + urllib.parse.quote(entry.path), order["token"],
                        path, entry.size, entry.sha256)
                if job["phase"] == REPORT:
                    return None
                job["phase"] = STEPS
                self._save(job)
        except HashError as e:
            if job["phase"] == REPORT:
                return None
            return self._report(job, "hash-invalid", "", -1, str(e))
        except (TransferError, DescriptorError, OSError) as e:
            if job["phase"] == REPORT:
                return None
            return self._report(job, "transfer-failed", "", -1, str(e))
        self._run_steps(job, steps, files)

    def _run_steps(self, job, steps, files):
        def progress(label, kind, ok, ret, output):
            self.send("deploy.progress", {"label": label, "type": kind, "ok": ok,
                                          "ret": ret, "output": output}, job["session"])

        def done(state, label, ret):
            self.engine = None
            if job.get("stopping"):
                return self._report(job, "stopped", label or "", ret, "stopped by the admin")
            self._report(job, "success" if state == "success" else "error", label or "",
                         ret, "" if state == "success" else "step %s failed" % label)

        def persist(snapshot):
            job["engine"] = snapshot
            self._save(job)

        env = dict(self.env, MEDULLA_DEPLOYMENT=job["order"].get("deployment", ""),
                   MEDULLA_PACKAGE=job["order"].get("package", ""),
                   MEDULLA_PACKAGE_DIR=files, MEDULLA_SESSION_ID=job["session"])
        self.engine = StepEngine(steps, self.make_runner(files), self.reactor, progress, done,
                                 state=job["engine"], env=env, persist=persist)
        self.engine.start()

    def _report(self, job, state, step, ret, message):
        if job["phase"] == REPORT:
            return  # one result per job
        job["phase"] = REPORT
        job["result"] = {"deployment": job["order"].get("deployment"), "state": state,
                         "step": step, "ret": ret, "message": message[-4000:]}
        self._save(job)
        self.log.info("deployment {session}: {state} {message}", session=job["session"],
                      state=state, message=message[:200])
        self.send("deploy.result", job["result"], job["session"])
        if self.current == job["session"]:
            self.current = None
            self.reactor.callLater(0, self._next)

    def _crashed(self, job, failure):
        self.log.failure("deployment {session} failed unexpectedly", failure,
                         session=job["session"])
        self._report(job, "error", "", -1, "agent error: %s" % failure.getErrorMessage())
