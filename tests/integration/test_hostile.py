"""A second, hostile account on the same XMPP server tries to fool the master and an
agent. Every attempt must end in a clear refusal (a log line with its reason, an answer
where the sender proved who it is), never a crash, a new machine or an obeyed order.

Each attempt uses its own account: refusals are logged once per sender and reason.
"""

import json
import secrets
import subprocess
import sys
import time

import pytest

from medulla_appliance.core import envelope, keys
from medulla_appliance.testing.appliance import Appliance, stop_process
from medulla_appliance.testing.pki import CertificateAuthority
from medulla_appliance.testing.xmppserver import make_server

pytestmark = pytest.mark.integration
DOMAIN = "medulla.test"
MASTER = "master@%s/master" % DOMAIN
EVIL_JID = "evil.abc@%s/024dee000009" % DOMAIN
EVIL_KEY = keys.generate_private_key()  # enrolled by test_replayed_envelope_is_refused


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")
    ca = CertificateAuthority.create(work / "ca")
    server = make_server("prosody", work / "xmpp", DOMAIN, ca)
    server.start()
    app = Appliance(work / "app", server)
    agent = None
    try:
        app.start_master()
        agent = app.start_agent("real", log_level="DEBUG")
        app.wait_for(lambda ms: len(ms) == 1 and ms[0]["online"], timeout=30)
        yield app
        assert app.master.poll() is None, "the master died"
    finally:
        stop_process(agent)
        app.stop_master()
        server.close()


def send_as(app, jid, bodies, to=MASTER, wait=2.0, forge_from=None):
    """Log in as `jid` (a new account), send `bodies` to `to`; returns what came back."""
    path = app.workdir / ("bodies-%s.json" % secrets.token_hex(4))
    path.write_text(json.dumps(bodies))
    argv = [sys.executable, "-m", "medulla_appliance.testing.rawclient", "--jid", jid,
            "--password", "hostile-pw-1", "--port", str(app.server.c2s_port),
            "--ca", str(app.server.ca.cert_path), "--to", to, "--bodies", str(path),
            "--wait", str(wait)]
    if forge_from:
        argv += ["--forge-from", forge_from]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=90).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {"event": "connected"} in lines, out
    return [envelope.decode(line["body"]).envelope for line in lines if "body" in line]


def master_log_has(app, *needles, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = app.master_log.read_text(errors="replace")
        if all(n in text for n in needles):
            return True
        time.sleep(0.1)
    raise AssertionError("master log lacks %r; tail:\n%s" % (needles, text[-2000:]))


def registration(app, jid, key, *, hostname, mac, psk=None, action="agent.register"):
    data = {"hostname": hostname, "macs": [mac], "ips": ["198.51.100.7"], "os": "Evil OS",
            "agent_version": "6.6.6", "inventory_tag": "",
            "services": {"ssh": False}, "public_key": keys.public_key_text(key)}
    data["psk_mac"] = keys.registration_mac(psk or app.enrolment_key, data)
    env = envelope.Envelope.new(action, data, now=time.time())
    return envelope.encode(env, key, jid, MASTER)


def test_malformed_json_is_refused_and_logged(appliance):
    replies = send_as(appliance, "mallory1@%s/x" % DOMAIN, ["{not json", "[]", "", "null"])
    assert replies == []
    master_log_has(appliance, "from mallory1@%s/x: bad-json" % DOMAIN)


def test_wrong_types_are_refused(appliance):
    good = json.loads(registration(appliance, "mallory2@%s/x" % DOMAIN,
                                   keys.generate_private_key(), hostname="m2",
                                   mac="02:4d:ee:00:00:02"))
    bad = dict(good, ret="0")
    assert send_as(appliance, "mallory2@%s/x" % DOMAIN, [json.dumps(bad)]) == []
    master_log_has(appliance, "from mallory2@%s/x: bad-field" % DOMAIN)


def test_oversized_bodies_are_refused(appliance):
    one_mb = json.dumps({"v": 1, "junk": "A" * (1024 * 1024)})
    assert send_as(appliance, "mallory3@%s/x" % DOMAIN, [one_mb]) == []
    master_log_has(appliance, "from mallory3@%s/x: oversize" % DOMAIN)
    # 10 MB: the XMPP server cuts the sender off; the master never sees it and lives on.
    ten_mb = "B" * (10 * 1024 * 1024)
    path = appliance.workdir / "ten.json"
    path.write_text(json.dumps([ten_mb]))
    subprocess.run([sys.executable, "-m", "medulla_appliance.testing.rawclient",
                    "--jid", "mallory4@%s/x" % DOMAIN, "--password", "pw-4-hostile",
                    "--port", str(appliance.server.c2s_port),
                    "--ca", str(appliance.server.ca.cert_path), "--to", MASTER,
                    "--bodies", str(path), "--wait", "2"], capture_output=True, timeout=90)
    assert appliance.master.poll() is None
    assert appliance.api("/api/v1/status")["machines"]["total"] == 1


def test_registration_for_another_jid_is_refused(appliance):
    victim = real_agent(appliance)
    key = keys.generate_private_key()
    # Signed as herself but claiming the victim's hostname and MAC: sender mismatch.
    body = registration(appliance, "mallory5@%s/x" % DOMAIN, key,
                        hostname=victim["hostname"], mac=victim["macs"][0])
    replies = send_as(appliance, "mallory5@%s/x" % DOMAIN, [body])
    assert [(r.action, r.ret, r.data["error"]) for r in replies] == [
        ("result.agent.register", 403, "sender-mismatch")]
    # Signed for the victim's JID: the signature binds the real sender, so it fails.
    body = registration(appliance, victim["jid"], key, hostname=victim["hostname"],
                        mac=victim["macs"][0])
    assert send_as(appliance, "mallory6@%s/x" % DOMAIN, [body]) == []
    master_log_has(appliance, "from mallory6@%s/x: bad-signature" % DOMAIN)
    assert len(appliance.machines()) == 1


def test_forged_from_never_reaches_the_master_as_the_victim(appliance):
    victim = real_agent(appliance)
    key = keys.generate_private_key()
    body = registration(appliance, victim["jid"], key, hostname=victim["hostname"],
                        mac=victim["macs"][0])
    send_as(appliance, "mallory7@%s/x" % DOMAIN, [body], forge_from=victim["jid"])
    # The server stamps the real sender, so the signature (bound to the victim's JID)
    # fails; the victim's pinned key is not replaced.
    master_log_has(appliance, "from mallory7@%s/x: bad-signature" % DOMAIN)
    assert real_agent(appliance)["key_fingerprint"] == victim["key_fingerprint"]
    assert len(appliance.machines()) == 1


def test_wrong_enrolment_key_is_refused(appliance):
    jid = "intruder.abc@%s/024dee000008" % DOMAIN
    body = registration(appliance, jid, keys.generate_private_key(), hostname="intruder",
                        mac="02:4d:ee:00:00:08", psk="x" * 32)
    replies = send_as(appliance, jid, [body])
    assert [(r.ret, r.data["error"]) for r in replies] == [(401, "bad-enrolment-key")]
    assert len(appliance.machines()) == 1


def test_replayed_envelope_is_refused(appliance):
    # Someone holding a stolen enrolment key may enrol a machine once; a replay of the
    # very same envelope is refused, not processed twice.
    body = registration(appliance, EVIL_JID, EVIL_KEY, hostname="evil",
                        mac="02:4d:ee:00:00:09")
    replies = send_as(appliance, EVIL_JID, [body, body])
    assert [(r.action, r.ret) for r in replies] == [("result.agent.register", 0)]
    master_log_has(appliance, "from %s: replay" % EVIL_JID)
    assert [m["hostname"] for m in appliance.machines()].count("evil") == 1


def test_unknown_action_from_an_enrolled_sender_is_answered_404(appliance):
    env = envelope.Envelope.new("shell.run", {"cmd": "id"}, now=time.time())
    replies = send_as(appliance, EVIL_JID, [envelope.encode(env, EVIL_KEY, EVIL_JID, MASTER)])
    assert [(r.action, r.ret, r.data["error"]) for r in replies] == [
        ("result.shell.run", 404, "unknown-action")]
    # The same order signed by any other key is not even answered.
    env = envelope.Envelope.new("shell.run", {"cmd": "id"}, now=time.time())
    body = envelope.encode(env, keys.generate_private_key(), EVIL_JID, MASTER)
    assert send_as(appliance, EVIL_JID, [body]) == []
    master_log_has(appliance, "from %s: bad-signature" % EVIL_JID)


def real_agent(appliance):
    state = json.loads((appliance.workdir / "agents/real/state/state.json").read_text())
    return next(m for m in appliance.machines() if m["uuid"] == state["uuid"])


def test_agent_obeys_only_the_master(appliance):
    agent = real_agent(appliance)
    env = envelope.Envelope.new("result.agent.register", {"uuid": "m-evil"}, now=time.time())
    jid = "mallory9@%s/x" % DOMAIN
    body = envelope.encode(env, keys.generate_private_key(), jid, agent["jid"])
    send_as(appliance, jid, [body], to=agent["jid"])
    log = appliance.workdir / "real.log"
    deadline = time.monotonic() + 5
    while "untrusted-sender" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "refused result.agent.register from %s: untrusted-sender" % jid in log.read_text()
    assert real_agent(appliance)["uuid"] == agent["uuid"]  # its state was not overwritten
