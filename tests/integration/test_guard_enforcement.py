"""Real enforcement: a real sshd and medulla-guard (nftables backend) in one network
namespace, real ssh clients failing their logins from another, joined by a veth pair
(10.77.0.0/30 and fd77::/64; no traffic leaves the two namespaces).

After the 5th failure the attacker's new connections are refused; after the ban time
they work again; the allowlisted address is never banned however often it fails; a
restart of the daemon (even a SIGKILL) keeps the ban, which lives in the kernel."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration.test_guard_follow import Guard

pytestmark = pytest.mark.integration

SERVER4, CLIENT4 = "10.77.0.1", "10.77.0.2"
SERVER6, CLIENT6, ALLOWED6 = "fd77::1", "fd77::2", "fd77::3"
BANTIME_S = 8
TOOLS = ("ip", "nft", "/usr/sbin/sshd", "ssh", "sshpass", "ssh-keygen")


def run(*argv, check=True, timeout=30, **kw):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture
def netns():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    # make test installs these (scripts/install-deps) and CI runs as root: missing is a failure
    if os.geteuid() != 0 or missing:
        pytest.fail("needs root and %s (scripts/install-deps)" % ", ".join(missing or TOOLS))
    tag = "%d" % os.getpid()
    server, client = "mgs" + tag, "mgc" + tag
    try:
        run("ip", "netns", "add", server)
        run("ip", "netns", "add", client)
        run("ip", "link", "add", "mgv" + tag, "netns", server, "type", "veth",
            "peer", "name", "mgp" + tag, "netns", client)
        for ns, dev, addrs in ((server, "mgv" + tag, [SERVER4 + "/30", SERVER6 + "/64"]),
                               (client, "mgp" + tag, [CLIENT4 + "/30", CLIENT6 + "/64",
                                                      ALLOWED6 + "/64"])):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                run("ip", "-n", ns, "addr", "add", addr, "dev", dev, *extra)
            run("ip", "-n", ns, "link", "set", dev, "up")
        yield server, client
    finally:
        for ns in (server, client):
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def sshd(netns, tmp_path):
    server, _ = netns
    folder = tmp_path / "sshd"
    folder.mkdir()
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key"))
    log = folder / "sshd.log"
    log.write_text("")
    (folder / "sshd_config").write_text(
        "Port 22\nListenAddress %s\nListenAddress %s\nHostKey %s\nPidFile %s\n"
        "UsePAM no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nAuthorizedKeysFile %s\nStrictModes no\n"
        "LogLevel VERBOSE\nMaxStartups 100\nMaxAuthTries 6\n" % (
            SERVER4, SERVER6, folder / "host_key", folder / "sshd.pid",
            folder / "authorized_keys"))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    process = subprocess.Popen(["ip", "netns", "exec", server, "/usr/sbin/sshd", "-D",
                                "-f", str(folder / "sshd_config"), "-E", str(log)])
    try:
        deadline = time.monotonic() + 10
        while "Server listening" not in log.read_text():
            assert process.poll() is None, "sshd exited: " + log.read_text()
            assert time.monotonic() < deadline, "sshd did not start: " + log.read_text()
            time.sleep(0.05)
        yield log
    finally:
        process.terminate()
        process.wait(10)


def ssh_attempt(client, target, *, password="wrong", source=None, key=None):
    """One failed login from ``client``; returns ssh's output (stderr)."""
    argv = ["ip", "netns", "exec", client]
    options = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3",
               "-o", "NumberOfPasswordPrompts=1", "-o", "IdentitiesOnly=yes"]
    if source:
        options += ["-b", source]
    if key:
        argv += ["ssh", *options, "-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey",
                 "-i", key]
    else:
        argv += ["sshpass", "-p", password, "ssh", *options,
                 "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"]
    result = run(*argv, "root@" + target, "true", check=False, timeout=20)
    return result.stderr


def refused(client, target, source=None):
    """Whether a new TCP connection to port 22 is refused (reset) now."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
            "s.settimeout(3)\n"
            "if sys.argv[2]: s.bind((sys.argv[2], 0))\n"
            "try:\n s.connect((sys.argv[1], 22)); print('open')\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except OSError as e: print('error', e)\n")
    out = run("ip", "netns", "exec", client, sys.executable, "-c", code, target,
              source or "").stdout.strip()
    assert out in ("open", "refused"), out
    return out == "refused"


def nft_elements(server):
    return run("ip", "netns", "exec", server, "nft", "list", "table", "inet",
               "medulla_guard").stdout


def test_real_sshd_brute_force_is_banned_in_nftables(netns, sshd, tmp_path):
    server, client = netns
    key = tmp_path / "stranger_key"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    guard = Guard(tmp_path / "guard", {"sshd": (
        "[jail]\nsources = file:%s\nmaxretry = 5\nfindtime = 1m\nbantime = %ds\n"
        "allowlist = %s\n" % (sshd, BANTIME_S, ALLOWED6))},
        prefix=["ip", "netns", "exec", server], backend="nftables")
    try:
        guard.start()
        # Nothing outside our table is touched, and our table is all we add.
        assert run("ip", "netns", "exec", server, "nft", "list", "tables").stdout.split() == \
            ["table", "inet", "medulla_guard"]

        # The allowlisted address fails far more than 5 times and is never banned.
        for _ in range(7):
            ssh_attempt(client, SERVER6, source=ALLOWED6)
        assert not refused(client, SERVER6, ALLOWED6)

        # IPv4: two refused keys, then wrong passwords; the 5th failure bans.
        for _ in range(2):
            assert "Permission denied" in ssh_attempt(client, SERVER4, key=str(key))
        for _ in range(2):
            assert "Permission denied" in ssh_attempt(client, SERVER4)
        assert not refused(client, SERVER4)
        assert "Permission denied" in ssh_attempt(client, SERVER4)  # 5th failure
        guard.wait_for(lambda: CLIENT4 in guard.bans(), timeout=5)
        assert "Connection refused" in ssh_attempt(client, SERVER4)
        assert refused(client, SERVER4)
        assert "Failed publickey for root from %s" % CLIENT4 in sshd.read_text()

        # IPv6: the same rule, its own set.
        for _ in range(5):
            ssh_attempt(client, SERVER6, source=CLIENT6)
        guard.wait_for(lambda: CLIENT6 in guard.bans(), timeout=5)
        assert refused(client, SERVER6, CLIENT6)
        assert not refused(client, SERVER6, ALLOWED6)
        assert ALLOWED6 not in nft_elements(server)

        # The daemon dies (SIGKILL): the kernel keeps the bans; a new daemon restores them.
        guard.stop(sig=9)
        assert refused(client, SERVER4)
        guard.start()
        bans = guard.bans()
        assert {CLIENT4, CLIENT6} <= set(bans)
        assert refused(client, SERVER4)

        # After the ban time the attacker may connect again (and is counted afresh).
        deadline = time.monotonic() + BANTIME_S + 5
        while refused(client, SERVER4) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not refused(client, SERVER4)
        assert "Permission denied" in ssh_attempt(client, SERVER4)
        assert CLIENT4 not in guard.bans()
    finally:
        guard.stop()


def test_manual_ban_and_unban_through_the_control_socket(netns, sshd, tmp_path):
    server, client = netns
    guard = Guard(tmp_path / "guard", {"sshd": "[jail]\nsources = file:%s\n" % sshd},
                  prefix=["ip", "netns", "exec", server], backend="nftables")
    try:
        guard.start()
        reply = guard.call("ban", address=CLIENT4, seconds=60)
        assert reply["ban"]["jail"] == "manual"
        assert refused(client, SERVER4)
        assert guard.call("unban", address=CLIENT4)["was_banned"] is True
        assert not refused(client, SERVER4)
        with pytest.raises(Exception, match="allowlist"):
            guard.call("ban", address="127.0.0.1")
        # the control socket is for root and the admins' group only
        assert oct(os.stat(guard.socket).st_mode & 0o777) == "0o660"
    finally:
        guard.stop()

