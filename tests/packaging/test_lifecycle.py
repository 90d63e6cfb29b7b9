"""The packages' life on a Debian 12 system, in a chroot made by debootstrap, in order:
the agent alone, the server with apt resolving Debian's packages, files/users/units, a
postinst run again, the master serving and logging in to the configured prosody, an upgrade
(.ini.local and store kept, schema migrated, conffile rules), systemd-nspawn --boot
(systemctl start, READY=1, restart on upgrade), remove, then purge.

The tests of this module depend on each other's effects and run in file order.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import time

import pytest

from . import nspawn
from .chroot import DEBS_INBOX, Chroot
from .debs import CONFFILE_LINE, PROBE_TABLE

pytestmark = pytest.mark.packaging

DOMAIN = "medulla.test"
ROLES = ("medulla-relay", "medulla-pxe", "medulla-guard", "medulla-syncthing")
SERVER = ("medulla-common", "medulla-master", *ROLES, "medulla-server")
ALL = (*SERVER, "medulla-agent")
# Every unit the server packages ship, and the daemon behind each (None: not ours).
SERVER_UNITS = {"medulla-master": "medulla-master", "medulla-relay": "medulla-relay",
                "medulla-pxe": "medulla-pxe", "medulla-guard": "medulla-guard",
                "medulla-syncthing": "medulla-syncthing", "medulla-syncthing-engine": None}
NOTIFY_DIR = "/run/medulla-test"
MASTER = ["/usr/bin/medulla-master", "--config", "/etc/medulla/master.ini"]
VENV_PY = "/usr/lib/medulla/venv/bin/python3"
GENERATED = ("/etc/medulla/master-xmpp.password", "/etc/medulla/enrolment.key",
             "/etc/medulla/pki/ca.key", "/etc/medulla/pki/ca.pem", "/etc/medulla/pki/xmpp.key",
             "/etc/medulla/pki/xmpp.crt", "/etc/medulla/master.ini.local",
             "/etc/medulla/agents/agentconf.ini.local", "/var/lib/medulla/master/master.key",
             "/etc/prosody/conf.d/medulla.cfg.lua", "/etc/medulla/relay.ini.local",
             "/etc/medulla/syncthing.ini.local")
# What the admin puts in the relay role's folders: kept by upgrades, removed by purge.
ADMIN_FILES = ("/var/lib/medulla/tftpboot/boot.ipxe", "/var/lib/medulla-guard/admin-note")


@pytest.fixture(scope="module")
def chroot(chroots_dir, upgrade_build):
    # upgrade_build is requested first so that it builds while the chroot is made.
    box = Chroot(chroots_dir)
    try:
        yield box
    finally:
        box.close()


def owner(box, path):
    """(user, group, mode) of a file in the chroot, names from the chroot's own databases."""
    st = box.path(path).stat()
    users = {int(f[2]): f[0] for f in
             (line.split(":") for line in box.path("/etc/passwd").read_text().splitlines())}
    groups = {int(f[2]): f[0] for f in
              (line.split(":") for line in box.path("/etc/group").read_text().splitlines())}
    return users.get(st.st_uid), groups.get(st.st_gid), st.st_mode & 0o7777


def snapshot(box, paths=GENERATED):
    out = {}
    for path in paths:
        p = box.path(path)
        out[path] = (hashlib.sha256(p.read_bytes()).hexdigest(), owner(box, path)) \
            if p.exists() else None
    return out


def sql(box, query):
    return box.chroot([VENV_PY, "-I", "-c",
                       "import sqlite3, sys, json; c = sqlite3.connect(sys.argv[1]); "
                       "print(json.dumps(c.execute(sys.argv[2]).fetchall())); c.commit()",
                       "/var/lib/medulla/master/master.sqlite", query]).stdout.strip()


class Notifications:
    """An sd_notify socket inside the chroot, as systemd would give the daemon."""

    def __init__(self, box):
        folder = box.path(NOTIFY_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        self.path = folder / "notify.sock"
        if self.path.exists():
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.path.chmod(0o666)
        self.messages: list[str] = []

    def wait_for(self, predicate, timeout, proc=None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if predicate(message):
                    return message
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode}; got {self.messages}")
            self.sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except socket.timeout:
                pass
        raise AssertionError(f"no matching notification in {timeout}s; got {self.messages}")

    def close(self):
        self.sock.close()
        self.path.unlink(missing_ok=True)


def run_master(box, netns, log, until, timeout=60):
    """Start the master as systemd would (user medulla, NOTIFY_SOCKET, WATCHDOG_USEC), wait
    for a notification matching `until`, stop it with SIGTERM; returns the notifications."""
    notes = Notifications(box)
    proc = box.spawn(MASTER, user="medulla", netns=netns, log=log,
                     env={"NOTIFY_SOCKET": f"{NOTIFY_DIR}/notify.sock",
                          "WATCHDOG_USEC": "2000000"})
    try:
        notes.wait_for(lambda m: "READY=1" in m, timeout, proc)
        notes.wait_for(until, timeout, proc)
        proc.terminate()
        assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
        notes.wait_for(lambda m: "STOPPING=1" in m, 5)
        return notes.messages
    finally:
        if proc.poll() is None:
            box.stop(proc.pid)
        notes.close()


# -- the agent, alone ---------------------------------------------------------------------
def test_agent_installs_alone_without_the_server_or_its_dependencies(chroot, built):
    chroot.apt_install(built["medulla-agent"])
    assert chroot.installed("medulla-agent") == "installed"
    for absent in ("medulla-common", "prosody", "ejabberd"):
        assert chroot.installed(absent) in (None, "not-installed"), absent
    assert not chroot.path("/usr/lib/medulla").exists()
    agent_py = "/usr/lib/medulla-agent/venv/bin/python3"
    chroot.chroot([agent_py, "-I", "-c", "import medulla_agent.__main__, medulla_agent.service,"
                   " medulla_appliance.core.runtime, twisted, wokkel, cryptography, psutil"])
    proc = chroot.chroot([agent_py, "-I", "-c", "import medulla_appliance.master"], check=False)
    assert "No module named 'medulla_appliance.master'" in proc.stderr
    assert chroot.chroot(["medulla-agent", "--help"]).returncode == 0
    # Unconfigured: exit 78 and one line naming the missing keys.
    proc = chroot.chroot(["medulla-agent", "--check-config"], check=False)
    assert proc.returncode == 78 and "enrolment_key" in proc.stderr
    conffiles = chroot.chroot(["dpkg-query", "-W", "-f=${Conffiles}", "medulla-agent"]).stdout
    assert "/etc/medulla-agent/agentconf.ini " in conffiles
    assert owner(chroot, "/var/lib/medulla-agent") == ("root", "root", 0o700)
    assert chroot.path("/etc/systemd/system/multi-user.target.wants/medulla-agent.service") \
        .is_symlink()


# -- the server -----------------------------------------------------------------------------
def test_server_installs_with_apt_resolving_debian_dependencies(chroot, built):
    chroot.chroot(["sh", "-c", f"echo 'medulla-master medulla-master/xmpp-domain string "
                   f"{DOMAIN}' | debconf-set-selections"])
    chroot.apt_install(*(built[p] for p in SERVER))
    # Debian's packages the roles drive, resolved by apt.
    for package in (*SERVER, "prosody", "openssl", "syncthing", "nftables"):
        assert chroot.installed(package) == "installed", package


def test_user_state_config_and_secrets_are_in_place(chroot):
    passwd = dict((f[0], f) for f in (line.split(":") for line in
                                      chroot.path("/etc/passwd").read_text().splitlines()))
    user = passwd["medulla"]
    assert int(user[2]) < 1000 and user[5] == "/var/lib/medulla" and "nologin" in user[6]
    for state in ("/var/lib/medulla/master", "/var/lib/medulla/packages"):
        assert owner(chroot, state) == ("medulla", "medulla", 0o750), state
    for secret in ("/etc/medulla/master-xmpp.password", "/etc/medulla/enrolment.key"):
        assert owner(chroot, secret) == ("medulla", "medulla", 0o600), secret
    assert re.fullmatch(r"[0-9a-f]{32}\n?", chroot.path("/etc/medulla/enrolment.key").read_text())
    assert owner(chroot, "/etc/medulla/pki/ca.key") == ("root", "root", 0o600)
    assert owner(chroot, "/etc/medulla/pki/xmpp.key") == ("root", "prosody", 0o640)
    chroot.chroot(["openssl", "verify", "-CAfile", "/etc/medulla/pki/ca.pem",
                   "/etc/medulla/pki/xmpp.crt"])
    san = chroot.chroot(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                         "/etc/medulla/pki/xmpp.crt"]).stdout
    assert f"DNS:{DOMAIN}" in san
    master_local = chroot.path("/etc/medulla/master.ini.local").read_text()
    assert f"jid = master@{DOMAIN}/master" in master_local
    # Agents of the master's own site download from the relay role of this host.
    assert f"relay_urls = master http://{DOMAIN}:9990" in master_local
    conffiles = chroot.chroot(["dpkg-query", "-W", "-f=${Conffiles}", "medulla-master"]).stdout
    assert "/etc/medulla/master.ini " in conffiles and ".local" not in conffiles
    template = chroot.path("/etc/medulla/agents/agentconf.ini.local").read_text()
    assert "master_public_key = ed25519:" in template and f"server = {DOMAIN}" in template
    # prosody: the snippet for the domain and the master's account.
    snippet = chroot.path("/etc/prosody/conf.d/medulla.cfg.lua").read_text()
    assert snippet.startswith("-- medulla-master: generated")
    assert f'VirtualHost "{DOMAIN}"' in snippet
    assert chroot.path("/var/lib/prosody/medulla%2etest/accounts/master.dat").exists()
    assert chroot.path("/lib/systemd/system/medulla-master.service").exists()
    assert chroot.path("/etc/systemd/system/multi-user.target.wants/medulla-master.service") \
        .is_symlink()
    # The master accepts its configuration, read as its own user.
    chroot.chroot(MASTER + ["--check-config"], user="medulla")
    assert chroot.chroot(["medullactl", "--help"]).returncode == 0


def test_roles_get_their_files_units_and_on_the_master_host_its_account_and_key(chroot):
    for package in ROLES:
        name = package.removeprefix("medulla-")
        conffiles = chroot.chroot(["dpkg-query", "-W", "-f=${Conffiles}", package]).stdout
        assert f"/etc/medulla/{name}.ini " in conffiles and ".local" not in conffiles, package
        assert chroot.path(f"/usr/share/man/man1/{package}.1.gz").exists(), package
    guard_conffiles = chroot.chroot(["dpkg-query", "-W", "-f=${Conffiles}",
                                     "medulla-guard"]).stdout
    for rules in ("jails/sshd.ini", "filters/sshd.ini", "jails/medulla-pxe.ini"):
        assert f"/etc/medulla/guard.d/{rules} " in guard_conffiles, rules
    for unit in SERVER_UNITS:
        assert chroot.path(f"/lib/systemd/system/{unit}.service").exists(), unit
        assert chroot.path(f"/etc/systemd/system/multi-user.target.wants/{unit}.service") \
            .is_symlink(), unit
    assert owner(chroot, "/var/lib/medulla/tftpboot") == ("root", "root", 0o755)
    public = re.search(r"^master_public_key = (\S+)$",
                       chroot.path("/etc/medulla/agents/agentconf.ini.local").read_text(),
                       re.M).group(1)
    # Whatever order apt configured them in, the roles beside the master use its account
    # (a resource of their own) and key.
    relay = chroot.path("/etc/medulla/relay.ini.local").read_text()
    assert f"master_public_key = {public}\n" in relay
    syncthing = chroot.path("/etc/medulla/syncthing.ini.local").read_text()
    for line in ("role = master", "config_xml = /var/lib/medulla/syncthing/config.xml",
                 f"jid = master@{DOMAIN}/syncthing",
                 "password_file = /etc/medulla/master-xmpp.password",
                 f"master_jid = master@{DOMAIN}/master",
                 "private_key = /var/lib/medulla/master/master.key"):
        assert f"\n{line}\n" in syncthing, line
    # Every role whose schema has an [xmpp] section gets the master's JID with its own
    # resource and the master's key; one without (the schemas are read from the shipped
    # .ini, generated from them) gets no .ini.local at all.
    for package in ROLES:
        name = package.removeprefix("medulla-")
        shipped = chroot.path(f"/etc/medulla/{name}.ini").read_text()
        local = chroot.path(f"/etc/medulla/{name}.ini.local")
        assert local.exists() == ("\n[xmpp]\n" in shipped or name == "syncthing"), name
        if "\n[xmpp]\n" in shipped:
            text = local.read_text()
            assert f"\njid = master@{DOMAIN}/{name}\n" in text, name
            assert "\nprivate_key = /var/lib/medulla/master/master.key\n" in text, name
    # Each daemon accepts its configuration, read as its own user.
    for package in ROLES:
        name = package.removeprefix("medulla-")
        proc = chroot.chroot([f"/usr/bin/{package}", "--config", f"/etc/medulla/{name}.ini",
                              "--check-config"], user="medulla", check=False)
        assert proc.returncode == 0, (package, proc.stdout, proc.stderr)


def test_systemd_analyze_verify_accepts_every_installed_unit(chroot):
    for unit in (*(f"{u}.service" for u in SERVER_UNITS), "medulla-agent.service"):
        proc = chroot.chroot(["systemd-analyze", "verify", "--man=no",
                              f"/lib/systemd/system/{unit}"], check=False)
        assert proc.returncode == 0, proc.stderr
        assert "medulla" not in proc.stderr, proc.stderr


def test_postinst_run_again_or_after_an_interruption_overwrites_nothing(chroot):
    # An admin's edits to the generated files must survive too.
    with open(chroot.path("/etc/prosody/conf.d/medulla.cfg.lua"), "a") as fh:
        fh.write("    -- tuned by the admin\n")
    with open(chroot.path("/etc/medulla/relay.ini.local"), "a") as fh:
        fh.write("\n[http]\nidle_timeout = 42s\n")
    before = snapshot(chroot)
    assert all(before.values()), before
    # Interrupted first configuration: the server certificate never made it, a temporary
    # file was left behind. Running postinst again completes it and keeps everything else.
    chroot.path("/etc/medulla/pki/xmpp.crt").unlink()
    chroot.path("/etc/medulla/enrolment.key.medulla-tmp").write_text("half-written")
    postinst = "/var/lib/dpkg/info/medulla-master.postinst"
    chroot.chroot([postinst, "configure"])
    chroot.chroot([postinst, "configure"])
    chroot.chroot(["dpkg-reconfigure", "-fnoninteractive", "medulla-master"])
    # A role's first configuration again (an admin's relay.ini.local stays as it is).
    chroot.chroot(["/var/lib/dpkg/info/medulla-relay.postinst", "configure"])
    chroot.chroot(["/usr/lib/medulla/configure-master-roles"])
    after = snapshot(chroot)
    assert not chroot.path("/etc/medulla/enrolment.key.medulla-tmp").exists()
    assert after["/etc/medulla/pki/xmpp.crt"] is not None
    chroot.chroot(["openssl", "verify", "-CAfile", "/etc/medulla/pki/ca.pem",
                   "/etc/medulla/pki/xmpp.crt"])
    del before["/etc/medulla/pki/xmpp.crt"], after["/etc/medulla/pki/xmpp.crt"]
    assert after == before


def test_master_sends_ready_and_logs_in_to_the_configured_prosody(chroot, netns, work_dir):
    chroot.path("/run/prosody").mkdir(exist_ok=True)
    chroot.chroot(["chown", "prosody:prosody", "/run/prosody"])
    log = work_dir / "prosody.log"
    prosody = chroot.spawn(["prosody", "-F"], user="prosody", netns=netns, log=log)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                              "import socket; socket.create_connection(('127.0.0.1', 5222), 1)"],
                             capture_output=True).returncode != 0:
            assert prosody.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        # TLS checked against /etc/medulla/pki/ca.pem, SCRAM with the generated password.
        messages = run_master(chroot, netns, work_dir / "master-1.log",
                              lambda m: "STATUS=XMPP connected" in m)
    finally:
        chroot.stop(prosody.pid)
    assert any("WATCHDOG=1" in m for m in messages)
    assert owner(chroot, "/var/lib/medulla/master/master.sqlite")[0] == "medulla"
    assert owner(chroot, "/var/lib/medulla/master/api-token")[2] == 0o600


def test_upgrade_keeps_local_ini_and_store_migrates_schema_and_follows_conffile_rules(
        chroot, netns, upgrade_build, work_dir):
    local = chroot.path("/etc/medulla/master.ini.local")
    with open(local, "a") as fh:
        fh.write("\n[presence]\nping_after = 17s\n")
    with open(chroot.path("/etc/medulla-agent/agentconf.ini"), "a") as fh:
        fh.write("# changed by the admin\n")
    sql(chroot, "INSERT INTO machines (uuid, hostname, jid, enrolled_at, updated_at) "
                "VALUES ('pkgtest', 'kept', 'kept@x/y', 1, 1)")
    schema_before = int(sql(chroot, "SELECT MAX(version) FROM schema_version")[2:-2])
    # The relay role's state: a boot file in the TFTP root, the guard's state folder.
    chroot.path("/var/lib/medulla-guard").mkdir(mode=0o750, exist_ok=True)
    for path in ADMIN_FILES:
        chroot.path(path).write_text(f"kept across upgrades: {path}\n")
    kept = GENERATED + ADMIN_FILES + ("/var/lib/medulla/master/api-token",)
    before = snapshot(chroot, kept)

    new = upgrade_build.debs()
    chroot.apt_install(*(new[p] for p in ALL), extra=(
        "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"))
    for package in ALL:
        version = chroot.chroot(["dpkg-query", "-W", "-f=${Version}", package]).stdout
        assert version == upgrade_build.version, package

    assert snapshot(chroot, kept) == before
    # Unchanged by the admin: replaced by the new one. Changed: kept, the new one beside.
    assert chroot.path("/etc/medulla/master.ini").read_text().endswith(CONFFILE_LINE)
    agentconf = chroot.path("/etc/medulla-agent/agentconf.ini").read_text()
    assert agentconf.endswith("# changed by the admin\n")
    assert chroot.path("/etc/medulla-agent/agentconf.ini.dpkg-dist").read_text() \
        .endswith(CONFFILE_LINE)
    chroot.chroot(MASTER + ["--check-config"], user="medulla")

    run_master(chroot, netns, work_dir / "master-2.log", lambda m: "READY=1" in m)
    assert sql(chroot, "SELECT hostname FROM machines WHERE uuid = 'pkgtest'") == '[["kept"]]'
    # At least the probe migration (the tree the upgrade is built from may hold more).
    assert int(sql(chroot, "SELECT MAX(version) FROM schema_version")[2:-2]) > schema_before
    assert sql(chroot, f"SELECT name FROM sqlite_master WHERE name = '{PROBE_TABLE}'") \
        == f'[["{PROBE_TABLE}"]]'
    sql(chroot, "DELETE FROM machines WHERE uuid = 'pkgtest'")


def test_booted_with_nspawn_systemctl_brings_daemons_up_and_upgrade_restarts_them(
        chroot, netns):
    why_not = nspawn.unavailable()
    if why_not:
        pytest.skip(f"systemd-nspawn --boot does not work here: {why_not}")
    nspawn.check_booted_system(chroot, DOMAIN, netns)


# -- remove, purge ----------------------------------------------------------------------------
def nft_tables(netns):
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"],
                          capture_output=True, text=True, check=True).stdout


def test_remove_keeps_configuration_and_state(chroot, netns):
    # The guard's table (as a running guard leaves it) goes with the guard; a table that
    # is not its own stays. In the test's network namespace, never the host's.
    for table in ("medulla_guard", "admin_own"):
        subprocess.run(["ip", "netns", "exec", netns, "nft", "add", "table", "inet", table],
                       check=True)
    chroot.chroot(["apt-get", "remove", "-y", "-q", *ALL], netns=netns)
    tables = nft_tables(netns)
    assert "table inet admin_own" in tables and "medulla_guard" not in tables, tables
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "admin_own"],
                   check=True)
    for package in (*ROLES, "medulla-master", "medulla-agent"):
        assert chroot.installed(package) == "config-files", package
    assert chroot.installed("medulla-common") in (None, "not-installed")
    for gone in ("/usr/lib/medulla", "/usr/lib/medulla-agent", "/usr/bin/medulla-master"):
        assert not chroot.path(gone).exists(), gone
    for kept in ("/etc/medulla/master.ini", "/etc/medulla/master.ini.local",
                 "/etc/medulla/enrolment.key", "/var/lib/medulla/master/master.sqlite",
                 "/etc/medulla-agent/agentconf.ini", "/etc/medulla/relay.ini.local",
                 "/etc/medulla/syncthing.ini.local", "/etc/medulla/guard.d/jails/sshd.ini",
                 *ADMIN_FILES):
        assert chroot.path(kept).exists(), kept


def test_purge_leaves_nothing_but_the_system_user(chroot, netns):
    # Packages without conffiles (common, server) left nothing to purge at removal.
    left = [p for p in ALL if chroot.installed(p) == "config-files"]
    assert left == ["medulla-master", *ROLES, "medulla-agent"]
    chroot.chroot(["apt-get", "purge", "-y", "-q", *left], netns=netns)
    for package in ALL:
        assert chroot.installed(package) in (None, "not-installed"), package
    chroot.chroot(["rm", "-rf", DEBS_INBOX, NOTIFY_DIR])
    leftovers = chroot.chroot(["find", "/", "-xdev", "(", "-path", "/proc", "-o", "-path", "/sys",
                               "-o", "-path", "/dev", "-o", "-path", "/var/cache/apt/archives",
                               "-o", "-path", "/var/log", ")", "-prune", "-o",
                               "-iname", "*medulla*", "-print"]).stdout.split()
    assert leftovers == [], leftovers
    assert not chroot.path("/var/lib/prosody/medulla%2etest/accounts/master.dat").exists()
    debconf = chroot.path("/var/cache/debconf/config.dat").read_text()
    assert "medulla" not in debconf
    # What policy allows to stay: the system user and its group (ids are not reused).
    assert "medulla:" in chroot.path("/etc/passwd").read_text()
