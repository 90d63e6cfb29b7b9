"""lintian on every built package: no error, no warning that is neither fixed nor
overridden (debian/<package>.lintian-overrides) with a comment saying why."""

import subprocess

import pytest

from .debs import REPO

pytestmark = pytest.mark.packaging


def test_lintian_reports_no_error_and_no_unexplained_warning(built):
    proc = subprocess.run(["lintian", "--fail-on", "none", "--no-tag-display-limit",
                           *map(str, built.values())],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flagged = [line for line in proc.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert not flagged, "\n".join(flagged)


def test_every_lintian_override_says_why():
    """Each group of override lines sits under a comment giving the reason."""
    for overrides in (REPO / "debian").glob("*.lintian-overrides"):
        explained = False
        for line in overrides.read_text().splitlines():
            if not line.strip():
                explained = False
            elif line.startswith("#"):
                explained = True
            else:
                assert explained, f"{overrides.name}: no reason above {line!r}"


# Each daemon package and the units its postinst enables, starts and restarts.
DAEMON_UNITS = {
    "medulla-master": ("medulla-master.service",),
    "medulla-relay": ("medulla-relay.service",),
    "medulla-pxe": ("medulla-pxe.service",),
    "medulla-guard": ("medulla-guard.service",),
    "medulla-syncthing": ("medulla-syncthing-engine.service", "medulla-syncthing.service"),
    "medulla-agent": ("medulla-agent.service",),
}


def control_file(deb, name):
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)],
                             capture_output=True, check=True).stdout
    return subprocess.run(["tar", "-xOf", "-", f"./{name}"], input=control,
                          capture_output=True, check=True).stdout.decode()


def test_all_packages_are_built(built):
    assert set(built) == {"medulla-common", "medulla-server", *DAEMON_UNITS}


@pytest.mark.parametrize("package", sorted(DAEMON_UNITS))
def test_postinst_enables_its_units_and_restarts_them_after_upgrade(built, package):
    postinst = control_file(built[package], "postinst")
    assert "_dh_action=restart" in postinst
    for unit in DAEMON_UNITS[package]:
        assert f"deb-systemd-helper enable '{unit}'" in postinst, unit
    started = " ".join(f"'{u}'" for u in sorted(DAEMON_UNITS[package]))
    assert f"deb-systemd-invoke $_dh_action {started}" in postinst


def test_master_host_pulls_every_role_and_roles_depend_on_what_they_drive(built):
    def depends(package):
        fields = subprocess.run(["dpkg-deb", "-f", str(built[package]), "Depends"],
                                capture_output=True, text=True, check=True).stdout
        return {item.split()[0] for item in fields.replace("|", ",").split(",") if item.strip()}
    assert depends("medulla-server") >= {"medulla-master", "medulla-relay", "medulla-pxe",
                                         "medulla-syncthing", "medulla-guard"}
    assert "syncthing" in depends("medulla-syncthing")
    assert "nftables" in depends("medulla-guard")
    assert depends("medulla-master") >= {"prosody", "ejabberd", "openssl"}
    for package in ("medulla-relay", "medulla-pxe", "medulla-guard", "medulla-syncthing"):
        assert depends(package) >= {"medulla-common", "adduser"}, package
