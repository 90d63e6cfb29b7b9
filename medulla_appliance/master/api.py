"""The master's admin HTTP JSON API (``/api/v1``), served on 127.0.0.1:7080.

This module is the HTTP layer only: it checks the URI length and the bearer token,
routes, validates parameters, calls the registry and renders JSON. The registry never
sees a request. Every answer, error or not, is a JSON object; every refusal is logged
once, without the presented token.

The registry is any object with these methods, each returning a value or a Deferred::

    list_machines(online: bool | None = None) -> list[dict]
    find_machines(name: str) -> list[dict]       # hostname, uuid or JID
    machine_history(uuid: str, limit: int) -> list[dict]   # newest first
    reset_key(uuid: str) -> None                 # the next enrolment pins a new key
    status() -> dict

Reads are GET (and HEAD); the one change, ``POST /api/v1/machines/<name>/reset-key``,
is POST only and logged at info level with the machine and the peer, for the audit trail.

With a deployment coordinator and a package store, the routes of
:mod:`medulla_appliance.master.api_deploy` (packages, deployments, audit) are served too.
"""

from __future__ import annotations

import hmac
import io
import json
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

#: Longer request targets are refused with 414 before anything else is looked at.
MAX_URI_BYTES = 2 * 1024
#: Attacker-supplied text (a machine name) is cut to this many characters when echoed.
MAX_ECHO_CHARS = 200
#: How many history events ``GET /api/v1/machines/<name>`` returns.
HISTORY_LIMIT = 50
#: How many candidates a 409 lists; a name shared by thousands is listed in part.
MAX_CANDIDATES = 50
#: Idle HTTP connections are closed after this many seconds.
IDLE_TIMEOUT = 60
#: The largest JSON body an endpoint reads (a deployment's target list); a bigger one is
#: dropped as it arrives and refused (413).
MAX_BODY_BYTES = 64 * 1024

_BOOLEANS = {b"true": True, b"false": False}


class ApiError(Exception):
    """An answer other than 200, raised anywhere below :meth:`ApiResource.render`.

    *refusal* says whether it is logged as a refused request (auth, bad URI, bad
    parameter) or is simply an answer (no such machine).
    """

    def __init__(self, code: int, error: str, message: str | None = None, *,
                 headers: tuple[tuple[bytes, bytes], ...] = (),
                 extra: dict[str, Any] | None = None, refusal: bool = True):
        super().__init__(message or error)
        self.code, self.headers, self.refusal = code, headers, refusal
        self.body: dict[str, Any] = {"error": error}
        if message is not None:
            self.body["message"] = message
        self.body.update(extra or {})


class Created:
    """A handler's answer for a new resource: 201, *body*, and where it now lives."""

    def __init__(self, body: dict[str, Any], location: str):
        self.body, self.location = body, location


def reads(handler) -> dict[bytes, Any]:
    """The method table of a read-only route."""
    return {b"GET": handler, b"HEAD": handler}


class BoundedRequest(Request):
    """A request that keeps at most :data:`MAX_BODY_BYTES` of its body in memory.

    Twisted would spool any body to a temporary file; here the excess is counted and
    dropped, and ``body_too_large`` tells :class:`ApiResource` to answer 413.
    """

    body_too_large = False

    def gotLength(self, length):
        self.content = io.BytesIO()
        self.body_too_large = length is not None and length > MAX_BODY_BYTES

    def handleContentChunk(self, data):
        if not self.body_too_large and self.content.tell() + len(data) > MAX_BODY_BYTES:
            self.body_too_large = True  # chunked bodies have no length to check up front
        if self.body_too_large:
            self.content = io.BytesIO()  # nothing kept, not even the part below the limit
            return
        self.content.write(data)


class ApiResource(Resource):
    """Root resource of the API site: every path below ``/`` lands here."""

    isLeaf = True
    log = Logger()

    def __init__(self, registry: Any, token: str, *, clock: IReactorTime,
                 deployments: Any = None, packages: Any = None, run_in_thread=None,
                 route_groups: tuple = ()):
        super().__init__()
        if not token:
            raise ValueError("the API token must not be empty")
        self._registry = registry
        self._token = token.encode("utf-8")
        self._clock = clock
        # Each group has ``route(rest) -> (handlers by method, args) | None``.
        self._route_groups = list(route_groups)
        if deployments is not None or packages is not None:
            # Imported here: api_deploy builds on this module's ApiError and Created.
            from .api_deploy import DeployRoutes
            self._route_groups.insert(0, DeployRoutes(deployments, packages, clock=clock,
                                                      run_in_thread=run_in_thread))

    def render(self, request):
        """Answer *request* asynchronously; never leaves it hanging."""
        gone: list[Failure] = []
        # The callback side is the normal finish; only a lost connection matters here.
        request.notifyFinish().addErrback(gone.append)
        d = defer.maybeDeferred(self._dispatch, request)
        d.addCallback(_success)
        d.addErrback(self._error_response, request)
        d.addCallback(self._send, request, gone)
        d.addErrback(lambda f: self.log.failure("API could not answer {method} {path}", f,
                                                method=_text(request.method),
                                                path=_text(request.path)))
        return NOT_DONE_YET

    # -- the HTTP layer: auth, routing, parameters -------------------------------------

    def _dispatch(self, request) -> defer.Deferred:
        if len(request.uri) > MAX_URI_BYTES:
            raise ApiError(414, "uri-too-long",
                           f"the request target is longer than {MAX_URI_BYTES} bytes")
        if getattr(request, "body_too_large", False):
            raise ApiError(413, "body-too-large",
                           f"the request body is longer than {MAX_BODY_BYTES} bytes")
        self._authenticate(request)
        handlers, args = self._route(request.postpath)
        if request.method not in handlers:
            methods = [m.decode() for m in handlers]
            names = " and ".join(filter(None, (", ".join(methods[:-1]), methods[-1])))
            verb = "is" if len(methods) == 1 else "are"
            raise ApiError(405, "method-not-allowed", f"only {names} {verb} supported here",
                           headers=((b"Allow", ", ".join(methods).encode()),))
        return handlers[request.method](request, *args)

    def _authenticate(self, request) -> None:
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) != 1:
            reason = "no bearer token" if not values else "several Authorization headers"
            raise _unauthorized(reason)
        scheme, _, credentials = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            raise _unauthorized("not a bearer token")
        if not hmac.compare_digest(credentials.strip(), self._token):
            raise _unauthorized("wrong token")

    def _route(self, segments: list[bytes]):
        if len(segments) > 1 and segments[-1] == b"":
            segments = segments[:-1]  # tolerate one trailing slash
        if segments[:2] == [b"api", b"v1"]:
            rest = segments[2:]
            if rest == [b"status"]:
                return reads(self._status), ()
            if rest == [b"machines"]:
                return reads(self._machines), ()
            if len(rest) == 2 and rest[0] == b"machines" and rest[1]:
                return reads(self._machine), (rest[1],)
            if len(rest) == 3 and rest[0] == b"machines" and rest[1] and rest[2] == b"reset-key":
                return {b"POST": self._reset_key}, (rest[1],)
            for group in self._route_groups:
                found = group.route(rest)
                if found:
                    return found
        raise ApiError(404, "not-found", "no such endpoint")

    # -- handlers: parameters in, registry calls, plain data out -----------------------

    def _status(self, request) -> defer.Deferred:
        d = defer.maybeDeferred(self._registry.status)
        d.addCallback(lambda status: {**status, "server_time": self._clock.seconds()})
        return d

    def _machines(self, request) -> defer.Deferred:
        online = _boolean_arg(request, b"online")
        d = defer.maybeDeferred(self._registry.list_machines, online=online)
        d.addCallback(lambda machines: {"machines": list(machines)})
        return d

    def _machine(self, request, raw_name: bytes) -> defer.Deferred:
        return defer.ensureDeferred(self._machine_details(_machine_name(raw_name)))

    def _reset_key(self, request, raw_name: bytes) -> defer.Deferred:
        return defer.ensureDeferred(self._reset_machine_key(_machine_name(raw_name), request))

    async def _machine_details(self, name: str) -> dict[str, Any]:
        machine = await self._one_machine(name)
        history = await defer.maybeDeferred(
            self._registry.machine_history, machine["uuid"], HISTORY_LIMIT)
        machine["history"] = list(history)[:HISTORY_LIMIT]
        return machine

    async def _reset_machine_key(self, name: str, request) -> dict[str, Any]:
        machine = await self._one_machine(name)
        await defer.maybeDeferred(self._registry.reset_key, machine["uuid"])
        # The audit line: the token is shared, so the peer is who we can name.
        self.log.info("API: {peer} reset the key {fingerprint} of machine {hostname} "
                      "({uuid}); its next enrolment pins a new key",
                      fingerprint=machine.get("key_fingerprint") or "(none)",
                      hostname=machine.get("hostname"), uuid=machine["uuid"],
                      peer=_peer(request))
        return {"uuid": machine["uuid"], "hostname": machine.get("hostname"), "key_reset": True}

    async def _one_machine(self, name: str) -> dict[str, Any]:
        """The one machine *name* designates, or 404 (none) / 409 (several)."""
        matches = list(await defer.maybeDeferred(self._registry.find_machines, name))
        if not matches:
            raise ApiError(404, "not-found", f"no machine named {_echo(name)!r}", refusal=False)
        if len(matches) > 1:
            candidates = [{key: m.get(key) for key in ("uuid", "hostname", "jid")}
                          for m in matches[:MAX_CANDIDATES]]
            raise ApiError(409, "ambiguous",
                           f"{len(matches)} machines match {_echo(name)!r}; use a uuid or JID",
                           extra={"candidates": candidates, "count": len(matches)},
                           refusal=False)
        return dict(matches[0])

    # -- rendering ---------------------------------------------------------------------

    def _error_response(self, failure: Failure, request):
        fields = dict(method=_text(request.method), path=_text(request.path),
                      peer=_peer(request))
        if failure.check(ApiError):
            error = failure.value
            if error.refusal:
                self.log.warn("API refused {method} {path} from {peer}: {reason}",
                              reason=f"{error.code} {error}", **fields)
            else:
                self.log.debug("API {method} {path} from {peer}: {code} {error}",
                               code=error.code, error=error.body["error"], **fields)
            return error.code, _encode(error.body), error.headers
        self.log.failure("API {method} {path} from {peer} failed", failure, **fields)
        return 500, _encode({"error": "internal", "message": "see the medulla-master log"}), ()

    def _send(self, response, request, gone: list) -> None:
        if gone or request.finished:
            return  # the client went away while the registry worked; nobody to tell
        code, payload, headers = response
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(payload))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        for name, value in headers:
            request.setHeader(name, value)
        if code == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="medulla"')
        request.write(payload)
        request.finish()


def make_api_resource(registry: Any, token: str, *, clock: IReactorTime,
                      **collaborators: Any) -> IResource:
    """Build the API's root resource over *registry*, guarded by *token*.

    *collaborators*: ``deployments`` (the coordinator), ``packages`` (the package store),
    ``run_in_thread`` (default ``deferToThread``) and ``route_groups`` (more objects with
    ``route(rest)``, such as PXE menus or relays), all optional.
    """
    return ApiResource(registry, token, clock=clock, **collaborators)


def make_api_site(registry: Any, token: str, *, clock: IReactorTime,
                  **collaborators: Any) -> Site:
    """Build the ``Site`` to listen with (``tcp:7080:interface=127.0.0.1``).

    *clock* also drives the HTTP idle timeouts, so it is normally the reactor.
    """
    # Bodies are JSON, read by the endpoints that want one: a form never becomes args.
    site = Site(make_api_resource(registry, token, clock=clock, **collaborators),
                requestFactory=BoundedRequest, parsePOSTFormSubmission=False,
                timeout=IDLE_TIMEOUT, reactor=clock)
    site.displayTracebacks = False
    return site


def _unauthorized(reason: str) -> ApiError:
    # The reason names what was wrong, never what was presented.
    return ApiError(401, "unauthorized", reason)


def _machine_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad-request", "the machine name is not valid UTF-8") from None


def _boolean_arg(request, name: bytes) -> bool | None:
    values = request.args.get(name)
    if not values:
        return None
    parsed = {_BOOLEANS.get(value.lower()) for value in values}
    if len(parsed) != 1 or None in parsed:
        raise ApiError(400, "bad-request", f"{name.decode()} must be 'true' or 'false'")
    return parsed.pop()


def _success(result: Any):
    if isinstance(result, Created):
        return 201, _encode(result.body), ((b"Location", result.location.encode("utf-8")),)
    return 200, _encode(result), ()


def _encode(body: Any) -> bytes:
    try:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8; \u escapes keep the JSON valid.
        return json.dumps(body, ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"


def _echo(text: str) -> str:
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"


def _text(raw: bytes) -> str:
    """*raw* (a method or path from the wire) cut and escaped for a log line."""
    cut = raw[:MAX_ECHO_CHARS].decode("ascii", "backslashreplace")
    cut = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in cut)
    return cut + ("…" if len(raw) > MAX_ECHO_CHARS else "")


def _peer(request) -> str:
    address = request.getClientAddress()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(getattr(address, "name", None) or address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
