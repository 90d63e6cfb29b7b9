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
    assert {u.name for u in UNITS} >= {"medulla-master.service", "medulla-agent.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
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
