"""The admin API's fleet-wide bans (below ``/api/v1``), over :class:`.bans.Bans`::

    GET /api/v1/bans              {"bans": [ban, ...], "server_time": T}
    GET /api/v1/bans?host=NAME    only the bans of that host ("master" or a relay name)

A ban: ``host``, ``address``, ``jail``, ``failures``, ``banned_at``, ``until``,
``manual`` (by an admin, not by a jail) and ``updated_at`` (when the master last heard
of it); bans that ran out are never listed.
"""

from twisted.internet import defer

from .api import ApiError, _echo, reads
from .api_fields import utf8
from .relays import NAME_RE


def _host(request):
    values = request.args.get(b"host")
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "bad-request", "give 'host' at most once")
    host = utf8(values[0], "host")
    if not NAME_RE.fullmatch(host):
        raise ApiError(400, "bad-request", f"'host' must be 'master' or a relay name, got "
                                           f"{_echo(host)!r}")
    return host


class BanRoutes:
    """Routes and handlers over *bans* (a :class:`.bans.Bans`)."""

    def __init__(self, bans, clock):
        self._bans, self._clock = bans, clock

    def route(self, rest: list[bytes]):
        """``(handlers by method, args)`` for the path below ``/api/v1``, or None."""
        if rest == [b"bans"]:
            return reads(self._list), ()
        return None

    def _list(self, request):
        d = defer.maybeDeferred(self._bans.active, _host(request))
        d.addCallback(lambda bans: {"bans": bans, "server_time": self._clock.seconds()})
        return d
