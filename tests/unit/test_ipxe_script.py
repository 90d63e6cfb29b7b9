"""The boot-menu script as the iPXE ROMs in the field read it: Debian 12's
(1.0.0+git-20190125) found both bugs these tests pin down, in the real network boot of
tests/integration/test_network_boot.py.

1. iPXE before 2020 takes everything up to a URI's first ':' as its scheme. The
   registration items chain to a path on our server, so a MAC with colons in its query
   made "/medulla/register?mac=52" a scheme: "Could not start download: Operation not
   supported", and no machine ever registered.
2. A chained script that returns (ours after registering, once it tried the local disk)
   let the menu run on into the next label: the next item, a name prompt that waited
   for a keyboard forever.
"""

import re
from urllib.parse import parse_qs, urlsplit

from medulla_appliance.pxe import ipxe_script

MAC = "52:54:00:12:34:56"
SMBIOS = "4c4c4544-0057-3210-8053-c4c04f4b5132"


def item(label, service=None, boot=None, default=False):
    return {"label": label, "kind": "service" if service else "master",
            "service": service or "", "title": label, "boot": boot or {},
            "default": default, "visible": True, "default_on_wol": False}


# One item of every kind the renderer knows.
EVERY_KIND = {"name": "all", "title": "All", "timeout": 3, "items": [
    item("register", "register", default=True), item("ask", "register-ask"),
    item("continue", "continue"), item("reboot", "reboot"), item("poweroff", "poweroff"),
    item("script", boot={"chain": "http://{server}/images/debian12.ipxe"}),
    item("backup", "backup", boot={"kernel": "http://{server}/davos/vmlinuz",
                                   "initrd": ["http://{server}/davos/initrd.img"],
                                   "args": ""}),
    item("odd", "no-such-service")]}
# What may end an item's lines: an unconditional jump, or a command that only returns
# when it failed, with its failure path.
ENDS_AN_ITEM = re.compile(r"(goto \S+|exit( \d+)?|(reboot|poweroff|boot) \|\| goto \S+)")


def render():
    return ipxe_script.render_menu(EVERY_KIND, mac=MAC, uuid=SMBIOS, server="192.0.2.1")


def scheme_as_old_ipxe_sees_it(uri):
    """parse_uri of iPXE 1.0.0+git-20190125: the text before the first ':', unless it is
    a single character (a DOS drive letter); None for a relative URI."""
    colon = uri.find(":")
    return uri[:colon] if colon > 1 else None


def chained_uris(script):
    """What iPXE parses for each ``chain``: the URI once its settings are expanded (a
    ``:uristring`` setting is URI-encoded, so it adds no ':'; here a DHCP host name)."""
    return [re.sub(r"\$\{[^}]*\}", "lab-pc-1", line.split()[1])
            for line in script.splitlines() if line.startswith("chain ")]


def test_registration_uris_stay_paths_on_our_server_for_old_ipxe():
    uris = chained_uris(render())
    register = [u for u in uris if u.startswith("/medulla/register?")]
    assert len(register) == 2                       # register and register-ask
    for uri in register:
        assert scheme_as_old_ipxe_sees_it(uri) is None, uri
        query = parse_qs(urlsplit(uri).query, keep_blank_values=True)
        assert query["mac"] == [MAC] and query["uuid"] == [SMBIOS]  # what our server reads
    # A master's absolute URL keeps its scheme.
    assert [scheme_as_old_ipxe_sees_it(u) for u in uris if u not in register] == ["http"]


def test_no_item_runs_on_into_the_next_label():
    blocks, label = {}, None
    for line in render().splitlines():
        if line.startswith(":"):
            label = line[1:]
            blocks[label] = []
        elif label is not None:
            blocks[label].append(line)
    items = {name: lines for name, lines in blocks.items() if re.fullmatch(r"i\d+(_failed)?",
                                                                            name)}
    assert len([name for name in items if "_" not in name]) == len(EVERY_KIND["items"])
    for name, lines in items.items():
        assert ENDS_AN_ITEM.fullmatch(lines[-1]), (name, lines)
    # The registration item: after our script came back, the menu ends.
    assert blocks["i1"][-2:] == [
        "chain /medulla/register?mac=52%3A54%3A00%3A12%3A34%3A56&uuid=" + SMBIOS
        + "&auto=1&name=${hostname:uristring} || goto medulla_local", "exit 0"]
