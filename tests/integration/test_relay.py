"""medulla-relay as a process on 127.0.0.1, downloaded from with curl: whole files, resumed
transfers, refused tokens, 200 downloads at once, TLS. Stopped by PID."""

import hashlib
import shutil
import subprocess
import sys
import time

import pytest

from medulla_appliance.core import keys
from medulla_appliance.relay.harness import RelayProcess, token_for, write_package
from medulla_appliance.testing.pki import CertificateAuthority

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]

MASTER = keys.generate_private_key()
PKG = "pkg-64"
EXPIRED = token_for(MASTER, PKG, ttl=800, now=time.time() - 1000)
SIZES = {"zero.bin": 0, "one.bin": 1, "mib.bin": (1 << 20) + 1, "big.bin": 64 << 20}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("packages")
    write_package(root, PKG, dict(SIZES))
    write_package(root, "other", {"a.bin": b"other"})
    return root


@pytest.fixture(scope="module")
def relay(packages, tmp_path_factory):
    with RelayProcess(tmp_path_factory.mktemp("relay"), packages, MASTER.public_key()) as proc:
        yield proc


def curl(*args, timeout=120):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def url(relay, name, package=PKG):
    return f"{relay.url}/packages/{package}/{name}"


def bearer(package=PKG):
    return f"Authorization: Bearer {token_for(MASTER, package)}"


def assert_same_file(got, expected):
    assert got.stat().st_size == expected.stat().st_size
    assert sha256_of(got) == sha256_of(expected)
    with open(got, "rb") as a, open(expected, "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            assert x == y
            if not x:
                break


@pytest.mark.parametrize("name", sorted(SIZES))
def test_curl_download_is_byte_identical_and_matches_the_checksum(relay, packages, tmp_path,
                                                                  name):
    out = tmp_path / name
    result = curl("-f", "-D", str(tmp_path / "headers"), "-H", bearer(), "-o", str(out),
                  url(relay, name))
    assert result.returncode == 0, result.stderr
    assert_same_file(out, packages / PKG / name)
    headers = (tmp_path / "headers").read_text().lower()
    assert f"x-checksum-sha256: {sha256_of(out)}" in headers


def test_a_killed_transfer_resumes_with_curl_c(relay, packages, tmp_path):
    out = tmp_path / "big.bin"
    slow = subprocess.Popen(["curl", "-sS", "--limit-rate", "16M", "-H", bearer(), "-o",
                             str(out), url(relay, "big.bin")])
    try:
        deadline = time.monotonic() + 60
        while (not out.exists() or out.stat().st_size < 8 << 20) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        slow.kill()
        slow.wait(10)
    partial = out.stat().st_size
    assert 0 < partial < SIZES["big.bin"]
    result = curl("-f", "-C", "-", "-w", "%{http_code}", "-H", bearer(), "-o", str(out),
                  url(relay, "big.bin"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"206"
    assert_same_file(out, packages / PKG / "big.bin")


@pytest.mark.parametrize("name, kept", [("mib.bin", 1000), ("mib.bin", (1 << 20)),
                                        ("one.bin", 0), ("big.bin", (32 << 20) + 3)])
def test_a_partial_file_resumes_with_the_token_in_the_query(relay, packages, tmp_path, name,
                                                            kept):
    source = packages / PKG / name
    out = tmp_path / name
    with open(source, "rb") as handle:
        out.write_bytes(handle.read(kept))
    token = token_for(MASTER, PKG)
    result = curl("-f", "-C", "-", "-o", str(out), f"{url(relay, name)}?token={token}")
    assert result.returncode == 0, result.stderr
    assert_same_file(out, source)


@pytest.mark.parametrize("name", ["zero.bin", "one.bin", "mib.bin"])
def test_resuming_a_complete_file_changes_nothing(relay, packages, tmp_path, name):
    out = tmp_path / name
    shutil.copyfile(packages / PKG / name, out)
    result = curl("-C", "-", "-H", bearer(), "-o", str(out), url(relay, name))
    assert result.returncode == 0, result.stderr
    assert_same_file(out, packages / PKG / name)


def test_a_range_gives_exactly_those_bytes(relay, packages, tmp_path):
    out = tmp_path / "part"
    result = curl("-f", "--range", "1048575-1048576", "-H", bearer(), "-o", str(out),
                  url(relay, "mib.bin"))
    assert result.returncode == 0
    assert out.read_bytes() == (packages / PKG / "mib.bin").read_bytes()[-2:]


@pytest.mark.parametrize("auth, code", [
    ([], "401"),
    (["-H", "Authorization: Bearer nonsense"], "401"),
    (["-H", f"Authorization: Bearer {token_for(keys.generate_private_key(), PKG)}"], "401"),
    (["-H", f"Authorization: Bearer {token_for(MASTER, 'other')}"], "403"),
    (["-H", f"Authorization: Bearer {EXPIRED}"], "403"),
])
def test_wrong_tokens_are_refused(relay, tmp_path, auth, code):
    result = curl("-o", str(tmp_path / "body"), "-w", "%{http_code}", *auth,
                  url(relay, "mib.bin"))
    assert result.stdout.decode() == code
    assert (tmp_path / "body").stat().st_size < 100


def test_200_parallel_downloads_all_arrive_intact(relay, packages, tmp_path):
    expected = sha256_of(packages / PKG / "mib.bin")
    config = tmp_path / "curl.cfg"
    lines = [f'header = "{bearer()}"']
    for i in range(200):
        lines += [f'url = "{url(relay, "mib.bin")}"', f'output = "{tmp_path / f"d{i}.bin"}"']
    config.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    result = curl("-f", "--parallel", "--parallel-immediate", "--parallel-max", "200",
                  "--limit-rate", "2M", "-K", str(config), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(sha256_of(tmp_path / f"d{i}.bin") == expected for i in range(200))
    # At 2 MB/s each, one after another would take 200 x 0.5 s.
    assert time.monotonic() - started < 30


def test_the_copy_path_without_sendfile_serves_and_resumes(packages, tmp_path):
    with RelayProcess(tmp_path / "relay", packages, MASTER.public_key(), sendfile=False) as proc:
        out = tmp_path / "big.bin"
        with open(packages / PKG / "big.bin", "rb") as handle:
            out.write_bytes(handle.read(5 << 20))
        result = curl("-f", "-C", "-", "-H", bearer(), "-o", str(out), url(proc, "big.bin"))
        assert result.returncode == 0, result.stderr
        assert_same_file(out, packages / PKG / "big.bin")


def test_tls_listener(packages, tmp_path):
    ca = CertificateAuthority.create(tmp_path / "ca")
    cert, key = ca.issue_server("relay.medulla.test", tmp_path / "tls")
    proc = RelayProcess(tmp_path / "relay", packages, MASTER.public_key())
    text = proc.config.read_text().replace(f"listen = tcp:{proc.port}:",
                                           f"listen = ssl:{proc.port}:")
    proc.config.write_text(text.replace("[packages]", f"certificate = {cert}\n"
                                        f"private_key = {key}\n[packages]"))
    with proc:
        out = tmp_path / "mib.bin"
        result = curl("-f", "--cacert", str(ca.cert_path), "-H", bearer(), "-o", str(out),
                      url(proc, "mib.bin").replace("http://", "https://"))
        assert result.returncode == 0, result.stderr
        assert_same_file(out, packages / PKG / "mib.bin")


def test_a_bad_master_key_is_one_line_and_exit_1(packages, tmp_path):
    proc = RelayProcess(tmp_path, packages, MASTER.public_key())
    proc.config.write_text(proc.config.read_text().replace("ed25519:", "ed25519:x"))
    result = subprocess.run([sys.executable, "-m", "medulla_appliance.relay", "--config",
                             str(proc.config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr
