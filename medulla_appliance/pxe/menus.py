"""Where medulla-pxe gets boot menus: the master (``pxe.menu`` over the ApplianceLink),
else the last menu the master gave for that MAC, else the last default menu it gave,
else a built-in menu whose default boots the local disk. A workstation is never left
waiting because the master is away.

The cache lives in memory: it covers a master restart or a lost XMPP session, not a
restart of medulla-pxe while the master is down (then the built-in menu is served).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from ..core.xmpp.link import LinkDown, LinkError, LinkRefused, LinkTimeout
from .ipxe_script import FALLBACK_MENU

#: MACs whose last menu is kept; the oldest are forgotten first.
MAX_CACHED = 20_000
_ITEM_KEYS = {"label", "kind", "service", "title", "boot", "default", "visible",
              "default_on_wol"}


@dataclass(frozen=True)
class MenuChoice:
    """A menu to serve and why: ``own``, ``group``, ``default``, ``registration`` (the
    master said so), ``cached`` or ``fallback``; ``detail`` says more for the log."""

    menu: dict
    why: str
    detail: str = ""
    machine: dict | None = None


class RegistrationFailed(Exception):
    """The master refused the registration or could not be asked; the message says why."""


def valid_menu(menu) -> bool:
    """The shape the renderer needs; anything else from the wire is not served."""
    return (isinstance(menu, dict) and isinstance(menu.get("items"), list)
            and isinstance(menu.get("timeout"), int) and isinstance(menu.get("title"), str)
            and all(isinstance(i, dict) and _ITEM_KEYS <= set(i) for i in menu["items"]))


class MenuSource:
    """Asks the master through ``link`` (an ApplianceLink) as imaging server ``server``,
    waiting at most ``timeout`` seconds."""

    log = Logger()

    def __init__(self, link, server: str, timeout: float):
        self.link, self.server, self.timeout = link, server, timeout
        self.by_mac: OrderedDict[str, dict] = OrderedDict()
        self.last_default: dict | None = None

    def menu(self, mac: str, uuid: str) -> defer.Deferred:
        """Fires with a :class:`MenuChoice`, never fails."""
        if self.link is None:
            return defer.succeed(self._offline(mac, "no XMPP link configured"))
        d = self.link.request("pxe.menu", {"mac": mac, "uuid": uuid, "server": self.server},
                              self.timeout)
        d.addCallback(self._answered, mac)
        d.addErrback(self._not_answered, mac)
        return d

    def register(self, mac: str, uuid: str, name: str) -> defer.Deferred:
        """Fires with ``{"machine": {"uuid", "hostname"}, "created"}``; fails with
        :class:`RegistrationFailed`."""
        if self.link is None:
            return defer.fail(RegistrationFailed("no XMPP link to the master configured"))
        d = self.link.request("pxe.register", {"mac": mac, "uuid": uuid, "name": name,
                                               "server": self.server}, self.timeout)
        d.addCallback(self._registered, mac)
        d.addErrback(_registration_failed)
        return d

    def _answered(self, answer, mac):
        menu = answer.get("menu") if isinstance(answer, dict) else None
        reason = answer.get("reason") if isinstance(answer, dict) else None
        if not valid_menu(menu) or reason not in ("own", "group", "default", "registration"):
            raise LinkError("the master's answer is not a menu")
        self.by_mac[mac] = menu
        self.by_mac.move_to_end(mac)
        while len(self.by_mac) > MAX_CACHED:
            self.by_mac.popitem(last=False)
        if reason == "default":
            self.last_default = menu
        machine = answer.get("machine") if isinstance(answer.get("machine"), dict) else None
        return MenuChoice(menu, reason, machine=machine)

    def _registered(self, answer, mac):
        machine = answer.get("machine") if isinstance(answer, dict) else None
        if not isinstance(machine, dict) or not isinstance(machine.get("hostname"), str):
            raise RegistrationFailed("the master's answer is not a machine")
        # Its next menu is no longer the registration one, even if the master goes away.
        self.by_mac.pop(mac, None)
        return answer

    def _not_answered(self, failure, mac):
        if failure.check(LinkDown):
            why = "master unreachable: " + str(failure.value)
        elif failure.check(LinkTimeout):
            why = "master did not answer: " + str(failure.value)
        elif failure.check(LinkRefused):
            why = "master refused: " + str(failure.value)
        elif failure.check(LinkError):
            why = str(failure.value)
        else:
            self.log.failure("asking the master for the menu of {mac}", failure, mac=mac)
            why = "error asking the master"
        return self._offline(mac, why)

    def _offline(self, mac, why):
        if mac in self.by_mac:
            return MenuChoice(self.by_mac[mac], "cached", why + "; last menu for this MAC")
        if self.last_default is not None:
            return MenuChoice(self.last_default, "cached", why + "; last default menu")
        return MenuChoice(FALLBACK_MENU, "fallback", why)


def _registration_failed(failure):
    if failure.check(RegistrationFailed):
        return failure
    if failure.check(LinkRefused):
        message = failure.value.data.get("message") if isinstance(failure.value.data, dict) \
            else None
        raise RegistrationFailed(message or str(failure.value))
    if failure.check(LinkError):
        raise RegistrationFailed("master unreachable: %s" % failure.value)
    raise RegistrationFailed("error asking the master: %s" % failure.getErrorMessage())
