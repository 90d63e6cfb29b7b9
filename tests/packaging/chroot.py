"""A Debian 12 chroot made with debootstrap, for installing our packages with apt.

The debootstrap download (`--make-tarball`) and the bootstrapped tree are cached under
CACHE_DIR, so a rerun unpacks a tar instead of bootstrapping again; downloaded .debs are
kept in CACHE_DIR/apt-archives (bind-mounted as the chroot's apt cache). Services never
start inside (a policy-rc.d says no). Mounts are tracked and always undone by `close()`,
and the tree is removed only when nothing is mounted under it any more.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from medulla_appliance.testing.processes import process_tree

CACHE_DIR = Path(os.environ.get("MEDULLA_TEST_CACHE", "/var/cache/medulla-test"))
SUITE = "bookworm"
# systemd and dbus: what `systemd-nspawn --boot` needs to boot the tree.
INCLUDE = "systemd,systemd-sysv,dbus"
TARBALL = CACHE_DIR / f"debootstrap-{SUITE}-minbase.tgz"
BASE_TREE = CACHE_DIR / f"{SUITE}-minbase-tree.tar"
APT_ARCHIVES = CACHE_DIR / "apt-archives"
CHROOTS_DIR = Path("/var/tmp/medulla-pkgtest")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
POLICY_RC_D = "#!/bin/sh\n# tests/packaging: no service starts in this chroot\nexit 101\n"
# Where apt_install puts the .debs: not /tmp, which systemd empties when the tree boots.
DEBS_INBOX = "/var/tmp/pkgtest-debs"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true",
           "LC_ALL": "C.UTF-8", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def host_mirrors() -> tuple[str, str | None]:
    """(Debian mirror, security mirror) as configured in the host's apt sources."""
    main, security = None, None
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") and path.is_file():
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        # deb822 stanzas: URIs + Suites
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and not re.search(r"^Enabled:\s*no", stanza, re.M | re.I):
                for suite in suites.group(1).split():
                    if suite == SUITE and main is None:
                        main = uris.group(1)
                    if suite == f"{SUITE}-security" and security is None:
                        security = uris.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if m.group(2) == SUITE and main is None:
                main = m.group(1)
            if m.group(2) == f"{SUITE}-security" and security is None:
                security = m.group(1)
    return (main or DEFAULT_MIRROR).rstrip("/"), security and security.rstrip("/")


def run(argv, *, check=True, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    """Run a host command, output captured as text; failures show it."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


def ensure_base_tree(mirror: str) -> Path:
    """The cached, bootstrapped base tree (a tar), made on first use."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    if BASE_TREE.exists():
        return BASE_TREE
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE_DIR))
    try:
        if not TARBALL.exists():
            partial = work / "download.tgz"
            run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}",
                 f"--make-tarball={partial}", SUITE, work / "dl", mirror], timeout=1800)
            partial.rename(TARBALL)
        tree = work / "tree"
        run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}",
             f"--unpack-tarball={TARBALL}", SUITE, tree, mirror], timeout=1800)
        partial = work / "tree.tar"
        run(["tar", "-C", tree, "--numeric-owner", "-cf", partial, "."])
        partial.rename(BASE_TREE)
    finally:
        _remove_tree(work)
    return BASE_TREE


def _mounted_under(root: Path) -> list[str]:
    prefix = str(root.resolve()).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(prefix) or point == prefix.rstrip("/"):
            points.append(point)
    return points


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    mounted = _mounted_under(path)
    if mounted:
        raise RuntimeError(f"not removing {path}: still mounted: {mounted}")
    shutil.rmtree(path)


def remove_stale_chroots() -> None:
    """Unmount and remove chroots that a killed test run left in CHROOTS_DIR."""
    for stale in CHROOTS_DIR.glob("medulla-chroot-*"):
        owner = stale.name.split("-")[2]
        if owner.isdigit() and Path(f"/proc/{owner}").exists():
            continue  # its test run is still going
        for point in sorted(_mounted_under(stale), key=len, reverse=True):
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
        _remove_tree(stale)


class Chroot:
    """A fresh bookworm tree under a temporary folder, with apt pointed at Debian."""

    def __init__(self, parent: Path):
        self.mirror, self.security = host_mirrors()
        base = ensure_base_tree(self.mirror)
        self.root = Path(tempfile.mkdtemp(prefix=f"medulla-chroot-{os.getpid()}-", dir=parent))
        self._mounts: list[Path] = []
        self._pids: list[int] = []
        run(["tar", "-C", self.root, "--numeric-owner", "-xf", base])
        sources = [f"deb {self.mirror} {SUITE} main", f"deb {self.mirror} {SUITE}-updates main"]
        if self.security:
            sources.append(f"deb {self.security} {SUITE}-security main")
        (self.root / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
        (self.root / "etc/apt/apt.conf.d/80pkgtest-retries").write_text(
            'Acquire::Retries "5";\nAPT::Install-Recommends "false";\n')
        self.deny_services(True)
        self.mount()
        self.chroot(["apt-get", "update", "-q"], timeout=600)

    # -- mounts ---------------------------------------------------------------------------
    def mount(self) -> None:
        if self._mounts:
            return
        APT_ARCHIVES.mkdir(parents=True, exist_ok=True)
        (APT_ARCHIVES / "partial").mkdir(exist_ok=True)
        for what, where, args in (
                ("proc", "proc", ["-t", "proc"]),
                ("sysfs", "sys", ["-t", "sysfs"]),
                ("/dev", "dev", ["--bind"]),
                ("devpts", "dev/pts", ["-t", "devpts", "-o", "newinstance,ptmxmode=0666"]),
                (str(APT_ARCHIVES), "var/cache/apt/archives", ["--bind"])):
            target = self.root / where
            target.mkdir(parents=True, exist_ok=True)
            run(["mount", *args, what, target])
            self._mounts.append(target)

    def umount(self) -> None:
        while self._mounts:
            target = self._mounts.pop()
            if run(["umount", target], check=False).returncode != 0:
                run(["umount", "-l", target], check=False)

    def deny_services(self, deny: bool) -> None:
        policy = self.root / "usr/sbin/policy-rc.d"
        if deny:
            policy.write_text(POLICY_RC_D)
            policy.chmod(0o755)
        elif policy.exists():
            policy.unlink()

    # -- commands -------------------------------------------------------------------------
    def chroot(self, argv, *, check=True, user=None, env=None, timeout=600,
               netns=None) -> subprocess.CompletedProcess:
        """Run argv inside the chroot (as `user` if given, in network namespace `netns`)."""
        prefix = ["ip", "netns", "exec", netns] if netns else []
        spec = [f"--userspec={user}:{user}"] if user else []
        full_env = dict(APT_ENV, **(env or {}))
        return run([*prefix, "chroot", *spec, self.root, *argv], check=check,
                   env=full_env, timeout=timeout)

    def spawn(self, argv, *, user=None, env=None, netns=None, log: Path) -> subprocess.Popen:
        """Start a long-running process in the chroot; close() stops it if still running."""
        prefix = ["ip", "netns", "exec", netns] if netns else []
        spec = [f"--userspec={user}:{user}"] if user else []
        with open(log, "ab") as out:
            proc = subprocess.Popen([*prefix, "chroot", *spec, str(self.root), *argv],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(APT_ENV, **(env or {})), start_new_session=True)
        self._pids.append(proc.pid)
        return proc

    def apt_install(self, *debs: Path, extra=()) -> subprocess.CompletedProcess:
        """`apt-get install ./x.deb ...`: apt resolves their Depends from Debian's mirror."""
        inbox = self.root / DEBS_INBOX.lstrip("/")
        shutil.rmtree(inbox, ignore_errors=True)
        inbox.mkdir(parents=True)
        names = []
        for deb in debs:
            shutil.copy2(deb, inbox / deb.name)
            names.append(f"{DEBS_INBOX}/{deb.name}")
        return self.chroot(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                            *extra, *names], timeout=900)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def installed(self, package: str) -> str | None:
        """The dpkg status word of a package ('installed', 'config-files') or None."""
        proc = self.chroot(["dpkg-query", "-W", "-f=${db:Status-Status}", package], check=False)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    # -- teardown -------------------------------------------------------------------------
    def stop(self, pid: int, timeout: float = 15) -> None:
        tree = process_tree(pid)
        for p in tree:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(process_tree(p) for p in tree):
            time.sleep(0.1)
        for p in tree:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for pid in reversed(self._pids):
            self.stop(pid, timeout=5)
        self.umount()
        if os.environ.get("MEDULLA_KEEP_CHROOT"):
            print(f"chroot kept in {self.root}")
            return
        _remove_tree(self.root)
        # systemd-nspawn's lock file beside the tree.
        (self.root.parent / f".#{self.root.name}.lck").unlink(missing_ok=True)
