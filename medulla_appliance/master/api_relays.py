"""The admin API's relay routes (below ``/api/v1``), over :class:`.relays.Relays`::

    GET  /api/v1/relays                  {"relays": [relay, ...]}
    GET  /api/v1/relays/<name>           the relay, its daemons, status and packages
    POST /api/v1/relays/<name>/reset-key its next relay.register pins a new key

A relay: ``name``, ``jid``, ``key_fingerprint`` (empty after a reset), ``enrolled``,
``online``, ``last_seen``, ``enrolled_at``, ``version``, ``daemons`` ({daemon: {version,
resource, registered_at}}), ``package_url``, ``status`` ({load, packages_complete}) and
``status_interval``.
"""

from twisted.internet import defer
from twisted.logger import Logger

from .api import ApiError, _echo, _peer, reads
from .api_fields import utf8
from .relays import NAME_RE


def _relay_name(raw: bytes) -> str:
    name = utf8(raw, "relay name")
    if not NAME_RE.fullmatch(name):
        raise ApiError(404, "not-found", f"no relay {_echo(name)!r}", refusal=False)
    return name


class RelayRoutes:
    """Routes and handlers over *relays* (a :class:`.relays.Relays`)."""

    log = Logger()

    def __init__(self, relays):
        self._relays = relays

    def route(self, rest: list[bytes]):
        """``(handlers by method, args)`` for the path below ``/api/v1``, or None."""
        if rest[:1] != [b"relays"]:
            return None
        if len(rest) == 1:
            return reads(self._list), ()
        if len(rest) == 2 and rest[1]:
            return reads(self._show), (rest[1],)
        if len(rest) == 3 and rest[1] and rest[2] == b"reset-key":
            return {b"POST": self._reset_key}, (rest[1],)
        return None

    def _list(self, request):
        d = defer.maybeDeferred(self._relays.list_relays)
        d.addCallback(lambda relays: {"relays": relays})
        return d

    def _show(self, request, raw_name: bytes):
        return defer.ensureDeferred(self._one(_relay_name(raw_name)))

    async def _one(self, name: str):
        relay = await defer.maybeDeferred(self._relays.get_relay, name)
        if relay is None:
            raise ApiError(404, "not-found", f"no relay {name!r}", refusal=False)
        return relay

    def _reset_key(self, request, raw_name: bytes):
        return defer.ensureDeferred(self._resetting(_relay_name(raw_name), request))

    async def _resetting(self, name: str, request):
        relay = await self._one(name)
        await defer.maybeDeferred(self._relays.reset_key, name)
        # The audit line: the token is shared, so the peer is who we can name.
        self.log.info("API: {peer} reset the key {fingerprint} of relay {name}; its next "
                      "enrolment pins a new key", peer=_peer(request), name=name,
                      fingerprint=relay.get("key_fingerprint") or "(none)")
        return {"relay": name, "key_reset": True}
