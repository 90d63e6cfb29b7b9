"""The admin API's saved-group routes (below ``/api/v1``): the groups a deployment names
as ``group:NAME``.

HTTP layer only, like :mod:`.api`: check the bodies, resolve machine names (hostname,
uuid or JID, as ``medullactl machine show`` does: an unknown name is 404, a name several
machines share is 409 with the candidates, and nothing changes in either case), then call
:class:`.deployments.Groups`::

    GET    /api/v1/groups                       {"groups": [{name, machines, online, ...}]}
    POST   /api/v1/groups                       {"name", "machines", "replace"} -> 201
                                                (200 when replaced; 409 if it exists)
    GET    /api/v1/groups/<name>                the group and its machines
    DELETE /api/v1/groups/<name>                the group goes, its machines stay
    POST   /api/v1/groups/<name>/add            {"machines"} -> {added, size}
    POST   /api/v1/groups/<name>/remove         {"machines"} -> {removed, size}

A group may be empty (created empty, or emptied); deploying to an empty or unknown group
is refused by the coordinator. Every change is logged at info level with the peer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from .api import MAX_CANDIDATES, ApiError, Created, _echo, _peer, reads
from .api_fields import bad_request, bool_field, json_object, known_fields, resource_id

#: Most machine names one request may carry.
MAX_MACHINES = 10_000
#: Longest machine name (hostname, uuid or JID) accepted.
MAX_NAME_CHARS = 255
#: How many unknown names a 404 lists.
MAX_UNKNOWN_LISTED = 20


class GroupRoutes:
    """Routes and handlers over *groups* (a :class:`.deployments.Groups`), resolving
    machine names through *registry* (``find_machines(name)``)."""

    log = Logger()

    def __init__(self, registry: Any, groups: Any):
        self._registry = registry
        self._groups = groups

    def route(self, rest: list[bytes]):
        """``(handlers by method, args)`` for the path below ``/api/v1``, or None."""
        if rest[:1] != [b"groups"]:
            return None
        if len(rest) == 1:
            return {**reads(self._list), b"POST": self._create}, ()
        if len(rest) == 2 and rest[1]:
            return {**reads(self._show), b"DELETE": self._delete}, (rest[1],)
        if len(rest) == 3 and rest[1] and rest[2] in (b"add", b"remove"):
            return {b"POST": self._add if rest[2] == b"add" else self._remove}, (rest[1],)
        return None

    # -- handlers ----------------------------------------------------------------------

    def _list(self, request):
        d = defer.maybeDeferred(self._groups.list)
        d.addCallback(lambda groups: {"groups": list(groups)})
        return d

    def _show(self, request, raw_name: bytes):
        return defer.ensureDeferred(self._one_group(_group_name(raw_name)))

    def _create(self, request):
        body = json_object(request)
        known_fields(body, ("name", "machines", "replace"))
        name = body.get("name")
        if not isinstance(name, str):
            raise bad_request("'name' must be a group name (letters, digits, '.', '_', '-')")
        name = _group_name(name.encode("utf-8"), status=400)
        names = _machine_names(body, empty_ok=True)
        replace = bool_field(body, "replace", False)
        return defer.ensureDeferred(self._creating(request, name, names, replace))

    async def _creating(self, request, name: str, names: list[str], replace: bool):
        uuids = await self._resolve(names)
        outcome = await defer.maybeDeferred(self._groups.create, name, uuids, replace)
        if outcome == "exists":
            raise ApiError(409, "exists", f"group {name!r} exists (\"replace\": true "
                           "replaces its machines)", refusal=False)
        self.log.info("API: {peer} {verb} group {name} with {count} machines",
                      peer=_peer(request), verb=outcome, name=name, count=len(set(uuids)))
        group = await self._one_group(name)
        return Created(group, f"/api/v1/groups/{name}") if outcome == "created" else group

    def _add(self, request, raw_name: bytes):
        return self._changing(request, raw_name, "add")

    def _remove(self, request, raw_name: bytes):
        return self._changing(request, raw_name, "remove")

    def _changing(self, request, raw_name: bytes, verb: str):
        name = _group_name(raw_name)
        body = json_object(request)
        known_fields(body, ("machines",))
        names = _machine_names(body, empty_ok=False)
        return defer.ensureDeferred(self._change(request, name, names, verb))

    async def _change(self, request, name: str, names: list[str], verb: str):
        uuids = await self._resolve(names)
        change = {"add": uuids} if verb == "add" else {"remove": uuids}
        result = await defer.maybeDeferred(self._groups.change, name, **change)
        if result is None:
            raise _no_group(name)
        added, removed, size = result
        count = added if verb == "add" else removed
        self.log.info("API: {peer} {verb} {count} machines {prep} group {name} ({size} now)",
                      peer=_peer(request), verb="added" if verb == "add" else "removed",
                      prep="to" if verb == "add" else "from", count=count, name=name,
                      size=size)
        return {"name": name, ("added" if verb == "add" else "removed"): count, "size": size}

    def _delete(self, request, raw_name: bytes):
        return defer.ensureDeferred(self._deleting(request, _group_name(raw_name)))

    async def _deleting(self, request, name: str):
        if not await defer.maybeDeferred(self._groups.delete, name):
            raise _no_group(name)
        self.log.info("API: {peer} deleted group {name}", peer=_peer(request), name=name)
        return {"name": name, "deleted": True}

    # -- helpers -----------------------------------------------------------------------

    async def _one_group(self, name: str) -> dict[str, Any]:
        group = await defer.maybeDeferred(self._groups.get, name)
        if group is None:
            raise _no_group(name)
        return dict(group)

    async def _resolve(self, names: list[str]) -> list[str]:
        """The uuid each name designates, in order; 404 naming the unknown ones, 409 with
        the candidates of the first ambiguous one."""
        uuids, unknown = [], []
        for name in dict.fromkeys(names):
            matches = list(await defer.maybeDeferred(self._registry.find_machines, name))
            if not matches:
                unknown.append(name)
            elif len(matches) > 1:
                candidates = [{key: m.get(key) for key in ("uuid", "hostname", "jid")}
                              for m in matches[:MAX_CANDIDATES]]
                raise ApiError(409, "ambiguous", f"{len(matches)} machines match "
                               f"{_echo(name)!r}; use a uuid or JID", refusal=False,
                               extra={"name": name, "candidates": candidates,
                                      "count": len(matches)})
            else:
                uuids.append(matches[0]["uuid"])
        if unknown:
            listed = ", ".join(repr(_echo(n)) for n in unknown[:MAX_UNKNOWN_LISTED])
            more = f" and {len(unknown) - MAX_UNKNOWN_LISTED} more" \
                if len(unknown) > MAX_UNKNOWN_LISTED else ""
            raise ApiError(404, "not-found", f"no machine named {listed}{more}",
                           extra={"unknown": unknown[:MAX_UNKNOWN_LISTED]}, refusal=False)
        return uuids


def _machine_names(body: dict, *, empty_ok: bool) -> list[str]:
    value = body.get("machines", [] if empty_ok else None)
    if not isinstance(value, list) or len(value) > MAX_MACHINES or \
            (not value and not empty_ok) or \
            not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS for v in value):
        least = 0 if empty_ok else 1
        raise bad_request(f"'machines' must be a list of {least} to {MAX_MACHINES} machine "
                          f"names (hostname, uuid or JID), each at most {MAX_NAME_CHARS} "
                          "characters")
    return value


def _group_name(raw: bytes, status: int = 404) -> str:
    """A group name: the alphabet of package ids. From the path, anything else names
    no group (404); in a body, it is a bad request (400)."""
    if status == 404:
        return resource_id(raw, "group")
    try:
        return resource_id(raw, "group")
    except ApiError:
        raise bad_request("'name' must be 1 to 128 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit") from None


def _no_group(name: str) -> ApiError:
    return ApiError(404, "not-found", f"no group {_echo(name)!r} (medullactl group list)",
                    refusal=False)
