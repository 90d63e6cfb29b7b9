"""A real PXE boot: qemu's iPXE ROM, dnsmasq as the site's DHCP server, medulla-pxe.

Each test builds two network namespaces (``testing.netboot.NetbootLab``): the site host
with a bridge, the VM's tap and medulla-pxe on 192.0.2.2, and the DHCP host with dnsmasq
on 192.0.2.1. qemu boots (software emulation, no disk) from Debian's iPXE NIC ROM. What
happened is read back from the logs of our own processes, step by step: the address from
dnsmasq, the boot instructions (from our proxyDHCP, or from dnsmasq's options 66/67), the
TFTP read of ``autoexec.ipxe`` from medulla-pxe, and the GET of the boot menu it chains to.
Everything is stopped by PID and the namespaces deleted, pass or fail.

The last test adds prosody and the real medulla-master on this host's loopback, as every
other integration test runs them, and one veth pair (the lab's uplink) from this host to
the site host, where prosody also listens: medulla-pxe stays on the site host as a PXE
server is, its XMPP link crosses the uplink, and the test, the master's API and medullactl
keep to loopback. Running prosody and the master inside the namespace instead would need
``ip netns exec`` in the XMPP and appliance harnesses' starts, readiness probes and API
calls; the uplink needs one more listen address in prosody's configuration.
"""

import json
import re

import pytest

from medulla_appliance.testing import netboot
from medulla_appliance.testing.appliance import Appliance
from medulla_appliance.testing.netboot import SITE_ADDRESS, NetbootLab, read, wait_for
from medulla_appliance.testing.ports import LOOPBACK
from medulla_appliance.testing.xmppserver import make_server

pytestmark = pytest.mark.integration

VM_MAC = "52:54:00:4d:ed:01"
OTHER_MAC = "52:54:00:4d:ed:99"
VM_UUID = "4c4c4544-0057-3210-8053-c4c04f4b5132"
BOOT_TIMEOUT = 60          # seconds; a boot takes about 6 s here, more on a loaded machine
DOMAIN = "medulla.test"
# What the master names a machine that registers with no DHCP host name (dnsmasq here
# sends none): "pc-" and the MAC's digits.
AUTOMATIC_NAME = "pc-" + VM_MAC.replace(":", "")
# The FAQ's classic setup: the site's DHCP server names our TFTP server and the file.
OPTIONS_66_67 = ["--dhcp-userclass=set:ipxe,iPXE",
                 "--dhcp-option=66,%s" % SITE_ADDRESS,
                 "--dhcp-boot=tag:ipxe,autoexec.ipxe,,%s" % SITE_ADDRESS,
                 "--dhcp-boot=tag:!ipxe,undionly.kpxe,,%s" % SITE_ADDRESS]


@pytest.fixture
def lab(tmp_path):
    missing = netboot.missing_tools()
    assert not missing, "network-boot test needs %s: run scripts/install-deps" % missing
    with NetbootLab(tmp_path / "lab") as lab:
        yield lab


@pytest.fixture
def master(lab, ca, tmp_path):
    """prosody and medulla-master on this host's loopback, prosody also on the lab's
    uplink; yields the Appliance and the address medulla-pxe reaches prosody at."""
    here, _site_end = lab.add_uplink()
    server = make_server("prosody", tmp_path / "prosody", DOMAIN, ca,
                         interfaces=(LOOPBACK, here))
    server.start()
    app = None
    try:
        app = Appliance(tmp_path / "app", server)
        app.start_master()
        yield app, here
    finally:
        if app is not None:
            app.stop_master()
        server.close()


def start_pxe(lab, proxydhcp=None, menu_url="http://{server}/medulla/bootmenu", link=None):
    """medulla-pxe on 192.0.2.2: TFTP, its boot-menu HTTP endpoint on port 80 and, when
    asked, proxyDHCP. Menus come from the master when ``link`` gives its ``[xmpp]`` and
    ``[keys]`` (then it is ready once logged in), else from its built-in menu."""
    tftp_root = lab.workdir / "tftpboot"
    tftp_root.mkdir()
    sections = {"global": {"log_level": "DEBUG"},
                "tftp": {"listen": "udp:69:interface=0.0.0.0", "root": tftp_root,
                         "verbose": "yes", "menu_url": menu_url},
                "http": {"listen": "tcp:80:interface=%s" % SITE_ADDRESS}}
    ready = ["TFTP listening on", "boot menus on http %s port 80" % SITE_ADDRESS]
    if proxydhcp is not None:
        sections["proxydhcp"] = {"enabled": "yes", "interface": "br0", **proxydhcp}
        ready.append("proxyDHCP answering on br0 udp 67 and 4011")
    if link is not None:
        sections.update(link)
        ready.append("XMPP session up as %s" % link["xmpp"]["jid"])
    return lab.start_medulla_pxe(sections, ready)


def menu_request(log, mac=VM_MAC):
    """(client address, UUID, outcome) of medulla-pxe's access line for the menu GET."""
    match = re.search(r"HTTP ([0-9.]+):\d+ GET /medulla/bootmenu mac=%s uuid=(\S+): 200 (.*)"
                      % re.escape(mac), read(log))
    return match and match.groups()


def assert_booted_from_our_tftp_and_got_its_menu(pxe_log, dnsmasq_log, console):
    logs = [pxe_log, dnsmasq_log, console]
    peer, uuid, outcome = wait_for("iPXE's GET of the boot menu",
                                   lambda: menu_request(pxe_log), BOOT_TIMEOUT, logs)
    # 1. the address came from the site's DHCP server
    address = netboot.dhcp_lease(read(dnsmasq_log), VM_MAC)
    assert address and address.startswith("192.0.2."), read(dnsmasq_log)
    # 2. (checked by each test: who told it next-server and file)
    # 3. medulla-pxe served the script to that address
    pxe = read(pxe_log)
    assert "RRQ from %s filename autoexec.ipxe" % address in pxe
    assert re.search(r"sent autoexec\.ipxe to %s: \d+ bytes" % re.escape(address), pxe)
    # 4. iPXE ran it: the menu GET came from that address with its MAC and SMBIOS UUID,
    #    and medulla-pxe answered with a menu (its built-in one: no master in this test)
    assert (peer, uuid) == (address, VM_UUID), (peer, uuid)
    assert outcome.startswith("menu "), outcome
    screen = read(console)
    assert "Next server: %s" % SITE_ADDRESS in screen
    assert re.search(r"autoexec\.ipxe : \d+ bytes \[script\]", screen)
    return address


def test_ipxe_boots_with_our_proxydhcp_beside_an_address_only_dhcp_server(lab):
    dnsmasq_log = lab.start_dnsmasq()                      # addresses only, no boot options
    pxe_log = start_pxe(lab, {"allowed_macs": VM_MAC.replace(":", "\\:")})  # as Medulla writes
    console = lab.boot_vm(VM_MAC, VM_UUID)
    address = assert_booted_from_our_tftp_and_got_its_menu(pxe_log, dnsmasq_log, console)
    # 2. next-server and file came from us: dnsmasq sent no option 66/67 and named itself
    #    as next server, yet iPXE used ours (checked on its console above) and our offer
    #    is in our log, before the TFTP read
    dhcp = read(dnsmasq_log)
    assert not re.search(r"sent size: *\d+ option: 6[67] ", dhcp), dhcp
    assert "next server: %s" % netboot.DHCP_ADDRESS in dhcp
    pxe = read(pxe_log)
    assert re.search(r"proxyDHCP DHCPOFFER to %s \(iPXE, from [0-9.]+\): next-server %s "
                     r"file autoexec\.ipxe" % (VM_MAC, SITE_ADDRESS), pxe), pxe
    assert pxe.index("proxyDHCP DHCPOFFER") < pxe.index("RRQ from %s" % address)


def test_ipxe_boots_with_dnsmasq_options_66_and_67_alone(lab):
    """The classic setup of the FAQ: the DHCP server names our TFTP server (option 66,
    next-server) and the file (67) for iPXE; medulla-pxe runs no proxyDHCP."""
    dnsmasq_log = lab.start_dnsmasq(OPTIONS_66_67)
    pxe_log = start_pxe(lab)
    console = lab.boot_vm(VM_MAC, VM_UUID)
    assert_booted_from_our_tftp_and_got_its_menu(pxe_log, dnsmasq_log, console)
    dhcp = read(dnsmasq_log)
    assert re.search(r"option: 67 bootfile-name\s+autoexec\.ipxe", dhcp), dhcp
    assert re.search(r"option: 66 tftp-server\s+%s" % SITE_ADDRESS, dhcp), dhcp
    assert "proxyDHCP" not in read(pxe_log)


def test_a_mac_not_allowed_gets_nothing_from_our_proxydhcp(lab):
    dnsmasq_log = lab.start_dnsmasq()
    pxe_log = start_pxe(lab, {"allowed_macs": OTHER_MAC})
    console = lab.boot_vm(VM_MAC, VM_UUID)
    logs = [pxe_log, dnsmasq_log, console]
    wait_for("our log line refusing the VM", lambda: "not-allowed: MAC %s is not in "
             "allowed_macs" % VM_MAC in read(pxe_log), BOOT_TIMEOUT, logs)
    # iPXE got its address, found no boot file from anyone, and gave up on the network.
    wait_for("iPXE to give up", lambda: "No more network devices" in read(console),
             BOOT_TIMEOUT, logs)
    assert netboot.dhcp_lease(read(dnsmasq_log), VM_MAC)
    pxe = read(pxe_log)
    assert "DHCPOFFER" not in pxe and "RRQ from" not in pxe
    assert pxe.count("not-allowed: MAC %s" % VM_MAC) == 1      # however often it asked
    assert "Next server: %s" % SITE_ADDRESS not in read(console)

def test_an_unknown_vm_registers_through_the_master_then_boots_the_menu_it_was_given(
        lab, master):
    app, xmpp_address = master
    # The registration menu takes its default (register, automatic name) after 1 s, not 10.
    done = app.ctl("pxe", "menu", "set", "registration", "--timeout", "1")
    assert done.returncode == 0, done.stderr
    dnsmasq_log = lab.start_dnsmasq(OPTIONS_66_67)
    pxe_log = start_pxe(lab, link=app.pxe_link_sections(xmpp_address))
    # medulla-pxe's only way to prosody is the uplink, where prosody listens too.
    assert "[%s]:%d" % (xmpp_address, app.server.c2s_port) in read(app.server.log_path)
    console = lab.boot_vm(VM_MAC, VM_UUID)
    logs = [pxe_log, dnsmasq_log, console, app.master_log]
    address, machine_uuid = assert_registered_on_first_boot(app, pxe_log, dnsmasq_log,
                                                            console, logs)

    # medullactl lists it, not imaged yet, with the VM's MAC.
    listed = app.ctl("machines")
    assert listed.returncode == 0, listed.stderr
    row = [line for line in listed.stdout.splitlines() if line.startswith(AUTOMATIC_NAME)]
    assert len(row) == 1 and "not imaged yet" in row[0], listed.stdout
    machines = json.loads(app.ctl("--json", "machines").stdout)
    [machine] = [m for m in machines if m["hostname"] == AUTOMATIC_NAME]
    assert machine["uuid"] == machine_uuid and machine["macs"] == [VM_MAC], machine

    # An admin gives it a menu of its own; the next boot of the same VM shows it.
    for argv in (["create", "lab", "--title", "Lab room", "--timeout", "1"],
                 ["assign", "lab", "--mac", VM_MAC]):
        done = app.ctl("pxe", "menu", *argv)
        assert done.returncode == 0, done.stderr
    lab.stop_vm()
    console = lab.boot_vm(VM_MAC, VM_UUID, boot=2)
    logs[2] = console
    wait_for("the second boot's menu GET", lambda: len(menu_gets(pxe_log)) == 2,
             BOOT_TIMEOUT, logs)
    assert menu_gets(pxe_log)[1] == (address, "mac:" + VM_MAC, "own"), read(pxe_log)
    wait_for("the lab menu on the console", lambda: "Lab room" in read(console),
             BOOT_TIMEOUT, logs)
    assert "unknown machine" not in read(console)
    pxe = read(pxe_log)
    assert pxe.count("GET /medulla/register") == 1
    assert "Traceback" not in pxe and "Traceback" not in read(app.master_log)


def menu_gets(pxe_log):
    """(client address, menu, why) of each menu GET from the VM."""
    return access_lines(pxe_log, "/medulla/bootmenu", r"menu (\S+) \((\w+)\)")


def assert_registered_on_first_boot(app, pxe_log, dnsmasq_log, console, logs):
    """Each step of the first boot, from the logs; returns the VM's address and the
    master's id for the machine."""
    registered = wait_for("the VM's registration", lambda: access_lines(
        pxe_log, "/medulla/register", r"registered (\S+) \(([\w-]+)\)"), BOOT_TIMEOUT, logs)
    # 1. dnsmasq gave the address, our TFTP server and the file
    dhcp = read(dnsmasq_log)
    address = netboot.dhcp_lease(dhcp, VM_MAC)
    assert address and address.startswith("192.0.2."), dhcp
    assert re.search(r"option: 67 bootfile-name\s+autoexec\.ipxe", dhcp), dhcp
    # 2. medulla-pxe sent autoexec.ipxe to that address
    pxe = read(pxe_log)
    assert "RRQ from %s filename autoexec.ipxe" % address in pxe
    # 3. iPXE asked for its menu and got the master's registration menu (only the master
    #    answers "registration"; without it medulla-pxe serves its built-in menu)
    assert menu_gets(pxe_log) == [(address, "registration", "registration")], pxe
    # 4. the menu's default item registered it with no key pressed: without auto=1 an
    #    empty name gets 400, so a 200 with the automatic name is the keyboard-less item
    [(peer, name, machine_uuid)] = registered
    assert (peer, name) == (address, AUTOMATIC_NAME), registered
    assert pxe.index("GET /medulla/bootmenu") < pxe.index("GET /medulla/register")
    # 5. the master created the machine, and says so
    assert ("machine %s (%s) registered by PXE on master: MAC %s, SMBIOS UUID %s"
            % (AUTOMATIC_NAME, machine_uuid, VM_MAC, VM_UUID)) in read(app.master_log)
    # 6. the VM showed the menu, then our answer, then booted on (the local disk, then
    #    the next boot device: it never waits at a prompt)
    wait_for("iPXE to boot on", lambda: "No more network devices" in read(console),
             BOOT_TIMEOUT, logs)
    screen = read(console)
    assert "http://%s/medulla/bootmenu... ok" % SITE_ADDRESS in screen
    assert "Medulla: unknown machine" in screen and "Register this machine" in screen
    assert "/medulla/register... ok" in screen
    assert squeezed("This machine is registered with Medulla as %s (%s); booting on." % (
        AUTOMATIC_NAME, machine_uuid)) in squeezed(screen)    # the console wraps at 80
    assert screen.index("Medulla: unknown machine") < screen.index("/medulla/register")
    assert "Name of this machine" not in screen
    return address, machine_uuid


def squeezed(text):
    return re.sub(r"\s+", "", text)


def access_lines(log, path, outcome, mac=VM_MAC):
    """medulla-pxe's access lines (answered 200) for ``path`` from the VM whose outcome
    matches the regex ``outcome``: [(client address, outcome groups...)]."""
    return re.findall(r"HTTP ([0-9.]+):\d+ GET %s mac=%s uuid=%s: 200 %s"
                      % (re.escape(path), re.escape(mac), re.escape(VM_UUID), outcome), read(log))
