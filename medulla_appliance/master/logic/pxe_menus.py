"""Boot menus of medulla-pxe: what a menu may hold and which menu a workstation gets.

Plain data and decisions, no store and no reactor. A menu is a dict ``{"name", "title",
"timeout", "source", "owner", "items": [...]}``; an item is ``{"label", "kind", "service",
"title", "boot", "default", "visible", "default_on_wol"}``, in boot-menu order.

The rules come from the seeds' "Imaging menus": a machine's own menu, else its group's,
else the default menu of its imaging server; an unknown MAC gets the registration menu;
a menu always keeps at least one (visible) service, so the last one cannot be removed.
Every text that reaches an iPXE script is checked here (and neutralised again where the
script is written, :mod:`medulla_appliance.pxe.ipxe_script`).
"""

from __future__ import annotations

import re

from .identity import HOSTNAME_RE, normalise_mac

#: Services medulla-pxe knows how to render. ``backup`` boots the imaging system, so it
#: carries a boot definition like a master does.
SERVICES = {
    "continue": "boot the local disk",
    "backup": "copy this machine's disk to the imaging system",
    "register": "register this machine with an automatic name",
    "register-ask": "register this machine, asking its name",
    "reboot": "restart the machine",
    "poweroff": "power the machine off",
}
SERVICES_WITH_BOOT = ("backup",)
KINDS = ("service", "master")
ASSIGNMENT_KINDS = ("mac", "uuid", "group", "server", "registration")
#: Entity menus are copies named ``KIND:TARGET`` (``mac:52:54:00:12:34:56``).
COPY_KINDS = ("mac", "uuid", "group")
REASONS = ("own", "group", "default", "registration")
DEFAULT_MENU = "default"
REGISTRATION_MENU = "registration"

MAX_ITEMS = 64
MAX_TITLE = 64
MAX_URL = 512
MAX_ARGS = 512
MAX_INITRDS = 8
MAX_TIMEOUT = 3600
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
COPY_NAME_RE = re.compile(r"^(mac|uuid|group):[A-Za-z0-9._:-]{1,64}\Z")
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")
SERVER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
SMBIOS_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
#: Firmware that has no UUID reports one of these; they identify nothing.
PLACEHOLDER_UUIDS = frozenset(("00000000-0000-0000-0000-000000000000",
                               "ffffffff-ffff-ffff-ffff-ffffffffffff"))
# Characters iPXE treats specially on a command line: whitespace splits, ``${`` expands,
# whole tokens ``&&``, ``||``, ``;`` and tokens starting with ``#`` end the command.
_URL_RE = re.compile(r"^(https?|tftp)://[A-Za-z0-9._~:/?=&%+,@!*()\[\]{}-]+\Z")
_ARGS_RE = re.compile(r"^[A-Za-z0-9._~:/=,+@%{}-]+( [A-Za-z0-9._~:/=,+@%{}-]+)*\Z")
_TERMINATORS = ("&&", "||", ";")


class MenuError(Exception):
    """A request refused: ``code`` (HTTP-like), ``error`` (a word), ``message``."""

    def __init__(self, code: int, error: str, message: str):
        super().__init__(message)
        self.code, self.error, self.message = code, error, message


def _bad(message: str) -> MenuError:
    return MenuError(400, "bad-field", message)


# -- values ----------------------------------------------------------------------------

def check_title(value, what="title") -> str:
    """A title shown by iPXE: printable text without what iPXE would run or expand."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TITLE:
        raise _bad(f"{what}: expected 1 to {MAX_TITLE} characters")
    if not value.isprintable():
        raise _bad(f"{what}: control characters (newline, tab, escape...) are not allowed")
    if value.strip().startswith("-"):
        raise _bad(f"{what}: must not start with '-' (iPXE would read an option)")
    if "${" in value:
        raise _bad(f"{what}: '${{' is not allowed (iPXE would expand it)")
    for token in value.split():
        if token in _TERMINATORS or token.startswith("#"):
            raise _bad(f"{what}: {token!r} as a word is not allowed (iPXE would end the "
                       "command there)")
    return value.strip()


def check_menu_name(value) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise _bad("menu name: 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                   "letter or digit")
    return value


def check_existing_name(value) -> str:
    """A menu name as found in the store: a shared menu or an entity copy."""
    if isinstance(value, str) and (NAME_RE.match(value) or COPY_NAME_RE.match(value)):
        return value
    raise MenuError(404, "not-found", "no such menu")


def check_timeout(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT:
        raise _bad(f"timeout: expected whole seconds from 0 (no menu shown) to {MAX_TIMEOUT}")
    return value


def check_label(value) -> str:
    if not isinstance(value, str) or not LABEL_RE.match(value):
        raise _bad("label: 1 to 32 lower-case letters, digits, '_' or '-'")
    return value


def check_mac(value) -> str:
    try:
        return normalise_mac(value) if isinstance(value, str) else normalise_mac("")
    except ValueError:
        raise _bad(f"mac: not a MAC address: {str(value)[:40]!r}") from None


def check_smbios_uuid(value) -> str:
    """The SMBIOS UUID iPXE sends as ``${uuid}``, lower case; "" when absent or a
    placeholder (all zeros, all ones), which identify nothing."""
    if value in (None, ""):
        return ""
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or not SMBIOS_UUID_RE.match(text):
        raise _bad(f"uuid: not an SMBIOS UUID: {str(value)[:40]!r}")
    return "" if text in PLACEHOLDER_UUIDS else text


def check_server(value) -> str:
    if not isinstance(value, str) or not SERVER_RE.match(value):
        raise _bad("server: the imaging server's name (letters, digits, '.', '_', '-')")
    return value


def check_machine_name(value) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.match(value):
        raise _bad("name: a host name of 1 to 63 letters, digits, '-' or '_', starting "
                   "with a letter or digit")
    return value


def automatic_name(mac: str) -> str:
    """The name of a machine registered without a keyboard: ``pc-525400123456``."""
    return "pc-" + mac.replace(":", "")


def check_url(value, what) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL or not _URL_RE.match(value) \
            or _has_iPXE_syntax(value):
        raise _bad(f"{what}: an http://, https:// or tftp:// URL without spaces, '$', "
                   "'|', ';', '#' or quotes ('{server}' stands for our address)")
    return value


def _has_iPXE_syntax(text: str) -> bool:
    braces = text.replace("{server}", "")
    return "&&" in text or "{" in braces or "}" in braces


def check_boot(value, what="boot") -> dict:
    """``{"chain": URL}`` or ``{"kernel": URL, "initrd": [URL...], "args": TEXT}``."""
    if not isinstance(value, dict):
        raise _bad(f"{what}: expected {{\"chain\": URL}} or {{\"kernel\": URL, "
                   "\"initrd\": [URL...], \"args\": TEXT}")
    unknown = set(value) - {"chain", "kernel", "initrd", "args"}
    if unknown:
        raise _bad(f"{what}: unknown field {sorted(unknown)[0]!r}")
    if "chain" in value:
        if set(value) != {"chain"}:
            raise _bad(f"{what}: 'chain' goes alone")
        return {"chain": check_url(value["chain"], f"{what}.chain")}
    if "kernel" not in value:
        raise _bad(f"{what}: 'chain' or 'kernel' is needed")
    initrd = value.get("initrd", [])
    if isinstance(initrd, str):
        initrd = [initrd]
    if not isinstance(initrd, list) or len(initrd) > MAX_INITRDS:
        raise _bad(f"{what}.initrd: a list of at most {MAX_INITRDS} URLs")
    args = value.get("args", "")
    if not isinstance(args, str) or len(args) > MAX_ARGS or \
            (args and (not _ARGS_RE.match(args) or _has_iPXE_syntax(args))):
        raise _bad(f"{what}.args: words of letters, digits and ._~:/=,+@%- separated by "
                   "single spaces")
    return {"kernel": check_url(value["kernel"], f"{what}.kernel"),
            "initrd": [check_url(u, f"{what}.initrd") for u in initrd], "args": args}


def check_flag(value, what) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{what}: expected true or false")
    return value


def make_item(fields: dict) -> dict:
    """A checked item from API/envelope fields (``kind``, ``service`` or ``boot``...)."""
    known = {"label", "kind", "service", "title", "boot", "default", "visible",
             "default_on_wol"}
    unknown = set(fields) - known
    if unknown:
        raise _bad(f"unknown item field {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
    kind = fields.get("kind", "service" if "service" in fields else "master")
    if kind not in KINDS:
        raise _bad(f"kind: one of {', '.join(KINDS)}")
    item = {"label": "", "kind": kind, "service": "", "boot": {},
            "default": check_flag(fields.get("default", False), "default"),
            "visible": check_flag(fields.get("visible", True), "visible"),
            "default_on_wol": check_flag(fields.get("default_on_wol", False), "default_on_wol")}
    if kind == "service":
        service = fields.get("service")
        if service not in SERVICES:
            raise _bad(f"service: one of {', '.join(SERVICES)}")
        item["service"] = service
        if service in SERVICES_WITH_BOOT:
            item["boot"] = check_boot(fields.get("boot"), "boot")
        elif fields.get("boot"):
            raise _bad(f"boot: the {service} service takes none")
        item["title"] = check_title(fields.get("title") or _SERVICE_TITLES[service])
        item["label"] = check_label(fields.get("label") or service)
    else:
        if "service" in fields:
            raise _bad("service: a master item has none")
        item["boot"] = check_boot(fields.get("boot"), "boot")
        item["title"] = check_title(fields.get("title"))
        item["label"] = check_label(fields.get("label") or _label_from(item["title"]))
    return item


def _label_from(title: str) -> str:
    label = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:32].strip("-")
    return label or "master"


_SERVICE_TITLES = {
    "continue": "Boot from the local disk",
    "backup": "Backup this machine's disk",
    "register": "Register this machine with Medulla",
    "register-ask": "Register this machine, choosing its name",
    "reboot": "Restart",
    "poweroff": "Power off",
}


# -- menus -----------------------------------------------------------------------------

def is_service(item: dict) -> bool:
    return item["kind"] == "service"


def check_menu(menu: dict) -> None:
    """The rules a stored menu keeps: at least one visible service (the seeds' known bug:
    a menu without one broke booting), unique labels, a visible default."""
    items = menu["items"]
    if not any(is_service(i) and i["visible"] for i in items):
        raise MenuError(409, "last-service",
                        f"menu {menu['name']!r} must keep at least one visible service "
                        "(continue boots the local disk): this change would leave none")
    if len(items) > MAX_ITEMS:
        raise MenuError(409, "too-many-items", f"a menu holds at most {MAX_ITEMS} items")
    labels = [i["label"] for i in items]
    if len(set(labels)) != len(labels):
        raise MenuError(409, "duplicate-label", "two items of the menu have the same label")
    for flag in ("default", "default_on_wol"):
        if any(i[flag] and not i["visible"] for i in items):
            raise MenuError(409, "hidden-default",
                            f"the {flag.replace('_', '-')} item must be visible")


def set_exclusive(items: list, index: int, flag: str) -> None:
    """One default (and one default-on-WOL) per menu: setting it on one item clears it
    on the others."""
    for i, item in enumerate(items):
        if i != index:
            item[flag] = False


def default_item(menu: dict, wol: bool = False) -> dict | None:
    """The item taken after the timeout: the flagged one, else the first visible
    ``continue``, else the first visible item."""
    visible = [i for i in menu["items"] if i["visible"]]
    for flag in (("default_on_wol", "default") if wol else ("default",)):
        for item in visible:
            if item[flag]:
                return item
    for item in visible:
        if item["kind"] == "service" and item["service"] == "continue":
            return item
    return visible[0] if visible else None


def copy_name(kind: str, target: str) -> str:
    """The name of an entity's own menu: a copy, so later changes elsewhere never reach
    it (the seeds: changes to the default menu need a "reset" of the entity's menus)."""
    return f"{kind}:{target}"


def check_target(kind, target) -> str:
    """The normalised target of an assignment of ``kind``."""
    if kind not in ASSIGNMENT_KINDS:
        raise _bad(f"kind: one of {', '.join(ASSIGNMENT_KINDS)}")
    if kind == "mac":
        return check_mac(target)
    if kind == "uuid":
        uuid = check_smbios_uuid(target)
        if not uuid:
            raise _bad("uuid: a placeholder UUID identifies no machine")
        return uuid
    if kind == "group":
        if not isinstance(target, str) or not NAME_RE.match(target):
            raise _bad("group: 1 to 64 letters, digits, '.', '_' or '-'")
        return target
    if kind == "server":
        return check_server(target)
    return ""  # registration: one for the whole installation


def decide(*, own: str | None, groups: list[tuple[str, str]], machine_known: bool,
           mac_usable: bool, server_menu: str | None, registration_menu: str | None):
    """Which menu, and why: ``(menu name, reason)``.

    ``own``: the menu assigned to this MAC or UUID; ``groups``: (group, menu) of the
    machine's groups that have one, by group name; ``machine_known``: the MAC or UUID
    belongs to a machine of the store; ``mac_usable``: the MAC is not blacklisted (a
    blacklisted MAC cannot be registered, so it gets the default menu, never the
    registration one).
    """
    if own:
        return own, "own"
    if groups:
        return groups[0][1], "group"
    if not machine_known and mac_usable and registration_menu:
        return registration_menu, "registration"
    return server_menu or DEFAULT_MENU, "default"
