"""A relay host: the relay-role packages installed with apt without medulla-master, in a
chroot of their own. Nothing of the master's is written for them; medulla-relay and
medulla-syncthing wait for the admin's configuration; the configuration README.Debian and
the README's Install section give them is accepted by every daemon; purge leaves nothing.

The tests of this module depend on each other's effects and run in file order.
"""

from __future__ import annotations

import pytest

from .chroot import DEBS_INBOX, Chroot

pytestmark = pytest.mark.packaging

ROLES = ("medulla-relay", "medulla-syncthing", "medulla-pxe", "medulla-guard")
PACKAGES = ("medulla-common", *ROLES)
DOMAIN = "medulla.test"
# A well-formed Syncthing device ID (the master's, as `syncthing --device-id` prints it).
MASTER_DEVICE = "JCCNU22-IL3D3TV-VXLJK4L-2T7KMK6-DXIABD3-NNHNSUJ-3MJJOZW-Z54SZQ5"


@pytest.fixture(scope="module")
def relay_host(chroots_dir):
    box = Chroot(chroots_dir)
    try:
        yield box
    finally:
        box.close()


def check_config(box, package):
    name = package.removeprefix("medulla-")
    return box.chroot([f"/usr/bin/{package}", "--config", f"/etc/medulla/{name}.ini",
                       "--check-config"], user="medulla", check=False)


def test_relay_role_installs_without_the_master(relay_host, built):
    relay_host.apt_install(*(built[p] for p in PACKAGES))
    for package in (*PACKAGES, "syncthing", "nftables"):
        assert relay_host.installed(package) == "installed", package
    for absent in ("medulla-master", "prosody", "ejabberd"):
        assert relay_host.installed(absent) in (None, "not-installed"), absent
    assert "medulla:" in relay_host.path("/etc/passwd").read_text()
    for unit in ("medulla-relay", "medulla-syncthing", "medulla-syncthing-engine",
                 "medulla-pxe", "medulla-guard"):
        assert relay_host.path(f"/etc/systemd/system/multi-user.target.wants/{unit}.service") \
            .is_symlink(), unit


def test_nothing_of_the_master_is_written_and_units_wait_for_the_admin(relay_host):
    # No master here: no .ini.local, so no [xmpp] jid, no link.
    for package in ROLES:
        name = package.removeprefix("medulla-")
        assert not relay_host.path(f"/etc/medulla/{name}.ini.local").exists(), name
    # The two daemons whose required keys only the admin knows refuse to start (78, the
    # key named); their units wait for the .ini.local (a condition, not a failure).
    proc = check_config(relay_host, "medulla-relay")
    assert proc.returncode == 78 and "master_public_key" in proc.stderr, proc.stderr
    proc = check_config(relay_host, "medulla-syncthing")
    assert proc.returncode == 78 and "role" in proc.stderr, proc.stderr
    for unit in ("medulla-relay", "medulla-syncthing"):
        text = relay_host.path(f"/lib/systemd/system/{unit}.service").read_text()
        name = unit.removeprefix("medulla-")
        assert f"ConditionPathExists=|/etc/medulla/{name}.ini.local" in text, unit
    # The other two run with their defaults.
    for package in ("medulla-pxe", "medulla-guard"):
        proc = check_config(relay_host, package)
        assert proc.returncode == 0, (package, proc.stderr)


def test_the_documented_relay_host_configuration_is_accepted(relay_host):
    """What README "Install" and the roles' README.Debian tell the admin to write."""
    python = "/usr/lib/medulla/venv/bin/python3"
    # A master's public key, as the master's agentconf.ini.local would show it.
    public = relay_host.chroot([python, "-I", "-c",
                                "import sys; from medulla_appliance.core import keys; "
                                "print(keys.public_key_text("
                                "keys.load_or_create_private_key(sys.argv[1])))",
                                "/var/tmp/master-for-test.key"]).stdout.strip()
    relay_host.path("/var/tmp/master-for-test.key").unlink()
    assert public.startswith("ed25519:")
    relay_host.path("/etc/medulla/pki").mkdir()
    relay_host.path("/etc/medulla/pki/ca.pem").write_text("the master's CA\n")
    for secret, text in (("relay-xmpp.password", "relay-password\n"),
                         ("enrolment.key", "0123456789abcdef0123456789abcdef\n")):
        relay_host.path(f"/etc/medulla/{secret}").write_text(text)
        relay_host.chroot(["chown", "medulla:medulla", f"/etc/medulla/{secret}"])
        relay_host.chroot(["chmod", "0600", f"/etc/medulla/{secret}"])
    link = {
        "relay": "",
        "syncthing": (f"[syncthing]\nrole = relay\n"
                      "config_xml = /var/lib/medulla/syncthing/config.xml\n\n"
                      f"[devices]\npeers = master {MASTER_DEVICE} tcp://master.{DOMAIN}:22000\n\n"),
    }
    for name in ("relay", "syncthing", "pxe", "guard"):
        shipped = relay_host.path(f"/etc/medulla/{name}.ini").read_text()
        text = link.get(name, "")
        if "\n[xmpp]\n" not in shipped:
            continue
        text += (f"[xmpp]\njid = relay-lyon@{DOMAIN}/{name}\n"
                 "password_file = /etc/medulla/relay-xmpp.password\n"
                 f"server = master.{DOMAIN}\nmaster_jid = master@{DOMAIN}/master\n\n"
                 "[keys]\nprivate_key = /var/lib/medulla/relay/relay.key\n"
                 f"master_public_key = {public}\n")
        if "enrolment_key_file" in shipped:
            text += "enrolment_key_file = /etc/medulla/enrolment.key\n"
        if name == "relay" and "\n[status]\n" in shipped:
            text += "\n[status]\npackage_url = http://relay-lyon.medulla.test:9990\n"
        relay_host.path(f"/etc/medulla/{name}.ini.local").write_text(text)
    for package in ROLES:
        proc = check_config(relay_host, package)
        assert proc.returncode == 0, (package, proc.stdout, proc.stderr)


def test_purge_leaves_nothing_but_the_system_user(relay_host, netns):
    # In the test's network namespace: medulla-guard's removal deletes its nftables table.
    relay_host.chroot(["apt-get", "purge", "-y", "-q", *PACKAGES], netns=netns)
    relay_host.chroot(["rm", "-rf", DEBS_INBOX])
    for package in PACKAGES:
        assert relay_host.installed(package) in (None, "not-installed"), package
    # The admin's .ini.local files, the secrets and CA copied in under the names the docs
    # give, the relay's key and Syncthing's home: all gone with the last package.
    left = relay_host.chroot(["find", "/", "-xdev", "(", "-path", "/proc", "-o", "-path",
                              "/sys", "-o", "-path", "/dev", "-o", "-path",
                              "/var/cache/apt/archives", "-o", "-path", "/var/log", ")",
                              "-prune", "-o", "-iname", "*medulla*", "-print"]).stdout.split()
    assert left == [], left
    assert "medulla:" in relay_host.path("/etc/passwd").read_text()
