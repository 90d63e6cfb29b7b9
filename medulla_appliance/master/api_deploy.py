"""The admin API's package, deployment and audit routes (below ``/api/v1``).

HTTP layer only, like :mod:`.api`: parse and check the JSON bodies, call the deployment
coordinator (:class:`.deployments.Deployments`) and the package store
(:class:`medulla_appliance.packages.store.PackageStore`, whose blocking methods run in a
thread), and turn their refusals into API errors::

    GET    /api/v1/packages                      {"packages": [summary, ...]}
    POST   /api/v1/packages                      {"path", "replace", "format"} -> 201 summary
                                                 (and the import's "warnings" for Medulla's)
    GET    /api/v1/packages/<id>                 the descriptor
    DELETE /api/v1/packages/<id>                 409 while an active deployment uses it
    GET    /api/v1/deployments                   {"deployments": [with "states" counts]}
    POST   /api/v1/deployments                   {"package", "targets", ...} -> 201
    GET    /api/v1/deployments/<id>              the deployment and its targets
    POST   /api/v1/deployments/<id>/stop
    POST   /api/v1/deployments/<id>/restart
    GET    /api/v1/deployments/<id>/machines/<uuid or hostname>/audit

Every change is logged at info level with the peer, for the audit trail.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.logger import Logger

from ..packages import store as package_store
from ..packages.complete import clear_complete, mark_complete
from ..packages.descriptor import ID_RE, SEQUENCE_RE, DescriptorError
from ..packages.medulla_import import import_medulla_folder
from . import deployments as coordinator
from .api import MAX_CANDIDATES, ApiError, Created, _echo, _peer, reads
from .api_fields import (
    bad_request,
    bool_field,
    int_field,
    json_object,
    known_fields,
    names_field,
    resource_id,
    text_field,
    time_field,
    utf8,
)

#: Most targets one deployment request may name (groups count as one).
MAX_TARGETS = 10_000
#: Longest machine or group name accepted in a target list.
MAX_NAME_CHARS = 255
MAX_PER_RELAY = 10_000
MAX_RETRIES = 100
MAX_PATH_CHARS = 4096
#: Folders systemd hides from medulla-master (ProtectHome=yes, PrivateTmp=yes).
HIDDEN_FROM_THE_SERVICE = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
FORMATS = ("native", "medulla")

_NOT_FOUND = (getattr(coordinator, "DeploymentNotFound", ()) or ())


class DeployRoutes:
    """Routes and handlers over *deployments* and *packages* (either may be None: its
    routes are then absent)."""

    log = Logger()

    def __init__(self, deployments: Any, packages: Any, *, clock,
                 run_in_thread: Callable[..., defer.Deferred] | None = None):
        self._deployments = deployments
        self._packages = packages
        self._clock = clock
        self._in_thread = run_in_thread or threads.deferToThread

    def route(self, rest: list[bytes]):
        """``(handlers by method, args)`` for the path below ``/api/v1``, or None."""
        if self._packages is not None and rest[:1] == [b"packages"]:
            if len(rest) == 1:
                return {**reads(self._list_packages), b"POST": self._add_package}, ()
            if len(rest) == 2 and rest[1]:
                return {**reads(self._show_package), b"DELETE": self._remove_package}, (rest[1],)
        if self._deployments is not None and rest[:1] == [b"deployments"]:
            if len(rest) == 1:
                return {**reads(self._summary), b"POST": self._create}, ()
            if len(rest) == 2 and rest[1]:
                return reads(self._details), (rest[1],)
            if len(rest) == 3 and rest[1] and rest[2] in (b"stop", b"restart"):
                handler = self._stop if rest[2] == b"stop" else self._restart
                return {b"POST": handler}, (rest[1],)
            if len(rest) == 5 and rest[1] and rest[2] == b"machines" and rest[3] \
                    and rest[4] == b"audit":
                return reads(self._audit), (rest[1], rest[3])
        return None

    # -- packages ----------------------------------------------------------------------

    def _list_packages(self, request):
        return self._in_thread(_package_summaries, self._packages)

    def _show_package(self, request, raw_id: bytes):
        package_id = _package_id(raw_id)
        d = self._store_call(self._packages.get, package_id)
        d.addCallback(lambda descriptor: descriptor.to_json())
        return d

    def _add_package(self, request):
        body = json_object(request)
        known_fields(body, ("path", "replace", "format"))
        path = text_field(body, "path", MAX_PATH_CHARS)
        if not os.path.isabs(path) or "\x00" in path:
            raise bad_request(f"'path' must be an absolute folder path, got {_echo(path)!r}")
        replace = bool_field(body, "replace", False)
        kind = body.get("format", "native")
        if kind not in FORMATS:
            raise bad_request(f"'format' must be one of {', '.join(FORMATS)}")
        return defer.ensureDeferred(self._adding(request, path, replace, kind))

    async def _adding(self, request, path: str, replace: bool, kind: str):
        descriptor, warnings = await self._store_call(_add_from_folder, self._packages, path,
                                                      replace, kind)
        summary = _summary(descriptor)
        self.log.info("API: {peer} {verb} package {id} ({name} {version}, {files} files, "
                      "{size} bytes) from {path}{notes}", peer=_peer(request),
                      verb="replaced" if replace else "added", path=path,
                      notes=f"; {len(warnings)} import warnings" if warnings else "", **summary)
        if kind == "medulla":
            summary["warnings"] = list(warnings)  # what the import could not keep
        return Created(summary, f"/api/v1/packages/{summary['id']}")

    def _remove_package(self, request, raw_id: bytes):
        return defer.ensureDeferred(self._removing(request, _package_id(raw_id)))

    async def _removing(self, request, package_id: str):
        if self._deployments is not None:
            users = list(await defer.maybeDeferred(
                self._deployments.active_for_package, package_id))
            if users:
                raise ApiError(409, "in-use", f"package {package_id!r} is used by active "
                               f"deployment {', '.join(users[:5])}; stop "
                               f"{'it' if len(users) == 1 else 'them'} first",
                               extra={"deployments": users}, refusal=False)
        await self._store_call(_remove, self._packages, package_id)
        self.log.info("API: {peer} removed package {id}", peer=_peer(request), id=package_id)
        return {"id": package_id, "removed": True}

    def _store_call(self, function, *args) -> defer.Deferred:
        d = self._in_thread(function, *args)
        d.addErrback(_store_error)
        return d

    # -- deployments -------------------------------------------------------------------

    def _summary(self, request):
        d = defer.maybeDeferred(self._deployments.summary)
        d.addCallback(lambda deps: {"deployments": list(deps)})
        return d

    def _details(self, request, raw_id: bytes):
        return self._one_deployment(_deployment_id(raw_id))

    def _create(self, request):
        body = json_object(request)
        known_fields(body, ("package", "targets", "start", "end", "max_per_relay",
                             "retries", "sequence"))
        package_id = text_field(body, "package", 128)
        if not ID_RE.match(package_id):
            raise bad_request(f"'package' is not a package id: {_echo(package_id)!r}")
        targets = names_field(body, "targets", MAX_TARGETS, MAX_NAME_CHARS,
                              "machine names or 'group:NAME'")
        if any(t == "group:" for t in targets):
            raise bad_request("'group:' needs a group name")
        start, end = time_field(body, "start"), time_field(body, "end")
        if end is not None and start is not None and end <= start:
            raise bad_request("'end' must come after 'start'")
        now = self._clock.seconds()
        if (end if end is not None else (now if start is None else start)
                + coordinator.DEFAULT_WINDOW_SECONDS) <= now:
            raise bad_request("the window ends in the past: every target would expire at once")
        options = dict(
            start_at=start, end_at=end,
            max_per_relay=int_field(body, "max_per_relay", 10, 1, MAX_PER_RELAY),
            retries=int_field(body, "retries", 1, 0, MAX_RETRIES),
            sequence=body.get("sequence", "install"))
        if not isinstance(options["sequence"], str) or not SEQUENCE_RE.match(options["sequence"]):
            raise bad_request("'sequence' must be a sequence name such as 'install'")
        return defer.ensureDeferred(self._creating(request, package_id, targets, options))

    async def _creating(self, request, package_id: str, targets: list[str], options):
        if self._packages is not None:
            await self._store_call(self._packages.get, package_id)  # 404 before anything
        try:
            dep = dict(await defer.maybeDeferred(
                self._deployments.create, package_id, targets, **options))
        except coordinator.DeploymentError as e:
            code, error = (404, "not-found") if isinstance(e, _NOT_FOUND) else \
                (400, "refused")
            raise ApiError(code, error, str(e), refusal=False) from None
        if "target_count" not in dep:
            details = await defer.maybeDeferred(self._deployments.details, dep["id"])
            dep["target_count"] = len(details.get("targets") or [])
        self.log.info("API: {peer} created deployment {id} of package {package} to "
                      "{count} machines ({names})", peer=_peer(request), id=dep["id"],
                      package=package_id, count=dep["target_count"],
                      names=_echo(" ".join(targets)))
        return Created(dep, f"/api/v1/deployments/{dep['id']}")

    def _stop(self, request, raw_id: bytes):
        return defer.ensureDeferred(self._change(request, _deployment_id(raw_id), "stop"))

    def _restart(self, request, raw_id: bytes):
        return defer.ensureDeferred(self._change(request, _deployment_id(raw_id), "restart"))

    async def _change(self, request, dep_id: str, action: str):
        change = self._deployments.stop_deployment if action == "stop" else \
            self._deployments.restart_deployment
        try:
            count = await defer.maybeDeferred(change, dep_id)
        except coordinator.DeploymentError as e:
            raise ApiError(404, "not-found", str(e), refusal=False) from None
        if action == "stop":
            self.log.info("API: {peer} stopped deployment {id}", peer=_peer(request), id=dep_id)
            return {"id": dep_id, "stopped": True}
        self.log.info("API: {peer} restarted deployment {id}: {count} machines start over",
                      peer=_peer(request), id=dep_id, count=count)
        return {"id": dep_id, "restarted": count}

    def _audit(self, request, raw_id: bytes, raw_machine: bytes):
        return defer.ensureDeferred(self._auditing(_deployment_id(raw_id),
                                                   utf8(raw_machine, "machine name")))

    async def _auditing(self, dep_id: str, name: str):
        dep = await self._one_deployment(dep_id)
        targets = [t for t in dep.get("targets") or [] if t.get("uuid") == name] or \
            [t for t in dep.get("targets") or [] if t.get("hostname") == name]
        if not targets:
            raise ApiError(404, "not-found", f"no machine {_echo(name)!r} in deployment "
                           f"{dep_id}", refusal=False)
        if len(targets) > 1:
            raise ApiError(409, "ambiguous", f"{len(targets)} machines of {dep_id} are named "
                           f"{_echo(name)!r}; use a uuid", refusal=False,
                           extra={"count": len(targets), "candidates": [
                               {"uuid": t.get("uuid"), "hostname": t.get("hostname")}
                               for t in targets[:MAX_CANDIDATES]]})
        target = targets[0]
        lines = await defer.maybeDeferred(self._deployments.audit, dep_id, target["uuid"])
        return {"deployment": dep_id, "uuid": target["uuid"],
                "hostname": target.get("hostname"), "state": target.get("state"),
                "audit": list(lines)}

    async def _one_deployment(self, dep_id: str) -> dict[str, Any]:
        try:
            return dict(await defer.maybeDeferred(self._deployments.details, dep_id))
        except coordinator.DeploymentError as e:
            raise ApiError(404, "not-found", str(e), refusal=False) from None


# -- in a thread: the package store ----------------------------------------------------

def _package_summaries(packages) -> dict[str, Any]:
    out = []
    for package_id in packages.list():
        try:
            out.append(_summary(packages.get(package_id)))
        except package_store.PackageNotFound:
            continue  # removed while we listed
        except package_store.StoreError as e:
            out.append({"id": package_id, "error": str(e)})
    return {"packages": out}


def _remove(packages, package_id: str):
    clear_complete(packages.root, package_id)  # stop serving it first
    packages.remove(package_id)


def _add_from_folder(packages, path: str, replace: bool, kind: str):
    """``(descriptor, warnings)`` of the package added from *path*."""
    _check_readable(path)
    descriptor, warnings = None, ()
    try:
        if kind == "medulla":
            try:
                result = import_medulla_folder(path)
            except ValueError as e:  # MedullaImportError: which file, where, why
                raise ApiError(400, "bad-package", _with_user_hint(f"Medulla package {path}: "
                                                                   f"{e}"), refusal=False) from None
            descriptor, warnings = result.descriptor, tuple(result.warnings)
        added = packages.add_from_folder(path, descriptor, replace=replace)
        # The master host's relay serves straight from this store: complete once added.
        mark_complete(packages.root, added.id)
        return added, warnings
    except PermissionError as e:
        raise _unreadable(e.filename or path) from None


def _check_readable(path: str) -> None:
    """Refuse, saying why and what to do, a folder this daemon cannot see or read."""
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise bad_request(f"{path} is not a folder")
        os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        hidden = [p for p in HIDDEN_FROM_THE_SERVICE if path == p or path.startswith(p + "/")]
        why = (f" — medulla-master cannot see anything under {hidden[0]} (its unit has "
               "ProtectHome=yes and PrivateTmp=yes): copy the package folder elsewhere, "
               "e.g. under /srv") if hidden else ""
        raise bad_request(f"no folder {path} on the master{why}") from None
    except PermissionError:
        raise _unreadable(path) from None


def _unreadable(path: str) -> ApiError:
    user = _user()
    return bad_request(f"medulla-master (user {user}) cannot read {path}: make the package "
                        f"folder and its files readable by {user}, e.g. chgrp -R {user} FOLDER "
                        f"&& chmod -R g+rX FOLDER (every parent folder must let {user} "
                        "through)")


def _with_user_hint(message: str) -> str:
    """*message*, plus who must be able to read, when it is about a permission."""
    if os.strerror(errno.EACCES) not in message:
        return message
    user = _user()
    return (f"{message} — medulla-master runs as user {user}: make every file of the "
            f"package readable by {user}")


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _store_error(failure):
    """The store's refusals as API errors; anything else stays a 500."""
    e = failure.value
    if isinstance(e, package_store.PackageNotFound):
        raise ApiError(404, "not-found", str(e), refusal=False)
    if isinstance(e, package_store.PackageExists):
        raise ApiError(409, "exists", f"{e} (\"replace\": true replaces it)", refusal=False)
    if isinstance(e, DescriptorError):
        raise ApiError(400, "bad-package", f"descriptor: {e}", refusal=False)
    if isinstance(e, package_store.StoreError):
        raise ApiError(400, "bad-package", _with_user_hint(str(e)), refusal=False)
    return failure


def _summary(descriptor) -> dict[str, Any]:
    return {"id": descriptor.id, "name": descriptor.name, "version": descriptor.version,
            "os": list(descriptor.os), "files": len(descriptor.files),
            "size": sum(entry.size for entry in descriptor.files)}


def _package_id(raw: bytes) -> str:
    return resource_id(raw, "package")


def _deployment_id(raw: bytes) -> str:
    return resource_id(raw, "deployment")
