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


def test_all_packages_are_built(built):
    assert set(built) == {"medulla-common", "medulla-master", "medulla-server", "medulla-agent"}


def test_master_postinst_restarts_its_unit_after_upgrade(built):
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(built["medulla-master"])],
                             capture_output=True, check=True).stdout
    listing = subprocess.run(["tar", "-xOf", "-", "./postinst"], input=control,
                             capture_output=True, check=True).stdout.decode()
    assert "_dh_action=restart" in listing
    assert "deb-systemd-invoke $_dh_action 'medulla-master.service'" in listing
