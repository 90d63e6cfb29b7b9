"""Traversal and abuse against medulla-pxe run as a process: each attempt gets a TFTP
error and exactly one log line naming the client and the reason; nothing outside the root
is ever sent, nothing is written, and the daemon keeps serving."""

import os
import socket
import subprocess
import time

import pytest

from medulla_appliance.pxe.harness import PXEDaemon
from medulla_appliance.pxe.tftp.packets import ACK, DATA, ERROR, RRQ, decode

pytestmark = pytest.mark.integration
SECRET = b"this must never leave the server\n"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("abuse")
    root = base / "tftpboot"
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "ipxe.efi").write_bytes(b"I" * 5000)
    (base / "secret.txt").write_bytes(SECRET)
    (root / "escape-link").symlink_to(base / "secret.txt")
    (root / "escape-dir").symlink_to(base)
    (root / "zero").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe")
    return root


@pytest.fixture(scope="module")
def daemon(tree, tmp_path_factory):
    with PXEDaemon(tmp_path_factory.mktemp("pxe"), tree, max_sessions_per_client=2,
                   timeout="5s") as running:
        yield running


def exchange(daemon, datagram, timeout=3.0):
    """Send one datagram to the listening port; the reply and the socket (still open)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.bind(("127.0.0.1", 0))
    sock.sendto(datagram, ("127.0.0.1", daemon.port))
    data, addr = sock.recvfrom(70000)
    return decode(data), addr, sock


def wait_for_line(daemon, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in daemon.log():
            return
        time.sleep(0.02)
    raise AssertionError("no log line %r in:\n%s" % (text, daemon.log()[-3000:]))


def refused_lines(daemon, needle):
    return [line for line in daemon.log().splitlines() if "refused" in line and needle in line]


@pytest.mark.parametrize("name, code, reason", [
    (b"../secret.txt", 2, "parent-reference"),
    (b"boot/../../secret.txt", 2, "parent-reference"),
    (b"/etc/passwd", 2, "absolute-path"),
    (b"/../secret.txt", 2, "parent-reference"),
    (b"..\\secret.txt", 2, "parent-reference"),
    (b"boot\\..\\..\\secret.txt", 2, "parent-reference"),
    (b"boot\\x64\\wdsnbp.com", 2, "backslash"),
    (b"escape-link", 2, "symlink-escape"),
    (b"escape-dir/secret.txt", 2, "symlink-escape"),
    (b"zero", 2, "symlink-escape"),
    (b"pipe", 2, "not-a-file"),
    (b"boot", 2, "not-a-file"),
    (b"boot/\x1b]0;owned\x07", 2, "control-char"),
    (b"no-such-file", 1, "not-found"),
])
def test_traversal_attempt_is_refused_and_logged_once(daemon, name, code, reason):
    reply, _, sock = exchange(daemon, b"\x00\x01" + name + b"\x00octet\x00")
    sock.close()
    assert isinstance(reply, ERROR) and reply.code == code, reply
    shown = name.decode("latin-1").replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    needle = "refused RRQ from 127.0.0.1 filename %s: %s (" % (shown, reason)
    wait_for_line(daemon, needle)
    assert len(refused_lines(daemon, "filename %s:" % shown)) == 1


def test_nul_byte_smuggling_is_refused_as_malformed(daemon):
    reply, _, sock = exchange(daemon, b"\x00\x01boot/ipxe.efi\x00../secret.txt\x00octet\x00")
    sock.close()
    assert isinstance(reply, ERROR) and reply.code == 4
    wait_for_line(daemon, "refused packet from 127.0.0.1: malformed (unknown transfer mode")


def test_oversized_request_is_refused(daemon):
    reply, _, sock = exchange(daemon, b"\x00\x01" + b"A" * 4000 + b"\x00octet\x00")
    sock.close()
    assert isinstance(reply, ERROR) and reply.code == 4
    wait_for_line(daemon, "malformed (request of 4009 bytes")


def test_upload_is_refused_and_nothing_is_written(daemon, tree, tmp_path):
    local = tmp_path / "payload"
    local.write_bytes(b"evil")
    result = subprocess.run(["tftp", "127.0.0.1", str(daemon.port), "-m", "octet", "-c",
                             "put", str(local), "boot/evil.bin"],
                            capture_output=True, text=True, timeout=30)
    assert "read-only" in result.stdout + result.stderr
    assert not (tree / "boot" / "evil.bin").exists()
    wait_for_line(daemon, "refused WRQ from 127.0.0.1 filename boot/evil.bin: write-request")


def test_third_transfer_of_one_client_is_refused_while_two_run(daemon):
    socks = []
    try:
        for _ in range(2):
            reply, _, sock = exchange(daemon, RRQ("boot/ipxe.efi").to_wire())
            assert isinstance(reply, DATA)
            socks.append(sock)               # never acknowledged: they stay running
        reply, _, sock = exchange(daemon, RRQ("boot/ipxe.efi").to_wire())
        socks.append(sock)
        assert isinstance(reply, ERROR) and "max_sessions_per_client" in reply.message
        wait_for_line(daemon, "refused RRQ from 127.0.0.1 filename boot/ipxe.efi: "
                              "too-many-transfers")
    finally:
        for sock in socks:
            sock.close()                     # the kernel answers port unreachable
    # The abandoned transfers end on their own (their next retransmission is refused).
    deadline = time.monotonic() + 20
    while daemon.log().count("ended: client gone") < 2:
        assert time.monotonic() < deadline, daemon.log()[-2000:]
        time.sleep(0.1)


def test_datagrams_from_another_port_cannot_hijack_a_transfer(daemon):
    reply, server_tid, sock = exchange(daemon, RRQ("boot/ipxe.efi").to_wire())
    assert reply == DATA(1, b"I" * 512)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        intruder.sendto(ERROR(0, "abort").to_wire(), server_tid)
        intruder.sendto(ACK(1).to_wire(), server_tid)
        intruder.settimeout(0.3)
        with pytest.raises(TimeoutError):
            intruder.recvfrom(1000)          # nothing is ever sent to the intruder
    received = b"I" * 512
    block = 1
    while True:
        sock.sendto(ACK(block).to_wire(), server_tid)
        data = decode(sock.recvfrom(1000)[0])
        block = data.block
        received += data.data
        if len(data.data) < 512:
            sock.sendto(ACK(block).to_wire(), server_tid)
            break
    sock.close()
    assert received == b"I" * 5000


def test_a_flood_of_junk_leaves_the_daemon_serving(daemon):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n in range(2000):
            sock.sendto(os.urandom(n % 700), ("127.0.0.1", daemon.port))
    time.sleep(0.5)
    reply, _, sock = exchange(daemon, RRQ("boot/ipxe.efi").to_wire())
    sock.close()
    assert reply == DATA(1, b"I" * 512)
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.log()


def test_nothing_outside_the_root_was_ever_sent(daemon):
    # Runs last in this module: the log holds every refusal above and no secret.
    assert SECRET.decode().strip() not in daemon.log()
    assert "Unhandled" not in daemon.log()
