"""Bans on every host of the appliance, as medulla-guard reports them (``guard.ban``,
``guard.unban``; see ``guard/notify.py`` for the envelopes), for the admin's fleet view.

Appliance-only actions: the master's trust lets them through only from this host's
daemons (the master's account, another resource, the master's key) or an enrolled
relay's (its pinned key); ``origin_of(sender)`` names which, and that name is the host a
ban is stored under — a relay can only ever speak for itself. Every field is checked
before anything is stored; one bad entry refuses the whole envelope (400 ``bad-field``,
saying which entry and why), so a snapshot is applied whole or not at all.

Enforcement is each host's: the master only lists. A ban whose ``until`` has passed is
not listed, and is deleted at the next write.
"""

import ipaddress
import math
import re

from twisted.logger import Logger

from ..core.xmpp.channel import Refusal
from . import ban_storage as db

#: Jail names as guard.d/jails/NAME.ini allows them (and "manual", "restored").
JAIL_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_ITEMS = 1000
MAX_FAILURES = 1_000_000
#: A ban lasts at most a year (the guard's own limit), plus a day for rounding.
MAX_BAN_SECONDS = 366 * 86400.0
#: How far in the future a ban may say it began (clocks of two hosts differ a little).
MAX_CLOCK_AHEAD = 86400.0
MAX_ADDRESS_CHARS = 64
UNBAN_REASONS = ("expired", "admin")


def _bad(where, message):
    return Refusal(400, "bad-field", "%s: %s" % (where, message))


def _show(value):
    """``value`` for an error message: repr (control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_address(value, where):
    """The address in canonical form; IPv4-mapped IPv6 as IPv4 (as the guard bans it)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ADDRESS_CHARS or \
            "%" in value:
        raise _bad(where, "not an IP address: %s" % _show(value))
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise _bad(where, "not an IP address: %s" % _show(value)) from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def check_jail(value, where):
    if not isinstance(value, str) or not JAIL_RE.fullmatch(value):
        raise _bad(where, "a jail name is 1-32 of a-z, 0-9, - and _, got %s" % _show(value))
    return value


def _number(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise _bad(where, "expected a number, got %s" % _show(value))
    return float(value)


def check_ban(item, where, now):
    """One entry of ``guard.ban``'s ``bans``, checked and normalised."""
    if not isinstance(item, dict):
        raise _bad(where, "expected an object")
    address = check_address(item.get("address"), where + ".address")
    jail = check_jail(item.get("jail"), where + ".jail")
    failures = item.get("failures", 0)
    if isinstance(failures, bool) or not isinstance(failures, int) or \
            not 0 <= failures <= MAX_FAILURES:
        raise _bad(where + ".failures", "expected an integer from 0 to %d" % MAX_FAILURES)
    banned_at = _number(item.get("banned_at"), where + ".banned_at")
    until = _number(item.get("until"), where + ".until")
    if banned_at <= 0 or banned_at > now + MAX_CLOCK_AHEAD:
        raise _bad(where + ".banned_at", "%s is not a plausible time (the master's clock "
                   "says %d)" % (_show(item.get("banned_at")), now))
    if not banned_at <= until <= banned_at + MAX_BAN_SECONDS:
        raise _bad(where + ".until", "must be from banned_at to a year after it")
    manual = item.get("manual", False)
    if not isinstance(manual, bool):
        raise _bad(where + ".manual", "expected true or false")
    return {"address": address, "jail": jail, "failures": failures, "banned_at": banned_at,
            "until": until, "manual": manual}


def check_unban(item, where):
    if not isinstance(item, dict):
        raise _bad(where, "expected an object")
    address = check_address(item.get("address"), where + ".address")
    check_jail(item.get("jail"), where + ".jail")
    if item.get("reason") not in UNBAN_REASONS:
        raise _bad(where + ".reason", "expected one of %s" % ", ".join(UNBAN_REASONS))
    return address


def _items(data, key):
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) > MAX_ITEMS:
        raise _bad(key, "expected a list of at most %d entries" % MAX_ITEMS)
    return items


class Bans:
    """``guard.ban``/``guard.unban`` handlers and the reads of the API.

    ``origin_of(sender)`` is ``MasterService.appliance_origin``: an object with
    ``relay`` (the host's name, "master" for this host) or None.
    """

    log = Logger()

    def __init__(self, store, clock, origin_of):
        self.store, self.clock, self.origin_of = store, clock, origin_of

    def _origin(self, sender):
        origin = self.origin_of(sender)
        if origin is None:  # the trust lets no one else through; this is the second lock
            raise Refusal(403, "not-appliance", "%s is neither this host's daemon nor an "
                          "enrolled relay" % sender.full())
        return origin.relay

    async def on_ban(self, sender, envelope):
        """guard.ban: bans now in force on the sender's host (all of them if snapshot)."""
        host = self._origin(sender)
        data = envelope.data
        snapshot = data.get("snapshot", False) if isinstance(data, dict) else False
        if not isinstance(snapshot, bool):
            raise _bad("snapshot", "expected true or false")
        now = self.clock.seconds()
        bans = [check_ban(item, "bans[%d]" % i, now)
                for i, item in enumerate(_items(data, "bans"))]
        await self.store.run(db.record, host, bans, snapshot, now)
        if snapshot:
            self.log.info("guard on {host}: {count} bans in force", host=host,
                          count=len(bans))
        for ban in bans if not snapshot else ():
            self.log.info("guard on {host} banned {address} ({jail}, {failures} failures, "
                          "{manual}) for {seconds}s", host=host, address=ban["address"],
                          jail=ban["jail"], failures=ban["failures"],
                          manual="by hand" if ban["manual"] else "by its jail",
                          seconds=round(ban["until"] - ban["banned_at"]))
        return None

    async def on_unban(self, sender, envelope):
        """guard.unban: bans lifted (by an admin) or run out on the sender's host."""
        host = self._origin(sender)
        addresses = [check_unban(item, "unbans[%d]" % i)
                     for i, item in enumerate(_items(envelope.data, "unbans"))]
        removed = await self.store.run(db.remove, host, addresses, self.clock.seconds())
        self.log.debug("guard on {host}: {count} bans lifted", host=host, count=removed)
        return None

    def active(self, host=None):
        """Deferred list of the bans in force (every host, or ``host``'s)."""
        return self.store.run(db.active, self.clock.seconds(), host)
