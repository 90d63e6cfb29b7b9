"""The admin API's boot-menu routes (below ``/api/v1``): HTTP only, the rules and the
store are :class:`.pxe_menus.PXEMenus`'s::

    GET    /api/v1/pxe/menus                         {"menus": [summary, ...]}
    POST   /api/v1/pxe/menus                         {"name", "title", "timeout", "items" |
                                                      "copy_from"} -> 201 the menu
    GET    /api/v1/pxe/menus/<name>                  the menu, its items and assignments
    PATCH  /api/v1/pxe/menus/<name>                  {"title", "timeout"}
    DELETE /api/v1/pxe/menus/<name>                  409 while assigned
    POST   /api/v1/pxe/menus/<name>/items            an item (+ "position", 1 = first)
    PATCH  /api/v1/pxe/menus/<name>/items/<label>    {"title", "boot", "default",
                                                      "visible", "default_on_wol"}
    DELETE /api/v1/pxe/menus/<name>/items/<label>    409 for the last visible service
    POST   /api/v1/pxe/menus/<name>/items/<label>/move   {"position"}
    POST   /api/v1/pxe/menus/<name>/reset-copies     copy it again into every own menu
                                                      made from it
    GET    /api/v1/pxe/assignments                   {"assignments": [...]}
    PUT    /api/v1/pxe/assignments/<kind>[/<target>] {"menu"}: kind mac, uuid, group
                                                      (an own copy), server, registration
    DELETE /api/v1/pxe/assignments/<kind>/<target>
    POST   /api/v1/pxe/assignments/<kind>/<target>/reset

Every change is logged at info level by PXEMenus; refusals answer 400/404/409 with the
rule that refused.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from .api import ApiError, Created, reads
from .api_fields import json_object, known_fields
from .logic.pxe_menus import ASSIGNMENT_KINDS, MenuError
from .pxe_storage import list_assignments


class PXERoutes:
    """Routes over a :class:`.pxe_menus.PXEMenus`."""

    def __init__(self, menus: Any):
        self._menus = menus

    def route(self, rest: list[bytes]):
        """``(handlers by method, args)`` for the path below ``/api/v1``, or None."""
        if rest[:1] != [b"pxe"] or len(rest) < 2:
            return None
        rest = rest[1:]
        if rest[0] == b"menus":
            return self._menu_route(rest[1:])
        if rest[0] == b"assignments":
            return self._assignment_route(rest[1:])
        return None

    def _menu_route(self, rest):
        if not rest:
            return {**reads(self._list), b"POST": self._create}, ()
        if not rest[0]:
            return None
        name = rest[0]
        if len(rest) == 1:
            return {**reads(self._show), b"PATCH": self._set, b"DELETE": self._delete}, (name,)
        if rest[1:] == [b"reset-copies"]:
            return {b"POST": self._reset_copies}, (name,)
        if rest[1] != b"items":
            return None
        if len(rest) == 2:
            return {b"POST": self._add_item}, (name,)
        if len(rest) == 3 and rest[2]:
            return {b"PATCH": self._set_item, b"DELETE": self._remove_item}, (name, rest[2])
        if len(rest) == 4 and rest[2] and rest[3] == b"move":
            return {b"POST": self._move_item}, (name, rest[2])
        return None

    def _assignment_route(self, rest):
        if not rest:
            return reads(self._assignments), ()
        kind = _text(rest[0])
        if kind not in ASSIGNMENT_KINDS:
            return None
        target = rest[1] if len(rest) > 1 else b""
        if len(rest) <= 2:
            return {b"PUT": self._assign, b"DELETE": self._unassign}, (kind, target)
        if len(rest) == 3 and rest[2] == b"reset":
            return {b"POST": self._reset}, (kind, target)
        return None

    # -- handlers ----------------------------------------------------------------------

    def _list(self, request):
        return _call(lambda: self._menus.list_menus().addCallback(lambda m: {"menus": m}))

    def _show(self, request, name):
        return _call(self._menus.show_menu, _text(name))

    def _create(self, request):
        body = json_object(request)
        known_fields(body, ("name", "title", "timeout", "items", "copy_from"))
        items = body.get("items")
        if items is not None and (not isinstance(items, list) or
                                  not all(isinstance(i, dict) for i in items)):
            raise ApiError(400, "bad-request", "'items' must be a list of objects")
        d = _call(self._menus.create_menu, body.get("name"), body.get("title"),
                  body.get("timeout", 10), items, body.get("copy_from"))
        return d.addCallback(lambda menu: Created(menu, "/api/v1/pxe/menus/" + menu["name"]))

    def _set(self, request, name):
        return _call(self._menus.set_menu, _text(name), json_object(request))

    def _delete(self, request, name):
        return _call(self._menus.delete_menu, _text(name)).addCallback(
            lambda menu: {"name": menu["name"], "deleted": True})

    def _add_item(self, request, name):
        body = json_object(request)
        position = body.pop("position", None)
        return _call(self._menus.add_item, _text(name), body, position)

    def _set_item(self, request, name, label):
        return _call(self._menus.set_item, _text(name), _text(label), json_object(request))

    def _remove_item(self, request, name, label):
        return _call(self._menus.remove_item, _text(name), _text(label))

    def _move_item(self, request, name, label):
        body = json_object(request)
        known_fields(body, ("position",))
        return _call(self._menus.move_item, _text(name), _text(label), body.get("position"))

    def _reset_copies(self, request, name):
        return _call(self._menus.reset_from, _text(name))

    def _assignments(self, request):
        d = self._menus.store.run(list_assignments)
        return d.addCallback(lambda rows: {"assignments": rows})

    def _assign(self, request, kind, target):
        body = json_object(request)
        known_fields(body, ("menu",))
        return _call(self._menus.assign, kind, _text(target), body.get("menu"))

    def _unassign(self, request, kind, target):
        return _call(self._menus.unassign, kind, _text(target))

    def _reset(self, request, kind, target):
        return _call(self._menus.reset, kind, _text(target))


def _call(fn, *args) -> defer.Deferred:
    d = defer.maybeDeferred(fn, *args)
    d.addErrback(_api_error)
    return d


def _api_error(failure):
    failure.trap(MenuError)
    error = failure.value
    # A bad field is a refused request; "no such menu" or "last service" is an answer.
    raise ApiError(error.code, error.error, error.message, refusal=error.code == 400)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad-request", "the path is not valid UTF-8") from None
