"""Boot menus on the master over a real SQLite store (threaded=False) and a task.Clock:
resolution (own > group > default > registration), the last-service rule, copies and
reset, PXE registration and the agent that later enrols with the same MAC, the
pxe.menu / pxe.register envelopes and what they refuse."""

import itertools

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core import envelope as env
from medulla_appliance.core.store import Store
from medulla_appliance.core.xmpp.channel import Refusal
from medulla_appliance.master import storage
from medulla_appliance.master.logic.pxe_menus import MenuError
from medulla_appliance.master.pxe_menus import PXEMenus
from medulla_appliance.master.registry import Registry
from medulla_appliance.master.relays import Origin
from tests.unit.deferreds import failure_of, result_of
from tests.unit.test_registry import Agent, register

MAC = "52:54:00:12:34:56"
OTHER = "52:54:00:99:88:77"
FORTINET = "00:09:0f:aa:00:01"
SMBIOS = "4c4c4544-0057-3210-8053-c4c04f4b5132"
PXE_HOST = JID("master@medulla.example/pxe")


@pytest.fixture
def setup(tmp_path):
    clock = Clock()
    clock.advance(1_763_820_000)
    store = Store("sqlite:" + str(tmp_path / "m.sqlite"), storage.MIGRATIONS, threaded=False)
    counter = itertools.count(1)
    registry = Registry(store, clock, ["00:00:00:00:00:00", FORTINET],
                        new_uuid=lambda: "m-%d" % next(counter))
    result_of(registry.load())

    def origin_of(sender):
        if sender.userhost() == "master@medulla.example":
            return Origin("master", master_host=True)
        if sender.userhost() == "relay-lyon@medulla.example":
            return Origin("lyon")
        return None
    menus = PXEMenus(store, clock, registry, origin_of)
    yield menus, registry, store
    store.close()


def ask(menus, mac=MAC, uuid="", server="master", sender=PXE_HOST):
    envelope = env.Envelope.new("pxe.menu", {"mac": mac, "uuid": uuid, "server": server},
                                now=1_763_820_000)
    return menus.on_menu(sender, envelope)


def menu_of(menus, **kwargs):
    answer = result_of(ask(menus, **kwargs))
    return answer["menu"]["name"], answer["reason"]


def register_pxe(menus, mac=MAC, uuid=SMBIOS, name="lab-pc-1", server="master",
                 sender=PXE_HOST):
    envelope = env.Envelope.new("pxe.register", {"mac": mac, "uuid": uuid, "name": name,
                                                 "server": server}, now=1_763_820_000)
    return menus.on_register(sender, envelope)


def test_an_unknown_mac_gets_the_registration_menu_whose_default_registers(setup):
    menus, _, _ = setup
    answer = result_of(ask(menus))
    assert (answer["reason"], answer["menu"]["name"], answer["machine"]) == \
        ("registration", "registration", None)
    first = answer["menu"]["items"][0]
    assert (first["service"], first["default"], first["visible"]) == ("register", True, True)


def test_resolution_is_own_then_group_then_default(setup):
    menus, _, store = setup
    machine = result_of(register_pxe(menus))["machine"]
    assert menu_of(menus) == ("default", "default")
    result_of(menus.create_menu("lab", "Lab menu"))
    store.run(lambda c: c.execute("INSERT INTO machine_groups (name, uuid) VALUES (?, ?)",
                                  ("lab", machine["uuid"])))
    result_of(menus.assign("group", "lab", "lab"))
    assert menu_of(menus) == ("group:lab", "group")
    result_of(menus.create_menu("mine", "Mine"))
    result_of(menus.assign("mac", MAC, "mine"))
    assert menu_of(menus) == ("mac:" + MAC, "own")
    result_of(menus.unassign("mac", MAC))
    assert menu_of(menus) == ("group:lab", "group")
    result_of(menus.unassign("group", "lab"))
    assert menu_of(menus) == ("default", "default")


def test_an_own_menu_by_smbios_uuid_wins_for_an_unknown_mac(setup):
    menus, _, _ = setup
    result_of(menus.create_menu("byuuid", "By UUID"))
    result_of(menus.assign("uuid", SMBIOS.upper(), "byuuid"))
    assert menu_of(menus, mac=OTHER, uuid=SMBIOS) == ("uuid:" + SMBIOS, "own")
    # A placeholder UUID identifies nothing: the same call without it is unknown.
    assert menu_of(menus, mac=OTHER, uuid="00000000-0000-0000-0000-000000000000") == \
        ("registration", "registration")


def test_each_imaging_server_gets_its_default_menu(setup):
    menus, _, _ = setup
    result_of(register_pxe(menus))
    result_of(menus.create_menu("lyon-default", "Lyon"))
    result_of(menus.assign("server", "lyon", "lyon-default"))
    lyon = JID("relay-lyon@medulla.example/pxe")
    assert menu_of(menus, server="lyon", sender=lyon) == ("lyon-default", "default")
    assert menu_of(menus) == ("default", "default")
    # A relay speaks for its own site only.
    refused = failure_of(ask(menus, server="master", sender=lyon))
    assert (refused.code, refused.error) == (403, "server-mismatch")


def test_a_blacklisted_mac_gets_the_default_menu_and_cannot_register(setup):
    menus, _, _ = setup
    assert menu_of(menus, mac=FORTINET) == ("default", "default")
    refused = failure_of(register_pxe(menus, mac=FORTINET, uuid=""))
    assert isinstance(refused, Refusal) and (refused.code, refused.error) == \
        (403, "blacklisted-mac")


def test_the_last_visible_service_cannot_be_removed_or_hidden(setup):
    menus, _, _ = setup
    result_of(menus.create_menu("one", "One"))  # one 'continue' item
    result_of(menus.add_item("one", {"kind": "master", "title": "Windows 11",
                                     "boot": {"chain": "http://{server}/images/w11.ipxe"}}))
    error = failure_of(menus.remove_item("one", "continue"))
    assert (error.code, error.error) == (409, "last-service")
    error = failure_of(menus.set_item("one", "continue", {"visible": False}))
    assert error.error in ("last-service", "hidden-default")
    assert [i["label"] for i in result_of(menus.show_menu("one"))["items"]] == \
        ["continue", "windows-11"]
    # With a second service, the first one may go.
    result_of(menus.add_item("one", {"service": "reboot"}))
    remaining = result_of(menus.remove_item("one", "continue"))["items"]
    assert [i["label"] for i in remaining] == ["windows-11", "reboot"]


def test_own_menus_are_copies_and_reset_copies_again(setup):
    menus, _, _ = setup
    result_of(menus.assign("mac", MAC, "default"))
    result_of(menus.add_item("default", {"service": "reboot"}))
    assert [i["label"] for i in result_of(menus.show_menu("mac:" + MAC))["items"]] == \
        ["continue", "backup"]
    reset = result_of(menus.reset("mac", MAC))
    assert [i["label"] for i in reset["items"]] == ["continue", "backup", "reboot"]
    result_of(menus.set_menu("default", {"timeout": 3}))
    assert result_of(menus.reset_from("default")) == {"reset": ["mac:" + MAC]}
    assert result_of(menus.show_menu("mac:" + MAC))["timeout"] == 3
    # Editing the copy leaves the default alone.
    result_of(menus.set_menu("mac:" + MAC, {"title": "Only this PC"}))
    assert result_of(menus.show_menu("default"))["title"] == "Medulla boot menu"


def test_items_move_and_one_default_at_a_time(setup):
    menus, _, _ = setup
    result_of(menus.add_item("default", {"service": "poweroff", "default": True},
                             position=1))
    menu = result_of(menus.move_item("default", "continue", 3))
    assert [i["label"] for i in menu["items"]] == ["poweroff", "backup", "continue"]
    assert [i["label"] for i in menu["items"] if i["default"]] == ["poweroff"]
    error = failure_of(menus.move_item("default", "continue", 9))
    assert error.code == 400


@pytest.mark.parametrize("title", [
    "Evil\n:medulla_local\nshell", "Evil ${net0/ip}", "Evil && shell", "Evil || reboot",
    "Evil ; shell", "Evil #comment", "--delete", "x" * 65, ""])
def test_titles_iPXE_would_run_or_expand_are_refused(setup, title):
    menus, _, _ = setup
    error = failure_of(menus.set_menu("default", {"title": title}))
    assert isinstance(error, MenuError) and error.code == 400


@pytest.mark.parametrize("boot", [
    {"chain": "http://x/a b"}, {"chain": "http://x/${uuid}"}, {"chain": "file:///etc/passwd"},
    {"chain": "http://x/a&&reboot"}, {"kernel": "http://x/k", "args": "quiet ; shell"},
    {"kernel": "http://x/k", "args": "a\nshell"}, {"chain": "http://x/{other}"}, {}])
def test_boot_definitions_with_iPXE_syntax_are_refused(setup, boot):
    menus, _, _ = setup
    error = failure_of(defer.maybeDeferred(menus.add_item, "default", {
        "kind": "master", "title": "Bad", "boot": boot}))
    assert error.code == 400


def test_pxe_registration_then_the_agent_enrols_as_the_same_machine(setup):
    menus, registry, _ = setup
    answer = result_of(register_pxe(menus, mac=MAC.upper(), uuid=SMBIOS.upper()))
    assert answer == {"machine": {"uuid": "m-1", "hostname": "lab-pc-1"}, "created": True}
    listed = result_of(registry.list_machines())
    assert [(m["hostname"], m["jid"], m["online"]) for m in listed] == \
        [("lab-pc-1", "", False)]
    # Asking again (a reboot before the menu changed) answers the same machine.
    assert result_of(register_pxe(menus, name="other-name"))["created"] is False
    history = result_of(registry.machine_history("m-1"))
    assert history[0]["event"] == "registered" and "not yet imaged" in history[0]["detail"]
    # The imaged workstation's agent enrols with that MAC: same machine, renamed.
    uid = register(registry, Agent("WS-LAB1", [MAC], "newkey"))
    assert uid == "m-1"
    listed = result_of(registry.list_machines())
    assert [(m["hostname"], m["online"]) for m in listed] == [("WS-LAB1", True)]
    assert menu_of(menus) == ("default", "default")


@pytest.mark.parametrize("data, field", [
    ({"mac": "52:54:00:12:34", "uuid": "", "name": "pc1"}, "mac"),
    ({"mac": MAC, "uuid": "not-a-uuid", "name": "pc1"}, "uuid"),
    ({"mac": MAC, "uuid": "", "name": "bad name"}, "name"),
    ({"mac": MAC, "uuid": "", "name": "a" * 64}, "name"),
    ({"mac": MAC, "uuid": "", "name": "-pc"}, "name"),
    ({"mac": MAC, "uuid": "", "name": "pc1", "server": "x y"}, "server"),
    ({"mac": ["list"], "uuid": "", "name": "pc1"}, "mac"),
])
def test_bad_registrations_are_refused_with_400(setup, data, field):
    menus, registry, _ = setup
    envelope = env.Envelope.new("pxe.register", {"server": "master", **data},
                                now=1_763_820_000)
    refused = failure_of(menus.on_register(PXE_HOST, envelope))
    assert refused.code == 400 and refused.message.startswith(field)
    assert result_of(registry.list_machines()) == []


def test_a_name_already_used_is_refused(setup):
    menus, _, _ = setup
    result_of(register_pxe(menus))
    refused = failure_of(register_pxe(menus, mac=OTHER, uuid="", name="LAB-PC-1"))
    assert (refused.code, refused.error) == (409, "name-taken")


def test_the_registration_menu_stays_and_assigned_menus_cannot_be_deleted(setup):
    menus, _, _ = setup
    error = failure_of(defer.maybeDeferred(menus.unassign, "registration", ""))
    assert error.code == 409
    error = failure_of(menus.delete_menu("registration"))
    assert (error.code, error.error) == (409, "in-use")
    result_of(menus.create_menu("spare", "Spare"))
    assert result_of(menus.delete_menu("spare"))["name"] == "spare"
    assert failure_of(menus.show_menu("spare")).code == 404
