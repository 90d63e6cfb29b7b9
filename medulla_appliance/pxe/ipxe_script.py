"""iPXE scripts for boot menus, registrations and refusals: pure functions, no I/O.

iPXE reads a script line by line; on each line it expands ``${...}``, splits on
whitespace (no quoting) and ends a command at a word ``&&``, ``||``, ``;`` or a word
starting with ``#``; a line starting with ``:`` is a label. So every text that comes from
data (menu and item titles, machine names) goes through :func:`ipxe_text`, which turns
control characters and newlines into spaces, ``${`` into ``?{`` and those words into
question marks: a title cannot add a line, a label, a command or an expansion. Item
labels in the script are ours (``i1``, ``i2``...), never the stored ones, and URLs are
checked again with the master's own rules before they are written.

``continue`` (boot the local disk) is ``exit`` on UEFI, where the firmware then boots the
next entry of its boot order, and ``sanboot --no-describe --drive 0x80`` on BIOS, where
many PXE ROMs do not fall through to the disk after an exit; if that fails too, exit.
"""

from __future__ import annotations

import unicodedata

from ..master.logic.pxe_menus import MenuError, check_boot, default_item

MAX_TEXT = 80
LOCAL_BOOT = """:medulla_local
iseq ${platform} efi && exit 0 ||
sanboot --no-describe --drive 0x80 || exit 0
"""
#: Served when the master cannot be reached and nothing is cached: boot the disk.
FALLBACK_MENU = {
    "name": "built-in", "title": "Medulla: master unreachable", "timeout": 5,
    "items": [{"label": "continue", "kind": "service", "service": "continue",
               "title": "Boot from the local disk", "boot": {}, "default": True,
               "visible": True, "default_on_wol": True}],
}
_TERMINATORS = ("&&", "||", ";")


def ipxe_text(value, limit: int = MAX_TEXT) -> str:
    """``value`` as words iPXE shows and never runs (see the module docstring)."""
    text = unicodedata.normalize("NFKD", str(value))
    chars = []
    for char in text:
        if unicodedata.combining(char):
            continue  # "Démarrer" -> "Demarrer": the iPXE console is ASCII
        chars.append(char if " " <= char <= "~" else " " if char.isspace() or
                     unicodedata.category(char).startswith("C") else "?")
    words = []
    for word in "".join(chars).replace("${", "?{").split():
        if word in _TERMINATORS:
            word = "?" * len(word)
        elif word[0] in "#-" and not words:
            word = "?" + word[1:]  # a leading '-' would be an option of menu/echo
        elif word[0] == "#":
            word = "?" + word[1:]
        words.append(word)
    return " ".join(words)[:limit] or "?"


def _url(template: str, server: str) -> str:
    return template.replace("{server}", server)


def _boot_lines(label: str, item: dict, server: str) -> list[str]:
    failed = f"goto {label}_failed"
    try:
        boot = check_boot(item.get("boot"))
    except MenuError:
        return [f"echo medulla-pxe: {ipxe_text(item.get('title'))} has a boot definition "
                "medulla-pxe refuses", failed]
    if "chain" in boot:  # a script that returns ends the menu (see _item_lines)
        return [f"chain {_url(boot['chain'], server)} || {failed}", "exit 0"]
    kernel = f"kernel {_url(boot['kernel'], server)}"
    if boot["args"]:
        kernel += " " + _url(boot["args"], server)
    lines = [f"{kernel} || {failed}"]
    lines += [f"initrd {_url(u, server)} || {failed}" for u in boot["initrd"]]
    return lines + [f"boot || {failed}"]


def _register_query(mac: str, uuid: str) -> str:
    # The MAC's colons go as %3A: iPXE before 2020 (Debian 12's ROMs) takes everything up
    # to a URI's first ':' as its scheme, so "/medulla/register?mac=52:54..." would be an
    # unknown scheme ("Operation not supported") instead of a path on our server.
    return f"/medulla/register?mac={mac.replace(':', '%3A')}&uuid={uuid}"


def _item_lines(label: str, item: dict, *, mac: str, uuid: str, server: str) -> list[str]:
    lines = [f":{label}"]
    service = item.get("service") if item.get("kind") == "service" else None
    query = _register_query(mac, uuid)
    if service == "continue":
        return lines + ["goto medulla_local"]
    if service in ("reboot", "poweroff"):
        return lines + [f"{service} || goto medulla_local"]
    # A chained script that returns (ours after a registration, having tried the local
    # disk; a master's .ipxe) ends the menu with "exit 0": the next line is the next
    # label, and iPXE would run on into it (a name prompt, a "cannot boot" message).
    if service == "register":
        # No keyboard needed: the DHCP host name if there is one, else the server names it.
        return lines + [f"chain {query}&auto=1&name=${{hostname:uristring}} "
                        "|| goto medulla_local", "exit 0"]
    if service == "register-ask":
        return lines + ["echo -n Name of this machine (letters, digits, -):",
                        "read medulla_name || goto medulla_menu",
                        f"chain {query}&name=${{medulla_name:uristring}} || goto medulla_local",
                        "exit 0"]
    if service is not None and service != "backup":
        return lines + [f"echo medulla-pxe: unknown service {ipxe_text(service)}",
                        "goto medulla_local"]
    title = ipxe_text(item.get("title"))
    return lines + _boot_lines(label, item, server) + [
        f":{label}_failed", f"echo medulla-pxe: cannot boot {title}; booting the local disk",
        "sleep 5", "goto medulla_local"]


def render_menu(menu: dict, *, mac: str, uuid: str, server: str, wol: bool = False,
                why: str = "") -> str:
    """The boot menu script: visible items in order, the default taken after the
    timeout (``timeout`` 0: at once, no menu shown)."""
    items = list(menu["items"])
    labels = {id(item): f"i{n}" for n, item in enumerate(items, 1)}
    default = default_item(menu, wol)
    target = labels[id(default)] if default is not None else "medulla_local"
    lines = ["#!ipxe",
             f"# medulla-pxe: menu {ipxe_text(menu.get('name'))} for {mac} ({ipxe_text(why)})",
             ":medulla_menu"]
    visible = [item for item in items if item.get("visible")]
    timeout = int(menu.get("timeout") or 0)
    if timeout > 0 and visible:
        lines.append(f"menu {ipxe_text(menu.get('title'))}")
        lines += [f"item {labels[id(item)]} {ipxe_text(item.get('title'))}" for item in visible]
        lines += [f"choose --timeout {timeout * 1000} --default {target} medulla_choice "
                  "|| goto medulla_menu", "goto ${medulla_choice}"]
    else:
        lines.append(f"goto {target}")
    for item in items:
        lines += _item_lines(labels[id(item)], item, mac=mac, uuid=uuid, server=server)
    return "\n".join(lines) + "\n" + LOCAL_BOOT


def render_registered(name: str, machine_uuid: str, created: bool) -> str:
    """After ``/medulla/register``: say so, then boot on."""
    what = "registered with Medulla as" if created else "already known to Medulla as"
    return "\n".join(["#!ipxe", f"echo This machine is {what} {ipxe_text(name)} "
                      f"({ipxe_text(machine_uuid)}); booting on.", "sleep 3",
                      "goto medulla_local"]) + "\n" + LOCAL_BOOT


def render_message(message: str, pause: int = 5) -> str:
    """A refusal or failure: show ``message``, then boot on (never leave a workstation
    waiting at a prompt)."""
    return "\n".join(["#!ipxe", f"echo medulla-pxe: {ipxe_text(message, 200)}",
                      f"sleep {int(pause)}", "goto medulla_local"]) + "\n" + LOCAL_BOOT
