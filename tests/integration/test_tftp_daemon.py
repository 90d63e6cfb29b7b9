"""medulla-pxe as systemd runs it: bad configuration is one clear line and a non-zero exit,
a busy port stops the start, SIGHUP applies a new verbosity without a restart."""

import signal
import socket
import subprocess
import sys
import time

import pytest

from medulla_appliance.pxe.harness import PXEDaemon
from medulla_appliance.testing.ports import free_udp_port

pytestmark = pytest.mark.integration
PXE = [sys.executable, "-m", "medulla_appliance.pxe"]


def run(config):
    return subprocess.run(PXE + ["--config", str(config)], capture_output=True, text=True,
                          timeout=30)


def test_unknown_key_is_exit_78_with_file_line_and_key(tmp_path):
    config = tmp_path / "pxe.ini"
    config.write_text("[tftp]\nroot = %s\nmax_session = 3\n" % tmp_path)
    result = run(config)
    assert result.returncode == 78
    assert "%s:3: [tftp] max_session: unknown key; did you mean 'max_sessions'?" % config \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_listen_address_names_the_line(tmp_path):
    config = tmp_path / "pxe.ini"
    config.write_text("[tftp]\nroot = %s\nlisten = udp:69:interface=eth0\n" % tmp_path)
    result = run(config)
    assert result.returncode == 78  # a configuration error, which systemd does not retry
    assert "%s:3: [tftp] listen: interface 'eth0' is not an IP address" % config \
        in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_busy_port_stops_the_start(tmp_path):
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        config = tmp_path / "pxe.ini"
        config.write_text("[tftp]\nroot = %s\nlisten = udp:%d:interface=127.0.0.1\n"
                          % (tmp_path, port))
        result = run(config)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Address already in use" in result.stderr


def test_check_config(tmp_path):
    config = tmp_path / "pxe.ini"
    config.write_text("[tftp]\nroot = %s\n" % tmp_path)
    result = subprocess.run(PXE + ["--config", str(config), "--check-config"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "configuration OK" in result.stdout


def test_sighup_turns_verbose_on(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    with PXEDaemon(tmp_path / "pxe", root) as daemon:
        get = ["tftp", "127.0.0.1", str(daemon.port), "-m", "octet", "-c", "get", "f",
               str(tmp_path / "got")]
        subprocess.run(get, check=True, timeout=30)
        assert "RRQ from" not in daemon.log()
        daemon.tftp["verbose"] = True
        daemon.write_config()
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        subprocess.run(get, check=True, timeout=30)
        assert "RRQ from 127.0.0.1 filename f" in daemon.log()
