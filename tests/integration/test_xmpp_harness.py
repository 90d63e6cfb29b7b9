"""The harness that runs real prosody and ejabberd servers: what tests and benchmarks rely on."""

import base64
import os
import shutil
import socket
import subprocess

import pytest
import scramp
from cryptography import x509

from medulla_appliance.testing.pki import CertificateAuthority
from medulla_appliance.testing.processes import pid_alive
from medulla_appliance.testing.xmppprobe import (
    CLIENT_NS,
    SASL_NS,
    TLS_NS,
    RawStream,
    mechanisms,
    stream_features,
)
from medulla_appliance.testing.xmppserver import make_server

pytestmark = pytest.mark.integration
SYSTEM_PORTS = {5222, 5269, 5280, 5443}


def openssl_starttls(server, ca_path):
    # scripts/install-deps installs openssl: a missing one is a failure, not a skip.
    assert shutil.which("openssl"), "the openssl command is not installed"
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{server.c2s_port}",
         "-starttls", "xmpp", "-xmpphost", server.domain, "-CAfile", str(ca_path),
         "-verify_return_error"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def tls_stream(server, ca):
    stream = RawStream(server.c2s_port, server.domain, timeout=10)
    stream.open()
    return stream, stream.starttls(ca.cert_path)


def scram_login(server, ca, user, password):
    """Authenticate with SCRAM-SHA-1 over STARTTLS; True on <success/>."""
    stream, _features = tls_stream(server, ca)
    with stream:
        client = scramp.ScramClient(["SCRAM-SHA-1"], user, password)
        first = base64.b64encode(client.get_client_first().encode()).decode()
        stream.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                    f"mechanism='SCRAM-SHA-1'>{first}</auth>")
        reply = stream.expect(SASL_NS + "challenge", SASL_NS + "failure")
        if reply.tag == SASL_NS + "failure":
            return False
        client.set_server_first(base64.b64decode(reply.text).decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        stream.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>")
        reply = stream.expect(SASL_NS + "success", SASL_NS + "failure")
        if reply.tag == SASL_NS + "failure":
            return False
        client.set_server_final(base64.b64decode(reply.text).decode())  # checks the server
        return True


def register_inband(server, ca, user, password):
    """XEP-0077 registration on a fresh TLS stream; returns the reply's type."""
    stream, _features = tls_stream(server, ca)
    with stream:
        stream.send(f"<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                    f"<username>{user}</username><password>{password}</password></query></iq>")
        return stream.expect(CLIENT_NS + "iq").get("type")


def listening_addresses(pids):
    """(ip, port) of every TCP socket in LISTEN state held by ``pids``."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                packed = bytes.fromhex(address)
                ip = (socket.inet_ntop(socket.AF_INET, packed[::-1]) if len(packed) == 4
                      else socket.inet_ntop(socket.AF_INET6, packed))
                found.add((ip, int(port, 16)))
    return found


def test_ca_issues_certificates_for_domain_localhost_and_loopback(tmp_path):
    authority = CertificateAuthority.create(tmp_path / "ca")
    cert_path, key_path = authority.issue_server("medulla.test", tmp_path / "tls")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"medulla.test", "*.medulla.test", "localhost"} <= set(
        names.get_values_for_type(x509.DNSName))
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    reloaded = CertificateAuthority.load(tmp_path / "ca")
    assert reloaded.fingerprint_sha256 == authority.fingerprint_sha256
    assert len(authority.fingerprint_sha256) == 64
    assert authority.fingerprint_sha256 == authority.fingerprint_sha256.lower()


def test_make_server_rejects_unknown_kind(tmp_path, ca):
    with pytest.raises(ValueError, match="openfire"):
        make_server("openfire", tmp_path, "medulla.test", ca)


def test_starttls_certificate_verifies_against_test_ca(xmpp_server, ca):
    result = openssl_starttls(xmpp_server, ca.cert_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout


def test_starttls_certificate_fails_against_another_ca(xmpp_server, tmp_path):
    stranger = CertificateAuthority.create(tmp_path / "other-ca")
    result = openssl_starttls(xmpp_server, stranger.cert_path)
    assert result.returncode != 0


def test_plain_stream_must_starttls_before_authenticating(xmpp_server):
    features = stream_features(xmpp_server.c2s_port, xmpp_server.domain)
    starttls = features.find(TLS_NS + "starttls")
    assert starttls is not None and starttls.find(TLS_NS + "required") is not None
    assert mechanisms(features) == []
    with RawStream(xmpp_server.c2s_port, xmpp_server.domain) as stream:
        stream.open()
        stream.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                    "AGFsaWNlAHNlY3JldA==</auth>")
        reply = stream.expect(SASL_NS + "failure", SASL_NS + "success")
        assert reply.tag == SASL_NS + "failure"


def test_scram_is_offered_after_starttls(xmpp_server, ca):
    stream, features = tls_stream(xmpp_server, ca)
    with stream:
        assert "SCRAM-SHA-1" in mechanisms(features)


def test_inband_registration_has_no_rate_limit(xmpp_server, ca):
    for number in range(3):
        assert register_inband(xmpp_server, ca, f"agent{number}", "pw") == "result"
    assert scram_login(xmpp_server, ca, "agent2", "pw")
    assert not scram_login(xmpp_server, ca, "agent2", "wrong")


def test_account_survives_restart_on_same_port(xmpp_server, ca):
    xmpp_server.register("alice", "secret")
    port, old_pid = xmpp_server.c2s_port, xmpp_server.pid
    xmpp_server.restart()
    assert xmpp_server.c2s_port == port
    assert xmpp_server.pid != old_pid and not pid_alive(old_pid)
    assert scram_login(xmpp_server, ca, "alice", "secret")


def test_stop_leaves_no_process_and_closes_the_port(xmpp_server):
    pids = xmpp_server.processes()
    assert xmpp_server.pid in pids
    xmpp_server.stop()
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert xmpp_server.pid is None and xmpp_server.processes() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", xmpp_server.c2s_port), timeout=5)
    xmpp_server.stop()  # idempotent


def test_killed_server_starts_again(xmpp_server, ca):
    pids = xmpp_server.processes()
    xmpp_server.kill()
    assert [pid for pid in pids if pid_alive(pid)] == []
    xmpp_server.start()
    assert register_inband(xmpp_server, ca, "after-crash", "pw") == "result"


def test_server_process_has_a_high_fd_limit(xmpp_server):
    with open(f"/proc/{xmpp_server.pid}/comm") as comm:
        assert comm.read().strip() in {"lua5.4", "lua", "beam.smp"}
    with open(f"/proc/{xmpp_server.pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    assert int(line.split()[3]) >= 10000


def test_listens_only_on_loopback_and_its_own_port(xmpp_server):
    addresses = listening_addresses(xmpp_server.processes())
    assert ("127.0.0.1", xmpp_server.c2s_port) in addresses
    assert {ip for ip, _port in addresses} == {"127.0.0.1"}
    assert not {port for _ip, port in addresses} & SYSTEM_PORTS


def test_ejabberd_runs_without_epmd(ejabberd_server):
    with open(f"/proc/{ejabberd_server.pid}/cmdline") as cmdline:
        arguments = cmdline.read().split("\0")
    assert "-start_epmd" in arguments
    assert arguments[arguments.index("-start_epmd") + 1] == "false"
    names = {open(f"/proc/{pid}/comm").read().strip() for pid in ejabberd_server.processes()}
    assert "epmd" not in names


def test_close_keeps_the_log_in_workdir_and_removes_the_rest(xmpp_server):
    root = xmpp_server.root
    xmpp_server.close()
    assert xmpp_server.root == xmpp_server.workdir
    assert "medulla.test" in xmpp_server.log_path.read_text()
    if root != xmpp_server.workdir:  # the files were kept where the server's user can reach
        assert not root.exists()
        assert not (xmpp_server.workdir / "runtime").exists()
