"""The local control socket of medulla-guard, and a small client for medullactl.

One JSON object per line each way over a unix socket (mode 0660):
``{"cmd": "status"}``, ``{"cmd": "bans"}``, ``{"cmd": "ban", "address": "192.0.2.7",
"seconds": 600}`` (seconds optional), ``{"cmd": "unban", "address": "192.0.2.7"}``.
Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": "code", "message":
"..."}``. ``ControlProtocol`` only translates; what the commands do is the service's
(``GuardService.control_status`` and friends).
"""

import json
import socket

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

MAX_REQUEST_BYTES = 4096
MAX_REPLY_BYTES = 64 * 1024 * 1024
DEFAULT_SOCKET = "/run/medulla-guard/control.sock"
DEFAULT_TIMEOUT = 10.0
COMMANDS = ("status", "bans", "ban", "unban")


class CommandError(Exception):
    """A refused command: ``code`` for programs, str() for people."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class ControlProtocol(LineOnlyReceiver):
    """Reads one command per line, answers one JSON line per command, in order."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST_BYTES
    log = Logger()

    def __init__(self, handler):
        self.handler = handler
        self._queue = defer.succeed(None)

    def lineReceived(self, line):
        self._queue.addCallback(lambda _: self._answer(line))

    def lineLengthExceeded(self, line):
        self._send({"ok": False, "error": "too-long",
                    "message": "a request is at most %d bytes" % MAX_REQUEST_BYTES})
        self.transport.loseConnection()

    def _answer(self, line):
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            self._send({"ok": False, "error": "bad-request", "message": "expected one JSON "
                        "object per line"})
            return None
        d = defer.maybeDeferred(self._dispatch, request)
        d.addCallback(lambda result: self._send(dict(ok=True, **result)))
        d.addErrback(self._refused)
        return d

    def _dispatch(self, request):
        command = request.get("cmd")
        if command not in COMMANDS:
            raise CommandError("unknown-command", "commands: %s" % ", ".join(COMMANDS))
        if command in ("ban", "unban") and not isinstance(request.get("address"), str):
            raise CommandError("bad-request", "%s needs an address" % command)
        if command == "status":
            return self.handler.control_status()
        if command == "bans":
            return self.handler.control_bans()
        if command == "unban":
            return self.handler.control_unban(request["address"])
        seconds = request.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or
                                    not isinstance(seconds, (int, float)) or
                                    not 1 <= seconds <= 365 * 86400):
            raise CommandError("bad-request", "seconds: a number from 1 to 31536000")
        return self.handler.control_ban(request["address"], seconds)

    def _refused(self, failure):
        if failure.check(CommandError):
            self._send({"ok": False, "error": failure.value.code,
                        "message": str(failure.value)})
            return
        self.log.failure("control command failed", failure)
        self._send({"ok": False, "error": "internal", "message": "see the medulla-guard log"})

    def _send(self, reply):
        if self.transport is not None and self.transport.connected:
            self.sendLine(json.dumps(reply).encode("utf-8"))


class ControlFactory(protocol.Factory):
    noisy = False

    def __init__(self, handler):
        self.handler = handler

    def buildProtocol(self, addr):
        return ControlProtocol(self.handler)


# -- the client side: synchronous, stdlib only, for medullactl ---------------------------

class ControlClientError(Exception):
    """No answer (socket missing, refused, timeout) or an answer that is not ours."""


class ControlRefused(Exception):
    """The daemon refused the command; ``code`` is its error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def call(command, *, socket_path=DEFAULT_SOCKET, timeout=DEFAULT_TIMEOUT, **args):
    """Send one command, return the answer dict (without "ok").

    Raises ControlRefused when the daemon says no, ControlClientError when it cannot be
    asked.
    """
    request = dict(args, cmd=command)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_REPLY_BYTES:
                    raise ControlClientError("the answer is too long")
    except OSError as exc:
        raise ControlClientError("cannot reach medulla-guard at %s: %s" % (
            socket_path, exc.strerror or exc)) from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlClientError("medulla-guard sent no valid answer") from None
    if not isinstance(reply, dict):
        raise ControlClientError("medulla-guard sent no valid answer")
    if not reply.pop("ok", False):
        raise ControlRefused(reply.get("error", "refused"), reply.get("message", ""))
    return reply


def status(**kw):
    return call("status", **kw)


def bans(**kw):
    return call("bans", **kw)["bans"]


def ban(address, seconds=None, **kw):
    args = {"address": address}
    if seconds is not None:
        args["seconds"] = seconds
    return call("ban", **args, **kw)


def unban(address, **kw):
    return call("unban", address=address, **kw)
