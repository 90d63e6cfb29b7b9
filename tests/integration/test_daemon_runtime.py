"""medulla-master as systemd runs it: a bad config is one line and exit 78; READY=1 once it
serves, WATCHDOG=1 pings, SIGHUP reloads (RELOADING=1 then READY=1) and refuses a broken
file without dying, SIGTERM stops it cleanly. A real notify socket, a real process.

No XMPP server is needed: READY means the registry and the API serve; XMPP reconnects
on its own (its state is in STATUS=).
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from medulla_appliance.testing.pki import CertificateAuthority
from medulla_appliance.testing.ports import free_tcp_port

pytestmark = pytest.mark.integration
MASTER = [sys.executable, "-m", "medulla_appliance.master"]


def write_master_config(folder, **override):
    state = folder / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    for name, text in (("pw", "secret-password"), ("enrol", "E" * 32)):
        path = folder / name
        path.write_text(text)
        path.chmod(0o600)
    ca = CertificateAuthority.create(folder / "ca")
    api_port = free_tcp_port()
    sections = {
        "xmpp": {"password_file": folder / "pw", "port": free_tcp_port(),
                 "ca_file": ca.cert_path},
        "keys": {"private_key": state / "master.key", "enrolment_key_file": folder / "enrol"},
        "store": {"url": "sqlite:%s" % (state / "m.sqlite")},
        "api": {"listen": "tcp:%d:interface=127.0.0.1" % api_port,
                "token_file": state / "token"},
    }
    for section, values in override.items():
        sections.setdefault(section, {}).update(values)
    text = "".join("[%s]\n%s\n" % (s, "".join("%s = %s\n" % kv for kv in v.items()))
                   for s, v in sections.items())
    path = folder / "master.ini"
    path.write_text(text)
    return path


def test_broken_ini_is_one_clear_line_and_exit_78(tmp_path):
    path = write_master_config(tmp_path)
    with open(path, "a") as f:
        f.write("[xmpp]\nprot = 5222\n[presence]\nping_after = soon\n")
    result = subprocess.run(MASTER + ["--config", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert "%s:" % path in result.stderr
    assert "[xmpp] prot: unknown key; did you mean 'port'?" in result.stderr
    assert "[presence] ping_after:" in result.stderr


def test_unreadable_ca_is_one_line_and_a_failure(tmp_path):
    path = write_master_config(tmp_path, xmpp={"ca_file": tmp_path / "empty.pem"})
    (tmp_path / "empty.pem").write_text("")
    result = subprocess.run(MASTER + ["--config", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file_is_one_line(tmp_path):
    result = subprocess.run(MASTER + ["--config", str(tmp_path / "nope.ini")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert len(result.stderr.strip().splitlines()) <= 2 and "nope.ini" in result.stderr


def test_check_config_accepts_a_good_file(tmp_path):
    path = write_master_config(tmp_path)
    result = subprocess.run(MASTER + ["--config", str(path), "--check-config"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket collecting messages."""

    def __init__(self, folder):
        self.path = str(folder / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def wait_for(self, line, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line in m.split("\n") for m in self.messages):
                return
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass
        raise AssertionError("no %r in %r" % (line, self.messages))


@pytest.fixture
def notified_master(tmp_path):
    notify = NotifySocket(tmp_path)
    path = write_master_config(tmp_path)
    log = open(tmp_path / "master.log", "w")
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="600000")
    process = subprocess.Popen(MASTER + ["--config", str(path)], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    yield process, notify, path, tmp_path / "master.log"
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_ready_watchdog_reload_and_stop(notified_master):
    process, notify, path, log = notified_master
    notify.wait_for("READY=1")
    assert any(line.startswith("STATUS=XMPP not connected") for m in notify.messages
               for line in m.split("\n"))
    notify.messages.clear()
    notify.wait_for("WATCHDOG=1", timeout=5)

    # A good change, reloaded on SIGHUP.
    local = path.with_name("master.ini.local")
    local.write_text("[global]\nlog_level = DEBUG\n")
    notify.messages.clear()
    process.send_signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    notify.wait_for("READY=1")
    deadline = time.monotonic() + 5
    while "configuration reloaded" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "configuration reloaded" in log.read_text()

    # A broken change: refused, logged, the daemon keeps running.
    local.write_text("[global]\nlog_level = LOUD\n")
    notify.messages.clear()
    process.send_signal(signal.SIGHUP)
    notify.wait_for("READY=1")
    assert "reload refused, keeping the running configuration" in log.read_text()
    assert process.poll() is None

    process.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    assert process.wait(20) == 0


def test_api_port_in_use_fails_the_start_with_one_line(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    path = write_master_config(tmp_path, api={"listen": "tcp:%d:interface=127.0.0.1" % port})
    try:
        result = subprocess.run(MASTER + ["--config", str(path)], capture_output=True,
                                text=True, timeout=30)
    finally:
        busy.close()
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Address already in use" in result.stderr


@pytest.mark.parametrize("module", ["medulla_appliance.master", "medulla_agent",
                                    "medulla_appliance.ctl", "medulla_appliance.relay",
                                    "medulla_appliance.pxe", "medulla_appliance.guard",
                                    "medulla_appliance.syncthing"])
def test_every_entry_point_answers_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    if module != "medulla_appliance.ctl":  # the daemons; medullactl has no config file
        assert "--config" in result.stdout
