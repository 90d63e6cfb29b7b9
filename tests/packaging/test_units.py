"""The systemd units as files: what every Medulla unit must say, and how exposed it is.

`systemd-analyze verify` needs the programs the units name, so it runs in the chroot after
installation (test_lifecycle); `systemd-analyze security --offline` needs nothing.
"""

import re
import subprocess

import pytest

from .debs import REPO

pytestmark = pytest.mark.packaging

UNITS = sorted((REPO / "systemd").glob("*.service"))
MAX_EXPOSURE = 2.5
# A unit may be more exposed only with a comment line saying why.
JUSTIFICATION = re.compile(r"^#.*[Ee]xposure over 2\.5", re.M)
REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "78",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
}
REQUIRED_UNLESS_JUSTIFIED = {"ProtectSystem": "strict", "ProtectHome": "yes"}
# Units that run a program that is not ours (no sd_notify): sandboxed like ours, but
# Type=simple without a watchdog. Each says so in a comment line.
THIRD_PARTY = {"medulla-syncthing-engine.service": "/usr/bin/syncthing "}
OURS = [u for u in UNITS if u.name not in THIRD_PARTY]
# The only capabilities each unit keeps (bounding set = ambient set).
CAPABILITIES = {
    "medulla-pxe.service": "CAP_NET_BIND_SERVICE",  # TFTP 69/udp, HTTP 80, DHCP 67/udp
    "medulla-guard.service": "CAP_NET_ADMIN",       # nft, on its own table
}


def directives(unit):
    found = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def exposure(unit):
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           str(unit)], capture_output=True, text=True, check=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    return float(match.group(1))


def test_there_are_units():
    assert {u.name for u in UNITS} == {f"medulla-{name}.service" for name in (
        "master", "agent", "relay", "pxe", "guard", "syncthing", "syncthing-engine")}


@pytest.mark.parametrize("unit", OURS, ids=lambda u: u.name)
def test_unit_is_notify_with_watchdog_restart_and_sandbox(unit):
    found = directives(unit)
    for key, value in REQUIRED.items():
        assert found.get(key) == [value], f"{unit.name}: {key}={value} expected"
    if not JUSTIFICATION.search(unit.read_text()):
        for key, value in REQUIRED_UNLESS_JUSTIFIED.items():
            assert found.get(key) == [value], f"{unit.name}: {key}={value} expected"
    assert int(found["WatchdogSec"][0]) > 0
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "CapabilityBoundingSet" in found, f"{unit.name}: say which capabilities it keeps"
    assert found["ExecStart"][0].startswith("/usr/bin/medulla-")


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_exposure_is_at_most_2_5_or_justified(unit):
    level = exposure(unit)
    if level > MAX_EXPOSURE:
        assert JUSTIFICATION.search(unit.read_text()), (
            f"{unit.name}: exposure {level} > {MAX_EXPOSURE} and no '# Exposure over 2.5: why' "
            "line in the unit")


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_every_unit_is_shipped_by_a_package(unit):
    shipped = [f.name for f in (REPO / "debian").glob("*.install")
               if f"systemd/{unit.name}" in f.read_text()]
    assert shipped, f"{unit.name}: add 'systemd/{unit.name} lib/systemd/system/' to a " \
                    "debian/<package>.install (README, Packaging)"


@pytest.mark.parametrize("unit", [u for u in UNITS if u.name in THIRD_PARTY], ids=lambda u: u.name)
def test_third_party_unit_is_sandboxed_like_ours_and_says_why_it_is_simple(unit):
    found = directives(unit)
    text = unit.read_text()
    assert found["Type"] == ["simple"] and "WatchdogSec" not in found
    assert re.search(r"^# Third-party program: no sd_notify", text, re.M)
    assert found["ExecStart"][0].startswith(THIRD_PARTY[unit.name])
    assert found["Restart"] == ["on-failure"]
    for key, value in {**REQUIRED_UNLESS_JUSTIFIED, "NoNewPrivileges": "yes",
                       "PrivateTmp": "yes", "User": "medulla"}.items():
        assert found.get(key) == [value], f"{unit.name}: {key}={value} expected"


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_keeps_only_the_capabilities_its_daemon_needs(unit):
    found = directives(unit)
    if unit.name == "medulla-agent.service":
        # Root, as the workstation's administration channel: a list of what is dropped.
        assert found["CapabilityBoundingSet"][0].startswith("~")
        return
    wanted = CAPABILITIES.get(unit.name, "")
    assert found["CapabilityBoundingSet"] == [wanted], unit.name
    assert found["AmbientCapabilities"] == [wanted], unit.name
    assert found["User"] == ["medulla"], f"{unit.name}: runs as the medulla user, not root"
    if wanted:
        # A capability on the host's network namespace does not work from a user namespace.
        assert "PrivateUsers" not in found, unit.name


def test_pxe_logs_under_the_identifier_the_guard_filter_matches():
    unit = REPO / "systemd" / "medulla-pxe.service"
    assert directives(unit)["SyslogIdentifier"] == ["medulla-pxe"]
    jail = (REPO / "etc" / "guard.d" / "filters" / "medulla-pxe.ini").read_text()
    assert re.search(r"^journalmatch\s*=.*SYSLOG_IDENTIFIER=medulla-pxe", jail, re.M), jail


def test_guard_unit_can_read_the_logs_of_its_shipped_jails():
    """Each jail's sources are readable by the unit: the journal through the
    systemd-journal group, files under /var/log/prosody and /var/log/ejabberd (Debian's
    group adm) through adm."""
    found = directives(REPO / "systemd" / "medulla-guard.service")
    groups = found["SupplementaryGroups"][0].split()
    assert "AF_NETLINK" in found["RestrictAddressFamilies"][0]
    for jail in (REPO / "etc" / "guard.d" / "jails").glob("*.ini"):
        sources = re.search(r"^sources\s*=\s*(.+)$", jail.read_text(), re.M).group(1)
        for source in (s.strip() for s in sources.split(",")):
            if source == "journal":
                assert "systemd-journal" in groups, jail.name
            else:
                assert source.startswith(("file:/var/log/prosody/", "file:/var/log/ejabberd/")), \
                    f"{jail.name}: {source}: which group may read it? (add it to the unit)"
                assert "adm" in groups, jail.name
