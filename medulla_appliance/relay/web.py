"""The relay's package download service: ``GET|HEAD /packages/<package_id>/<path>``.

This module is the HTTP layer: request target, token, method, range and limits are checked
here, then the file is handed to a ``FileRangeProducer``. What may be served is decided by
``PackageStore`` (complete packages, listed files only) and ``check_token`` (the master's
signature, the package, the expiry). Every refusal is answered with a JSON object
``{"error": code}`` and logged once per client address and reason.

Answers: 200 whole file, 206 one range (``Range`` honoured, ``If-Range`` compared with the
strong ``ETag``, several ranges served whole), 400 bad path, 401 no or bad token
(``WWW-Authenticate: Bearer``), 403 token for another package or expired, 404 unknown or
not synchronized, 405 other methods, 414 target too long, 416 range past the end, 503 no
download slot (``Retry-After``).
"""

from __future__ import annotations

import io
import json
import os
import re
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..core.refusals import RefusalLog
from ..packages.token import PACKAGE_ID_RE, TokenError, check_token
from . import ranges
from .limits import Busy, DownloadSlots
from .packages import DESCRIPTOR, Entry, NotServed, Package, PackageStore
from .producer import FileRangeProducer

PREFIX = b"/packages/"
#: A token (at most 2 KiB) in the query plus a long path fit well below this.
MAX_URI_BYTES = 8 * 1024
#: Seconds a client told "busy" (503) should wait before asking again.
RETRY_AFTER_SECONDS = 5
MAX_ECHO_CHARS = 200
_READ = (b"GET", b"HEAD")
# Percent-escapes that would smuggle a separator, a backslash or a NUL into one segment.
_FORBIDDEN_ESCAPES = re.compile(rb"%(2f|5c|00)", re.I)
_TOKEN_ERRORS = {"wrong-package": 403, "expired": 403}


class HttpError(Exception):
    """A refusal: status ``code``, JSON ``{"error": error}``, extra headers; ``message``
    goes to the log only."""

    def __init__(self, code: int, error: str, message: str = "", headers=()):
        super().__init__(code, error, message)
        self.code, self.error, self.message, self.headers = code, error, message, tuple(headers)


class DiscardingRequest(Request):
    """A request whose body is dropped as it arrives: no endpoint reads one, and Twisted
    would otherwise spool it to a temporary file."""

    def gotLength(self, length):
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        pass


class _Client:
    """A client address in the shape ``RefusalLog`` expects of a sender (a JID)."""

    def __init__(self, host: str, port):
        self.host, self.port = host, port

    def userhost(self) -> str:
        return self.host

    def full(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class PackageResource(Resource):
    """Serves complete packages' files to holders of a download token."""

    isLeaf = True
    log = Logger()

    def __init__(self, store: PackageStore, public_key, slots: DownloadSlots, *,
                 clock: IReactorTime, stall_timeout: float, sendfile: bool = True):
        super().__init__()
        self.store, self.public_key, self.slots = store, public_key, slots
        self.clock, self.stall_timeout, self.sendfile = clock, stall_timeout, sendfile
        self.refusals = RefusalLog(self.log, clock)
        self.served = 0

    def render(self, request):
        try:
            self._serve(request)
        except HttpError as error:
            self._refuse(request, error)
        return NOT_DONE_YET

    # -- the checks, in order ------------------------------------------------------------

    def _serve(self, request) -> None:
        if request.method not in _READ:
            raise HttpError(405, "method-not-allowed", "only GET and HEAD",
                            headers=((b"Allow", b"GET, HEAD"),))
        if len(request.uri) > MAX_URI_BYTES:
            raise HttpError(414, "uri-too-long", f"longer than {MAX_URI_BYTES} bytes")
        package_id, path = parse_target(request.path)
        claims = self._authorize(request, package_id)
        try:
            package = self.store.package(package_id)
            entry = self._entry(package, path)
        except NotServed as exc:
            raise HttpError(404, exc.reason, exc.message) from None
        etag = b'"%s"' % entry.sha256.encode("ascii")
        choice = ranges.select(entry.size, request.getHeader(b"range"),
                               request.getHeader(b"if-range"), etag)
        if isinstance(choice, ranges.Unsatisfiable):
            raise HttpError(416, "range-not-satisfiable", "range past the end",
                            headers=((b"Content-Range", choice.content_range()),))
        if entry.path == DESCRIPTOR:
            self._send_bytes(request, package.descriptor, entry, choice)
        elif request.method == b"HEAD":
            os.close(self._open(package, entry))  # it exists with its size: answer
            self._headers(request, entry, choice)
            request.finish()
        else:
            self._download(request, package, entry, choice, claims)

    def _authorize(self, request, package_id: str) -> dict:
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) > 1:
            raise _unauthorized("several Authorization headers")
        if values:
            scheme, _, token = values[0].strip().partition(b" ")
            token = token.strip()
            if scheme.lower() != b"bearer" or not token:
                raise _unauthorized("not a bearer token")
        else:
            tokens = request.args.get(b"token", [])
            if len(tokens) != 1 or not tokens[0]:
                raise _unauthorized("no token" if not tokens else "several tokens")
            token = tokens[0]
        try:
            return check_token(token, self.public_key, package_id=package_id,
                               now=self.clock.seconds())
        except TokenError as exc:
            code = _TOKEN_ERRORS.get(exc.reason, 401)
            if code == 401:
                raise _unauthorized(str(exc), error=exc.reason) from None
            raise HttpError(code, exc.reason, exc.message) from None

    @staticmethod
    def _entry(package: Package, path: str) -> Entry:
        if path == DESCRIPTOR:
            return package.descriptor_entry
        entry = package.files.get(path)
        if entry is None:
            raise NotServed("not-found", "no such file in the package")
        return entry

    def _open(self, package: Package, entry: Entry) -> int:
        try:
            return self.store.open(package, entry)
        except NotServed as exc:
            raise HttpError(404, exc.reason, exc.message) from None

    # -- answers -------------------------------------------------------------------------

    def _download(self, request, package, entry, choice, claims) -> None:
        client = _client_host(request)
        try:
            self.slots.acquire(client)
        except Busy as exc:
            raise HttpError(503, exc.reason, exc.message, headers=(
                (b"Retry-After", b"%d" % RETRY_AFTER_SECONDS),)) from None
        try:
            fd = self._open(package, entry)
        except HttpError:
            self.slots.release(client)
            raise
        self._headers(request, entry, choice)
        first = choice.first if isinstance(choice, ranges.Part) else 0
        length = choice.length if isinstance(choice, ranges.Part) else entry.size
        producer = FileRangeProducer(request, fd, first, length, clock=self.clock,
                                     stall_timeout=self.stall_timeout, sendfile=self.sendfile)
        # Belt and braces: a lost connection also reaches the producer this way.
        request.notifyFinish().addErrback(lambda _: producer.stopProducing())
        done = producer.start()
        done.addBoth(self._downloaded, client, request, package.id, entry.path, claims)

    def _downloaded(self, outcome, client, request, package_id, path, claims):
        self.slots.release(client)
        fields = dict(package=package_id, path=path, dep=claims["dep"], sub=claims["sub"],
                      peer=_client(request).full())
        if isinstance(outcome, int):
            self.served += 1
            self.log.debug("served {package}/{path} ({size} bytes) to {sub} at {peer} "
                           "for {dep}", size=outcome, **fields)
        else:
            self.log.info("download of {package}/{path} by {sub} at {peer} for {dep} ended: "
                          "{reason}", reason=outcome.getErrorMessage(), **fields)
        return None

    def _send_bytes(self, request, data: bytes, entry: Entry, choice) -> None:
        self._headers(request, entry, choice, content_type=b"application/json")
        if isinstance(choice, ranges.Part):
            data = data[choice.first:choice.last + 1]
        if request.method != b"HEAD":
            request.write(data)
        request.finish()

    @staticmethod
    def _headers(request, entry: Entry, choice, content_type=b"application/octet-stream"):
        if isinstance(choice, ranges.Part):
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", choice.content_range())
            length = choice.length
        else:
            length = entry.size
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", b"%d" % length)
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"ETag", b'"%s"' % entry.sha256.encode("ascii"))
        request.setHeader(b"X-Checksum-SHA256", entry.sha256.encode("ascii"))
        request.setHeader(b"Cache-Control", b"private, no-transform")

    def _refuse(self, request, error: HttpError) -> None:
        self.refusals.refused(_client(request), "%s %s" % (_text(request.method),
                                                          _text(request.path)),
                              error.error, f"{error.code} {error.message}")
        body = json.dumps({"error": error.error}).encode("ascii") + b"\n"
        request.setResponseCode(error.code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Accept-Ranges", b"bytes")
        for name, value in error.headers:
            request.setHeader(name, value)
        if error.code == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="medulla-relay"')
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


def parse_target(raw_path: bytes) -> tuple[str, str]:
    """``(package_id, path)`` of ``/packages/<package_id>/<path>``; HttpError otherwise.

    Each segment is percent-decoded on its own, after the checks that keep it one segment:
    no ``%2F``, ``%5C`` or ``%00``, no backslash, no NUL, no empty, ``.`` or ``..`` segment
    (``%2e%2e`` included), valid UTF-8, no control characters.
    """
    if not raw_path.startswith(PREFIX):
        raise HttpError(404, "not-found", "not under /packages/")
    raw_id, slash, rest = raw_path[len(PREFIX):].partition(b"/")
    try:
        package_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        package_id = ""
    if not PACKAGE_ID_RE.fullmatch(package_id):
        raise HttpError(404, "not-found", "not a package id")
    if not slash or not rest:
        raise HttpError(404, "not-found", "no file named")
    if b"\\" in rest or b"\x00" in rest or _FORBIDDEN_ESCAPES.search(rest):
        raise HttpError(400, "bad-path", "backslash, NUL or encoded separator in the path")
    parts = []
    for raw in rest.split(b"/"):
        try:
            part = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "bad-path", "the path is not UTF-8") from None
        if part in ("", ".", "..") or any(ord(c) < 32 or c == "\x7f" for c in part):
            raise HttpError(400, "bad-path", "empty, '.', '..' or control character segment")
        parts.append(part)
    return package_id, "/".join(parts)


def make_site(resource: PackageResource, *, clock: IReactorTime, idle_timeout: float) -> Site:
    """The ``Site`` to listen with; *clock* also drives its idle timeout."""
    site = _QuietSite(resource, requestFactory=DiscardingRequest, timeout=idle_timeout,
                      reactor=clock)
    site.displayTracebacks = False
    site.noisy = False
    return site


class _QuietSite(Site):
    # One access-log line per download would flood the journal; downloads are logged by
    # PackageResource at debug level, ended ones at info.
    def log(self, request):
        pass


def _unauthorized(message: str, error: str = "unauthorized") -> HttpError:
    return HttpError(401, error, message)


def _client(request) -> _Client:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if host is None:
        return _Client(str(getattr(address, "name", None) or address), "-")
    return _Client(host, getattr(address, "port", "-"))


def _client_host(request) -> str:
    return _client(request).host


def _text(raw: bytes) -> str:
    """*raw* (a method or path from the wire) cut and escaped for a log line."""
    cut = raw[:MAX_ECHO_CHARS].decode("ascii", "backslashreplace")
    cut = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in cut)
    return cut + ("…" if len(raw) > MAX_ECHO_CHARS else "")
