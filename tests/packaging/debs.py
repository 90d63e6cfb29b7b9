"""The packages under test: this tree's build, and an "upgrade" build made from a copy of
it with a higher version, one more store migration and a changed shipped .ini."""

from __future__ import annotations

import os
import shutil
import subprocess
from email.utils import formatdate
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_DEBS = REPO / "debian" / "build-debs"
# What the upgrade build adds: the store migration a real release would bring, and a
# line in each shipped .ini (a conffile change, handled by dpkg's conffile rules).
PROBE_TABLE = "packaging_upgrade_probe"
PROBE_MIGRATION = f'''

# Added by tests/packaging for the upgrade build only.
MIGRATIONS = MIGRATIONS + (Migration(
    MIGRATIONS[-1].version + 1, "packaging upgrade test",
    ("CREATE TABLE {PROBE_TABLE} (id INTEGER PRIMARY KEY)",)),)
'''
CONFFILE_LINE = "# upgrade build (tests/packaging)\n"


def version_of(source: Path = REPO) -> str:
    return subprocess.run(["dpkg-parsechangelog", "-S", "Version"], cwd=source, check=True,
                          capture_output=True, text=True).stdout.strip()


def debs_in(folder: Path) -> dict[str, Path]:
    """{package name: .deb path} of a build folder."""
    return {deb.name.split("_")[0]: deb for deb in sorted(Path(folder).glob("*.deb"))}


def build(out: Path, source: Path | None = None) -> subprocess.Popen:
    """Start debian/build-debs (in the background: the caller waits)."""
    env = dict(os.environ)
    if source is not None:
        env["MEDULLA_DEB_SRC"] = str(source)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "build-debs.out", "wb")
    return subprocess.Popen([str(BUILD_DEBS), str(out)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, out: Path, timeout: float = 900) -> dict[str, Path]:
    code = proc.wait(timeout=timeout)
    if code != 0:
        raise AssertionError("debian/build-debs failed:\n" +
                             (out / "build-debs.out").read_text(errors="replace")[-4000:])
    return debs_in(out)


def make_upgrade_source(dest: Path) -> str:
    """Copy this tree to dest as version <current>+pkgtest1 with the probe changes."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    version = version_of() + "+pkgtest1"
    changelog = dest / "debian" / "changelog"
    changelog.write_text(
        f"medulla-appliance ({version}) bookworm; urgency=medium\n\n"
        "  * Upgrade build made by tests/packaging.\n\n"
        f" -- Medulla Appliance maintainers <maintainers@medulla-appliance.example>  "
        f"{formatdate()}\n\n" + changelog.read_text())
    with open(dest / "medulla_appliance" / "master" / "storage.py", "a") as fh:
        fh.write(PROBE_MIGRATION)
    for ini in ("etc/master.ini", "etc/agentconf.ini"):
        with open(dest / ini, "a") as fh:
            fh.write(CONFFILE_LINE)
    return version
