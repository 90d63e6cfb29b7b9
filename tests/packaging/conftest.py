"""Fixtures of the packaging tests: built .debs, the upgrade build, a Debian 12 chroot.

Run by `make deb-test` (after `make deb`, which it passes as MEDULLA_DEB_DIR); on their own
with `pytest tests/packaging` they build the packages themselves. They need root,
dpkg-buildpackage, lintian, debootstrap and the network to Debian's mirror and PyPI
(`scripts/install-deps` installs the tools).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from . import debs as debs_mod
from .chroot import CHROOTS_DIR, remove_stale_chroots

TOOLS = ("dpkg-buildpackage", "lintian", "debootstrap", "systemd-analyze", "help2man")


@pytest.fixture(scope="session", autouse=True)
def _packaging_prerequisites():
    if os.geteuid() != 0:
        pytest.fail("packaging tests run as root (chroot, mounts, apt)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install-deps")


@pytest.fixture(scope="session")
def work_dir():
    """Scratch space for builds and logs (build/packaging-tests)."""
    path = debs_mod.REPO / "build" / "packaging-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def chroots_dir():
    """Where chroots are made: outside the tree, so that no `rm -rf build` can ever walk
    into a chroot's bind-mounted /dev. Chroots a killed run left behind are unmounted and
    removed first."""
    CHROOTS_DIR.mkdir(parents=True, exist_ok=True)
    remove_stale_chroots()
    return CHROOTS_DIR


@pytest.fixture(scope="session")
def upgrade_build(work_dir):
    """The upgrade build, started at once in the background (it overlaps the chroot work)."""
    source = work_dir / "upgrade-src"
    out = work_dir / "upgrade-debs"
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    source.mkdir(parents=True)
    version = debs_mod.make_upgrade_source(source)
    proc = debs_mod.build(out, source)

    class Pending:
        def __init__(self):
            self.version = version
            self._debs = None

        def debs(self):
            if self._debs is None:
                self._debs = debs_mod.wait(proc, out)
            return self._debs

    yield Pending()
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(source, ignore_errors=True)


@pytest.fixture(scope="session")
def built(work_dir):
    """{package: .deb} of this tree: MEDULLA_DEB_DIR (make deb-test) or built now."""
    given = os.environ.get("MEDULLA_DEB_DIR")
    if given:
        found = debs_mod.debs_in(Path(given))
        version = debs_mod.version_of()
        if found and all(f"_{version}_" in deb.name for deb in found.values()):
            return found
    out = work_dir / "debs"
    return debs_mod.wait(debs_mod.build(out), out)


@pytest.fixture(scope="module")
def netns():
    """A network namespace of our own: a loopback, and a veth pair whose two ends stay
    inside it (a workstation's agent wants a network card with a MAC address). The daemons'
    ports and packets touch nothing of the host's."""
    name = f"medulla-pkgtest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (["ip", "link", "set", "lo", "up"],
                        ["ip", "link", "add", "wks0", "type", "veth", "peer", "name", "wks1"],
                        ["ip", "link", "set", "wks0", "up"], ["ip", "link", "set", "wks1", "up"]):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
