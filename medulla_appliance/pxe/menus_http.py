"""The boot-menu HTTP endpoint iPXE talks to (HTTP layer only):

- ``GET /medulla/bootmenu?mac=MAC&uuid=UUID&srv=ADDRESS[&wol=1]`` (and Medulla's own
  ``/mmc/imaging/bootmenu.php``, so DHCP and iPXE setups made for Medulla keep working):
  the machine's menu as an iPXE script;
- ``GET /medulla/register?mac=MAC&uuid=UUID&name=NAME[&auto=1]``: registers an unknown
  machine with the master, then boots on. With ``auto=1`` (the keyboard-less item) a
  missing or unusable name becomes ``pc-`` and the MAC's digits.

One access-log line per request: peer, path, MAC, UUID, and which menu and why (own,
group, default, registration, cached, fallback). A bad query value gets 400 and a small
script that says so and boots on.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..master.logic.pxe_menus import (
    MenuError,
    automatic_name,
    check_mac,
    check_machine_name,
    check_smbios_uuid,
)
from . import ipxe_script
from .menus import RegistrationFailed

MENU_PATHS = (b"/medulla/bootmenu", b"/mmc/imaging/bootmenu.php")
REGISTER_PATH = b"/medulla/register"
MAX_ECHO = 80


class BadQuery(Exception):
    """A query value we refuse (400)."""


def _arg(request, name: bytes) -> str:
    values = request.args.get(name) or [b""]
    try:
        return values[0].decode("ascii")
    except UnicodeDecodeError:
        raise BadQuery(f"{name.decode()}: not ASCII") from None


def echo(value) -> str:
    """Text from the wire, cut and with control characters escaped, for a log line."""
    text = value.decode("ascii", "backslashreplace") if isinstance(value, bytes) else str(value)
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:MAX_ECHO])
    return text + ("..." if len(value) > MAX_ECHO else "")


def _identity(request) -> tuple[str, str]:
    try:
        return check_mac(_arg(request, b"mac")), check_smbios_uuid(_arg(request, b"uuid"))
    except MenuError as e:
        raise BadQuery(e.message) from None


def _server_host(request) -> str:
    """Our address as the client reached it, as it goes in a URL (``{server}``)."""
    host = request.getHost().host
    return f"[{host}]" if ":" in host else host


def _peer(request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)


class BootMenuResource(Resource):
    """Every path lands here; ``source`` is a :class:`.menus.MenuSource`."""

    isLeaf = True
    log = Logger()

    def __init__(self, source):
        super().__init__()
        self.source = source
        self.served = self.refused = 0

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            if request.path in MENU_PATHS:
                d = self._menu(request)
            elif request.path == REGISTER_PATH:
                d = self._register(request)
            else:
                self._access(request, 404, "no such path")
                request.setResponseCode(404)
                return ipxe_script.render_message("no such path on medulla-pxe").encode()
        except BadQuery as e:
            self.refused += 1
            self._access(request, 400, f"bad request: {echo(str(e))}")
            request.setResponseCode(400)
            return ipxe_script.render_message(f"bad request: {e}").encode()
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    render_HEAD = render_GET

    def render(self, request):
        if request.method in (b"GET", b"HEAD"):
            return super().render(request)
        self._access(request, 405, "method not allowed")
        request.setResponseCode(405)
        request.setHeader(b"Allow", b"GET, HEAD")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return ipxe_script.render_message("only GET is served here").encode()

    def _menu(self, request):
        mac, uuid = _identity(request)
        wol = _arg(request, b"wol") == "1"
        d = self.source.menu(mac, uuid)

        def serve(choice):
            script = ipxe_script.render_menu(choice.menu, mac=mac, uuid=uuid,
                                             server=_server_host(request), wol=wol,
                                             why=choice.why)
            detail = f": {choice.detail}" if choice.detail else ""
            self._access(request, 200, f"menu {echo(choice.menu.get('name', '?'))} "
                         f"({choice.why}{detail})", mac, uuid)
            self._send(request, 200, script)
        return d.addCallback(serve)

    def _register(self, request):
        mac, uuid = _identity(request)
        auto = _arg(request, b"auto") == "1"
        name = _arg(request, b"name").strip()
        try:
            name = check_machine_name(name)
        except MenuError as e:
            if not auto:
                raise BadQuery(e.message) from None
            name = automatic_name(mac)  # the DHCP host name is absent or unusable
        d = self.source.register(mac, uuid, name)

        def registered(answer):
            machine = answer["machine"]
            created = bool(answer.get("created"))
            self._access(request, 200, "%s %s (%s)" % (
                "registered" if created else "already known as", echo(machine["hostname"]),
                echo(machine.get("uuid", "?"))), mac, uuid)
            self._send(request, 200, ipxe_script.render_registered(
                machine["hostname"], str(machine.get("uuid", "")), created))

        def refused(failure):
            failure.trap(RegistrationFailed)
            self._access(request, 200, f"registration of {name} failed: "
                         f"{echo(failure.getErrorMessage())}", mac, uuid)
            self._send(request, 200, ipxe_script.render_message(
                "registration failed: " + failure.getErrorMessage()))
        return d.addCallbacks(registered, refused)

    def _failed(self, failure, request):
        self.log.failure("HTTP {path} failed", failure, path=echo(request.path))
        self._send(request, 500, ipxe_script.render_message("internal error"))

    def _send(self, request, code, script):
        if request.finished or request._disconnected:
            return
        self.served += 1
        body = script.encode("utf-8")
        request.setResponseCode(code)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _access(self, request, code, outcome, mac="-", uuid=""):
        self.log.info("HTTP {peer} {method} {path} mac={mac} uuid={uuid}: {code} {outcome}",
                      peer=_peer(request), method=echo(request.method),
                      path=echo(request.path), mac=mac, uuid=uuid or "-", code=code,
                      outcome=outcome)
