"""Relay enrolment over a real XMPP server (prosody) with a real medulla-master: a relay
host's medulla-relay logs in as its own account relay-lyon with its own key, enrols
(relay.register), reports relay.status and shows up in `medullactl relays`; then hostile
clients try to speak for that relay: another key on the relay's own account, an account
that never enrolled, and the relay's key speaking for another relay."""

import json
import secrets
import subprocess
import sys
import time

import pytest

from medulla_appliance.core import envelope, keys
from medulla_appliance.testing.appliance import Appliance, render_ini, stop_process
from medulla_appliance.testing.ports import free_tcp_port

pytestmark = pytest.mark.integration
RELAY_PASSWORD = "relay-pw-" + secrets.token_hex(4)


def wait_until(fetch, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = fetch()
        if predicate(value):
            return value
        time.sleep(0.2)
    raise AssertionError("%s not seen in %ss; last: %r" % (what, timeout, value))


def send_as(app, jid, password, bodies, wait=3.0):
    """Log in as `jid`, send `bodies` to the master; the envelopes that came back."""
    path = app.workdir / ("bodies-%s.json" % secrets.token_hex(4))
    path.write_text(json.dumps(bodies))
    out = subprocess.run(
        [sys.executable, "-m", "medulla_appliance.testing.rawclient", "--jid", jid,
         "--password", password, "--port", str(app.server.c2s_port),
         "--ca", str(app.server.ca.cert_path), "--to", app.master_jid, "--bodies", str(path),
         "--wait", str(wait)], capture_output=True, text=True, timeout=90).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {"event": "connected"} in lines, out
    answers = []
    for line in lines:
        if "body" in line:
            assert line["from"] == app.master_jid
            signed = envelope.decode(line["body"])
            envelope.verify(signed, app.master_key.public_key(), app.master_jid, jid)
            answers.append(signed.envelope)
    return answers


def body(app, jid, key, action, data):
    return envelope.encode(envelope.Envelope.new(action, data, now=time.time()), key, jid,
                           app.master_jid)


@pytest.fixture
def appliance(prosody_server, tmp_path):
    app = Appliance(tmp_path / "app", prosody_server)
    app.master_jid = "master@%s/master" % prosody_server.domain
    app.start_master()
    try:
        yield app
    finally:
        app.stop_master()


def test_a_relay_host_enrols_and_nobody_else_speaks_for_it(appliance, tmp_path):
    app, server = appliance, appliance.server
    domain = server.domain
    server.register("relay-lyon", RELAY_PASSWORD)
    password = tmp_path / "relay-xmpp.password"
    password.write_text(RELAY_PASSWORD + "\n")
    password.chmod(0o600)
    state = tmp_path / "relay-state"
    state.mkdir(mode=0o700)
    config = tmp_path / "relay.ini"
    config.write_text(render_ini({
        "http": {"listen": "tcp:%d:interface=127.0.0.1" % free_tcp_port()},
        "packages": {"root": tmp_path / "relay-packages"},
        "status": {"interval": "5s", "package_url": "http://lyon.test:9990"},
        "xmpp": {"jid": "relay-lyon@%s/relay" % domain, "password_file": password,
                 "port": server.c2s_port, "ca_file": server.ca.cert_path,
                 "master_jid": app.master_jid},
        "keys": {"private_key": state / "relay.key",
                 "master_public_key": app.master_public_key,
                 "enrolment_key_file": app.workdir / "enrolment.key"}}))
    log_path = tmp_path / "relay.log"
    with open(log_path, "wb") as log:
        relay = subprocess.Popen([sys.executable, "-m", "medulla_appliance.relay",
                                  "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        lyon = wait_until(lambda: app.api("/api/v1/relays/lyon") if any(
            r["name"] == "lyon" for r in app.api("/api/v1/relays")["relays"]) else None,
            lambda r: r is not None and r["status"].get("load") is not None, 60,
            "relay lyon enrolled with a status")
        relay_key = keys.load_or_create_private_key(state / "relay.key")
        assert lyon["key_fingerprint"] == keys.fingerprint(relay_key.public_key())
        assert lyon["online"] and lyon["enrolled"]
        assert lyon["daemons"]["medulla-relay"]["resource"] == "relay"
        assert lyon["package_url"] == "http://lyon.test:9990"
        shown = app.ctl("relays")
        assert shown.returncode == 0, shown.stderr
        row = [line for line in shown.stdout.splitlines() if line.startswith("lyon ")]
        assert row and "online" in row[0] and "medulla-relay" in row[0], shown.stdout
        assert "1 relay, 1 online" in shown.stdout

        # The relay's own account (its password leaked) with another key: refused.
        forger = "relay-lyon@%s/forger" % domain
        other = keys.generate_private_key()
        data = {"name": "lyon", "daemon": "medulla-relay", "version": "6.6.6",
                "public_key": keys.public_key_text(other)}
        data["psk_mac"] = keys.registration_mac(app.enrolment_key, data)
        forged_synced = {"relay": "lyon", "snapshot": True, "gone": [], "complete": [
            {"package_id": "forged", "descriptor_sha256": "f" * 64}]}
        answers = send_as(app, forger, RELAY_PASSWORD, [
            body(app, forger, other, "relay.register", data),
            body(app, forger, other, "package.synced", forged_synced)])
        assert [(a.action, a.ret, a.data.get("error")) for a in answers] == [
            ("result.relay.register", 409, "key-mismatch")]  # package.synced: dropped

        # An account that never enrolled claims to be lyon: not listened to.
        evil = "relay-evil@%s/syncthing" % domain
        evil_key = keys.generate_private_key()
        assert send_as(app, evil, "evil-pw-1", [
            body(app, evil, evil_key, "package.synced", forged_synced)]) == []

        # With the relay's real key, lyon speaks for lyon, never for paris.
        answers = send_as(app, forger, RELAY_PASSWORD, [
            body(app, forger, relay_key, "package.synced",
                 dict(forged_synced, relay="paris")),
            body(app, forger, relay_key, "package.synced",
                 dict(forged_synced, complete=[{"package_id": "hello",
                                                "descriptor_sha256": "a" * 64}]))])
        # (an accepted package.synced gets no answer: the package list shows it)
        assert [(a.ret, a.data.get("error")) for a in answers] == [(403, "not-your-relay")]
        lyon = wait_until(lambda: app.api("/api/v1/relays/lyon"), lambda r: r["packages"],
                          10, "the package lyon reported")
        assert [p["package_id"] for p in lyon["packages"]] == ["hello"]
        assert lyon["key_fingerprint"] == keys.fingerprint(relay_key.public_key())
        text = app.master_log.read_text(errors="replace")
        assert "relay-evil@%s/syncthing" % domain in text and "untrusted-sender" in text

        # An admin resets the key: the next enrolment pins the new one.
        reset = app.ctl("relay", "reset-key", "lyon")
        assert reset.returncode == 0 and "reset" in reset.stdout, reset.stderr
        assert app.api("/api/v1/relays/lyon")["key_fingerprint"] == ""
        answers = send_as(app, forger, RELAY_PASSWORD, [
            body(app, forger, other, "relay.register", data)])
        assert [(a.ret, a.data.get("pinned")) for a in answers] == [(0, True)]
        shown = app.ctl("relay", "show", "lyon")
        assert keys.fingerprint(other.public_key()) in shown.stdout, shown.stdout
        assert relay.poll() is None, log_path.read_text()[-2000:]
    finally:
        stop_process(relay)
