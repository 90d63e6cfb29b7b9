"""Boot menus end to end on loopback: prosody, the real medulla-master and the real
medulla-pxe (logged in as the master's account, resource ``pxe``), HTTP GETs as iPXE
makes them. An unknown MAC gets the registration menu, /medulla/register creates the
machine (``medullactl machines`` shows it), an admin gives it a menu with medullactl and
the next GET shows it; with the master stopped, medulla-pxe still serves that menu."""

import json
import time
import urllib.error
import urllib.request

import pytest

from medulla_appliance.testing.appliance import Appliance, stop_process
from medulla_appliance.testing.ports import free_tcp_port, free_udp_port

pytestmark = pytest.mark.integration

MAC = "52:54:00:4d:ed:42"
SMBIOS = "4c4c4544-0057-3210-8053-c4c04f4b5132"


def get(port, path):
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                     headers={"User-Agent": "iPXE/1.21.1+ (g4bd0)"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for_menu(port, mac, wanted, timeout=60):
    """GET the menu until its first comment line names ``wanted`` (menu and reason)."""
    deadline = time.monotonic() + timeout
    script = ""
    while time.monotonic() < deadline:
        try:
            _, script = get(port, f"/medulla/bootmenu?mac={mac}&uuid={SMBIOS}&srv=127.0.0.1")
        except urllib.error.URLError:  # medulla-pxe is still starting
            time.sleep(0.2)
            continue
        if wanted in script.splitlines()[1]:
            return script
        time.sleep(0.3)
    raise AssertionError(f"no {wanted!r} menu within {timeout}s; last:\n{script}")


def test_register_assign_and_serve_from_cache(prosody_server, tmp_path):
    app = Appliance(tmp_path / "app", prosody_server)
    tftp_root = tmp_path / "tftpboot"
    tftp_root.mkdir()
    http_port = free_tcp_port()
    pxe = None
    try:
        app.start_master()
        pxe = app.start_pxe(tftp_root, tftp_port=free_udp_port(), http_port=http_port)
        script = wait_for_menu(http_port, MAC, f"menu registration for {MAC} (registration)")
        assert "item i1 Register this machine" in script
        register = [line for line in script.splitlines() if line.startswith("chain /medulla/")]
        assert register[0].startswith(  # the MAC's colons as %3A for old iPXE
            f"chain /medulla/register?mac={MAC.replace(':', '%3A')}&uuid={SMBIOS}&auto=1")

        # What iPXE asks after the timeout, with no DHCP host name: an automatic name.
        status, script = get(http_port, f"/medulla/register?mac={MAC}&uuid={SMBIOS}&auto=1"
                                        "&name=")
        assert status == 200 and "registered with Medulla as pc-5254004ded42" in script
        listed = app.ctl("machines")
        assert listed.returncode == 0, listed.stderr
        row = [line for line in listed.stdout.splitlines() if "pc-5254004ded42" in line]
        assert row and "not imaged yet" in row[0]

        # Known now: the default menu. The admin gives it a menu of its own.
        wait_for_menu(http_port, MAC, f"menu default for {MAC} (default)")
        for argv in (["create", "lab", "--title", "Lab room", "--timeout", "3"],
                     ["add-item", "lab", "--master", "Debian 12", "--chain",
                      "http://{server}/images/debian12.ipxe", "--default"],
                     ["assign", "lab", "--mac", MAC]):
            done = app.ctl("pxe", "menu", *argv)
            assert done.returncode == 0, done.stderr
        script = wait_for_menu(http_port, MAC, f"menu mac:{MAC} for {MAC} (own)")
        assert "menu Lab room" in script and "item i2 Debian 12" in script
        assert "chain http://127.0.0.1/images/debian12.ipxe || goto i2_failed" in script
        assert "--default i2 " in script
        shown = json.loads(app.ctl("--json", "pxe", "menu", "show", "mac:" + MAC).stdout)
        assert shown["source"] == "lab"

        # The master goes away: the last menu the master gave for this MAC is served.
        app.stop_master()
        status, script = get(http_port, f"/medulla/bootmenu?mac={MAC}&uuid={SMBIOS}&srv=x")
        assert status == 200 and f"menu mac:{MAC} for {MAC} (cached)" in script
        status, script = get(http_port, "/medulla/bootmenu?mac=52:54:00:00:00:09&uuid=")
        assert "(cached)" in script  # the last default menu for a MAC never seen
        status, script = get(http_port, "/medulla/bootmenu?mac=zz&uuid=")
        assert status == 400 and "bad request" in script
    finally:
        stop_process(pxe)
        app.stop_master()
    log = (app.workdir / "pxe.log").read_text()
    assert f"GET /medulla/register mac={MAC} uuid={SMBIOS}: 200 registered pc-5254004ded42" \
        in log
    assert f"mac={MAC} uuid={SMBIOS}: 200 menu mac:{MAC} (cached: master " in log
    assert "Traceback" not in log
