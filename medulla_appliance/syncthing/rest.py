"""Syncthing's REST API over Twisted: JSON in and out, the ``X-API-Key`` header, a
deadline on every call (from the injected clock) and typed errors.

Written against Syncthing 1.19 (Debian 12): ``/rest/config/*`` (1.12+), ``/rest/db/*``,
``/rest/events``. Every method returns a Deferred.
"""

import json
from urllib.parse import quote, urlencode

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.web import client as web_client
from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

#: The biggest answer read; a need list is paged far below this.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: How many items one /rest/db/need or /rest/db/remoteneed page asks for.
PAGE_SIZE = 1000
#: Seconds Syncthing holds an /rest/events call open when nothing happens.
EVENTS_POLL_SECONDS = 60
DEFAULT_TIMEOUT = 30.0
_SHOW_BODY = 300


class SyncthingError(Exception):
    """Any failure talking to Syncthing."""


class SyncthingUnavailable(SyncthingError):
    """Syncthing did not accept the connection or dropped it: not running, restarting."""


class SyncthingKeyError(SyncthingError):
    """No API key could be read (Syncthing's config.xml not written yet, ...)."""


class SyncthingTimeout(SyncthingError):
    """No complete answer before the deadline."""


class SyncthingProtocolError(SyncthingError):
    """An answer that is not the JSON expected, or too big."""


class SyncthingHTTPError(SyncthingError):
    """A non-2xx answer; ``status`` and the start of ``body`` say why."""

    def __init__(self, method, path, status, body=b""):
        self.method, self.path, self.status = method, path, status
        self.body = body[:_SHOW_BODY].decode("utf-8", "replace").strip()
        detail = f": {self.body}" if self.body else ""
        super().__init__(f"{method} {path}: HTTP {status}{detail}")


class SyncthingAuthError(SyncthingHTTPError):
    """401/403: the API key is wrong."""


class SyncthingNotFound(SyncthingHTTPError):
    """404: no such folder, device or endpoint."""


_UNAVAILABLE = (error.ConnectError, error.ConnectionLost, error.ConnectionDone,
                web_client.ResponseNeverReceived, web_client.RequestTransmissionFailed,
                web_client.ResponseFailed, web_client.PartialDownloadError)


class _BodyReader(protocol.Protocol):
    """Collects a response body of at most ``limit`` bytes into ``finished``."""

    transport = None

    def __init__(self, finished, limit):
        self.finished, self.limit = finished, limit
        self.parts, self.size = [], 0

    def abort(self):
        if self.transport is not None:
            (getattr(self.transport, "abortConnection", None) or self.transport.stopProducing)()

    def dataReceived(self, data):
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.abort()
            self.finished.errback(SyncthingProtocolError(
                f"answer larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if reason.check(web_client.ResponseDone, http.PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _read_body(response, limit):
    finished = defer.Deferred(lambda d: reader.abort())
    reader = _BodyReader(finished, limit)
    response.deliverBody(reader)
    return finished


class _QuietFactory(web_client._HTTP11ClientFactory):
    noisy = False


class SyncthingClient:
    """One Syncthing instance's REST API at ``base_url`` (``http://127.0.0.1:8384``).

    ``api_key`` may be None when ``key_source()`` (which raises SyncthingKeyError) is given:
    the key is read from it when needed, and again after Syncthing refused it (a new
    Syncthing configuration comes with a new key).
    """

    log = Logger()

    def __init__(self, base_url, api_key, *, clock, agent=None, reactor=None,
                 timeout=DEFAULT_TIMEOUT, max_body=MAX_RESPONSE_BYTES, key_source=None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.key_source = key_source
        self.clock = clock
        self.timeout = timeout
        self.max_body = max_body
        self.pool = None
        if agent is None:
            self.pool = web_client.HTTPConnectionPool(reactor or clock, persistent=True)
            self.pool.maxPersistentPerHost = 4
            self.pool._factory = _QuietFactory  # no "Starting factory" line per connection
            agent = web_client.Agent(reactor or clock, connectTimeout=timeout, pool=self.pool)
        self.agent = agent

    def close(self):
        """Drop kept-alive connections (at service stop)."""
        if self.pool is not None:
            return self.pool.closeCachedConnections()
        return defer.succeed(None)

    # -- the one way every call goes -----------------------------------------------------
    def request(self, method, path, *, params=None, body=None, timeout=None):
        """Fires with the decoded JSON answer (None for an empty one), or fails with a
        SyncthingError subclass."""
        if self.api_key is None:
            if self.key_source is None:
                return defer.fail(SyncthingKeyError(f"{method} {path}: no API key"))
            try:
                self.api_key = self.key_source()
            except SyncthingKeyError as exc:
                return defer.fail(exc)
        url = self.base_url + path
        if params:
            url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        headers = Headers({b"X-API-Key": [self.api_key.encode("utf-8")],
                           b"Accept": [b"application/json"]})
        producer = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = _JSONBody(json.dumps(body).encode("utf-8"))
        d = defer.Deferred.fromCoroutine(self._call(method, url, path, headers, producer))
        limit = self.timeout if timeout is None else timeout
        d.addTimeout(limit, self.clock,
                     onTimeoutCancel=lambda result, t: _timed_out(method, path, result, t))
        return d

    async def _call(self, method, url, path, headers, producer):
        try:
            response = await self.agent.request(method.encode("ascii"), url.encode("utf-8"),
                                                headers, producer)
            raw = await _read_body(response, self.max_body)
        except _UNAVAILABLE as exc:
            raise SyncthingUnavailable(f"{method} {path}: {_reason(exc)}") from None
        status = response.code
        if status in (401, 403):
            if self.key_source is not None:
                self.api_key = None  # read it again next time: it may have changed
            raise SyncthingAuthError(method, path, status, raw)
        if status == 404:
            raise SyncthingNotFound(method, path, status, raw)
        if not 200 <= status < 300:
            raise SyncthingHTTPError(method, path, status, raw)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise SyncthingProtocolError(f"{method} {path}: answer is not JSON: "
                                         f"{raw[:80]!r}") from None

    def get(self, path, **params):
        return self.request("GET", path, params=params)

    # -- system ------------------------------------------------------------------------
    def status(self):
        """``/rest/system/status``: ``myID``, ``startTime``, ..."""
        return self.get("/rest/system/status")

    def restart_required(self):
        return self.get("/rest/config/restart-required")

    # -- configuration (1.12+) ----------------------------------------------------------
    def options(self):
        return self.get("/rest/config/options")

    def patch_options(self, changes):
        return self.request("PATCH", "/rest/config/options", body=changes)

    def devices(self):
        return self.get("/rest/config/devices")

    def put_device(self, device):
        """Adds or replaces one device (``/rest/config/devices/<id>``)."""
        return self.request("PUT", "/rest/config/devices/" + quote(device["deviceID"], safe=""),
                            body=device)

    def patch_device(self, device_id, changes):
        return self.request("PATCH", "/rest/config/devices/" + quote(device_id, safe=""),
                            body=changes)

    def folder(self, folder_id):
        """The folder's configuration, or None when Syncthing has no such folder."""
        d = self.get("/rest/config/folders/" + quote(folder_id, safe=""))
        d.addErrback(lambda f: f.trap(SyncthingNotFound) and None)
        return d

    def put_folder(self, folder):
        return self.request("PUT", "/rest/config/folders/" + quote(folder["id"], safe=""),
                            body=folder)

    def patch_folder(self, folder_id, changes):
        return self.request("PATCH", "/rest/config/folders/" + quote(folder_id, safe=""),
                            body=changes)

    # -- database -----------------------------------------------------------------------
    def ignores(self, folder_id):
        """The folder's ignore patterns as written (``ignore``, None when there are none)."""
        return self.get("/rest/db/ignores", folder=folder_id)

    def set_ignores(self, folder_id, lines):
        return self.request("POST", "/rest/db/ignores", params={"folder": folder_id},
                            body={"ignore": list(lines)})

    def db_status(self, folder_id):
        """``/rest/db/status``: the folder's summary (``state``, ``needTotalItems``...)."""
        return self.get("/rest/db/status", folder=folder_id)

    def completion(self, folder_id, device_id=None):
        """``/rest/db/completion``: of ``device_id`` as this Syncthing sees it, or of the
        local device when None."""
        return self.get("/rest/db/completion", folder=folder_id, device=device_id)

    def need(self, folder_id):
        """Every item this device still needs (progress, queued and rest pages joined)."""
        return defer.Deferred.fromCoroutine(self._need(folder_id))

    async def _need(self, folder_id):
        items, page = [], 1
        while True:
            answer = await self.get("/rest/db/need", folder=folder_id, page=page,
                                    perpage=PAGE_SIZE)
            batch = [item for key in ("progress", "queued", "rest")
                     for item in (answer or {}).get(key) or ()]
            items += batch
            if len(batch) < PAGE_SIZE:
                return items
            page += 1

    def remote_need(self, folder_id, device_id):
        """Every item ``device_id`` still needs, as this Syncthing knows it."""
        return defer.Deferred.fromCoroutine(self._remote_need(folder_id, device_id))

    async def _remote_need(self, folder_id, device_id):
        items, page = [], 1
        while True:
            answer = await self.get("/rest/db/remoteneed", folder=folder_id,
                                    device=device_id, page=page, perpage=PAGE_SIZE)
            batch = (answer or {}).get("files") or []
            items += batch
            if len(batch) < PAGE_SIZE:
                return items
            page += 1

    def file(self, folder_id, name):
        """``/rest/db/file``: one item's global and local versions and ``availability``
        (the devices holding its global version); SyncthingNotFound when unknown."""
        return self.get("/rest/db/file", folder=folder_id, file=name)

    def scan(self, folder_id, sub=None):
        return self.request("POST", "/rest/db/scan", params={"folder": folder_id, "sub": sub})

    def revert(self, folder_id):
        """Undo local changes in a receive-only folder."""
        return self.request("POST", "/rest/db/revert", params={"folder": folder_id})

    # -- events --------------------------------------------------------------------------
    def events(self, since=0, *, timeout=EVENTS_POLL_SECONDS, types=None, limit=None):
        """``/rest/events``: the events after ``since`` of ``types``; held open up to
        ``timeout`` seconds when there are none."""
        params = {"since": since, "timeout": timeout, "limit": limit,
                  "events": ",".join(types) if types else None}
        return self.request("GET", "/rest/events", params=params,
                            timeout=timeout + self.timeout)


def _timed_out(method, path, result, timeout):
    raise SyncthingTimeout(f"{method} {path}: no answer in {timeout:g}s")


def _reason(exc):
    if isinstance(exc, (web_client.ResponseFailed, web_client.ResponseNeverReceived,
                        web_client.RequestTransmissionFailed)) and exc.reasons:
        return exc.reasons[0].getErrorMessage() or exc.reasons[0].type.__name__
    return str(exc) or type(exc).__name__


@implementer(IBodyProducer)
class _JSONBody:
    """A request body already in memory, written in one go."""

    def __init__(self, data):
        self.data, self.length = data, len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass
