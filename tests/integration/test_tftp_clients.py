"""Real TFTP clients (tftp-hpa, atftp, curl) against medulla-pxe run as a process on
127.0.0.1 and ::1: every file arrives byte-identical, from 0 bytes to past 32 MiB (where
512-byte block numbers roll over), in octet and netascii, with and without options."""

import hashlib
import os
import shutil
import subprocess

import pytest

from medulla_appliance.pxe.harness import PXEDaemon

pytestmark = pytest.mark.integration

SIZES = {"empty.bin": 0, "one.bin": 1, "exact512.bin": 512, "two-blocks.bin": 1024,
         "odd.bin": 1469, "exact1468x3.bin": 1468 * 3, "boot/ipxe.efi": 1_040_000,
         # 33 MiB + 7: 67,585 blocks of 512, past the 65,535 where block numbers roll over.
         "big.bin": 33 * 1024 * 1024 + 7}
TEXT = b"#!ipxe\nchain http://10.0.0.1/menu\r\nbare CR\rend\n" * 300
TIMEOUT = 120


def need(binary):
    if shutil.which(binary) is None:
        pytest.fail("%s is not installed (scripts/install-deps)" % binary)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tftpboot")
    (root / "boot").mkdir()
    for name, size in SIZES.items():
        (root / name).write_bytes(os.urandom(size))
    (root / "text.ipxe").write_bytes(TEXT)
    return root


@pytest.fixture(scope="module")
def daemon(root, tmp_path_factory):
    with PXEDaemon(tmp_path_factory.mktemp("pxe"), root, interfaces=("127.0.0.1", "::1"),
                   verbose=True, max_sessions_per_client=64) as running:
        yield running


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(argv, cwd):
    result = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result


def same(root, name, got):
    assert got.stat().st_size == SIZES.get(name, got.stat().st_size)
    assert digest(got) == digest(root / name), name


def tftp_hpa(daemon, name, out, host="127.0.0.1", mode="octet"):
    need("tftp")
    family = ["-6"] if ":" in host else ["-4"]
    run(["tftp", *family, host, str(daemon.port), "-m", mode, "-c", "get", name, str(out)],
        out.parent)


def atftp(daemon, name, out, host="127.0.0.1", options=()):
    need("atftp")
    argv = ["atftp", "-g", "-r", name, "-l", str(out)]
    for option in options:
        argv += ["--option", option]
    run(argv + [host, str(daemon.port)], out.parent)


def curl(daemon, name, out, host="127.0.0.1", extra=()):
    need("curl")
    url_host = "[%s]" % host if ":" in host else host
    run(["curl", "-sS", "--fail", *extra, "-o", str(out),
         "tftp://%s:%d/%s" % (url_host, daemon.port, name)], out.parent)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_tftp_hpa_gets_every_size_byte_identical(daemon, root, tmp_path, name):
    out = tmp_path / "got"
    tftp_hpa(daemon, name, out)
    same(root, name, out)


@pytest.mark.parametrize("name", ["empty.bin", "exact512.bin", "odd.bin", "big.bin"])
def test_atftp_lockstep_default_blocks(daemon, root, tmp_path, name):
    out = tmp_path / "got"
    atftp(daemon, name, out)
    same(root, name, out)


@pytest.mark.parametrize("name", ["empty.bin", "exact1468x3.bin", "odd.bin", "boot/ipxe.efi",
                                  "big.bin"])
@pytest.mark.parametrize("options", [("blksize 1468",), ("blksize 1468", "windowsize 16"),
                                     ("windowsize 8",), ("blksize 8192", "windowsize 4")],
                         ids=["blksize", "windowsize16", "windowsize8-512", "64k-window"])
def test_atftp_with_options_and_windowsize(daemon, root, tmp_path, name, options):
    out = tmp_path / "got"
    atftp(daemon, name, out, options=options)
    same(root, name, out)


@pytest.mark.parametrize("name", ["empty.bin", "exact512.bin", "odd.bin", "big.bin"])
@pytest.mark.parametrize("extra", [(), ("--tftp-blksize", "1468"), ("--tftp-no-options",)],
                         ids=["default", "blksize1468", "no-options"])
def test_curl_gets_every_size(daemon, root, tmp_path, name, extra):
    out = tmp_path / "got"
    curl(daemon, name, out, extra=extra)
    same(root, name, out)


@pytest.mark.parametrize("client", [tftp_hpa, atftp, curl])
def test_ipv6_clients(daemon, root, tmp_path, client):
    out = tmp_path / "got"
    client(daemon, "boot/ipxe.efi", out, host="::1")
    same(root, "boot/ipxe.efi", out)


def test_netascii_round_trips_text_through_tftp_hpa(daemon, root, tmp_path):
    out = tmp_path / "got"
    tftp_hpa(daemon, "text.ipxe", out, mode="netascii")
    assert out.read_bytes() == TEXT


def test_generated_autoexec_chains_to_the_menu_with_our_address(daemon, tmp_path):
    out = tmp_path / "autoexec.ipxe"
    curl(daemon, "bootloader-uefi64/autoexec.ipxe", out)
    script = out.read_text()
    assert script.startswith("#!ipxe\n")
    assert "chain --autofree http://127.0.0.1/medulla/bootmenu?mac=${mac}&uuid=${uuid}" \
           "&srv=127.0.0.1" in script


def test_verbose_log_has_the_rrq_lines_the_faq_greps_for(daemon, tmp_path):
    out = tmp_path / "got"
    curl(daemon, "boot/ipxe.efi", out)
    assert "RRQ from 127.0.0.1 filename boot/ipxe.efi" in daemon.log()


def test_dual_stack_listener_serves_ipv4_clients(root, tmp_path):
    with PXEDaemon(tmp_path / "pxe", root, interfaces=("::",), verbose=True) as running:
        out = tmp_path / "got"
        tftp_hpa(running, "odd.bin", out)
        same(root, "odd.bin", out)
        assert "RRQ from 127.0.0.1 filename odd.bin" in running.log()
        atftp(running, "boot/ipxe.efi", out, options=("blksize 1468", "windowsize 16"))
        same(root, "boot/ipxe.efi", out)
        atftp(running, "boot/ipxe.efi", out, host="::1", options=("windowsize 16",))
        same(root, "boot/ipxe.efi", out)


def test_sigterm_stops_the_daemon_cleanly(root, tmp_path):
    running = PXEDaemon(tmp_path / "pxe", root).start()
    running.stop()
    assert running.proc.returncode == 0
    assert "Traceback" not in running.log()
