"""package.synced over a real XMPP server (prosody): a relay's medulla-syncthing, driving a
real Syncthing, enrols with a real medulla-master (relay.register) and tells it which
packages are complete, in envelopes signed with the relay's key."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from medulla_appliance.core import keys
from medulla_appliance.testing.appliance import Appliance
from medulla_appliance.testing.syncthing import SyncthingInstance

pytestmark = pytest.mark.integration
MASTER_ID = "FDXK2TM-IW4H3YI-EGGBUJ6-JSGK7KB-S2TIIFY-2RWPUQR-PKCDY4S-2RHUUQR"


def test_a_relay_tells_the_master_over_xmpp(prosody_server, tmp_path):
    server = prosody_server
    relay_jid = server.jid("relay-lyon") + "/syncthing"
    master_jid = server.jid("master") + "/master"
    server.register("relay-lyon", "relay-pw-1")
    app = Appliance(tmp_path / "app", server)
    password = tmp_path / "relay.password"
    password.write_text("relay-pw-1\n")
    password.chmod(0o600)
    root = tmp_path / "packages"
    content = b"#!/bin/sh\necho hello\n"
    (root / "hello").mkdir(parents=True)
    (root / "hello" / "run.sh").write_bytes(content)
    raw = json.dumps({"schema": 1, "id": "hello", "files": [
        {"path": "run.sh", "size": len(content),
         "sha256": hashlib.sha256(content).hexdigest()}]}).encode()
    (root / "hello" / "descriptor.json").write_bytes(raw)

    syncthing = SyncthingInstance(tmp_path / "syncthing", "relay")
    syncthing.start()
    key_path = tmp_path / "state" / "relay.key"
    key_path.parent.mkdir(mode=0o700)
    ini = tmp_path / "syncthing.ini"
    ini.write_text(f"""[syncthing]
role = relay
api_url = {syncthing.api_url}
api_key_file = {syncthing.write_api_key(tmp_path / "api.key")}
packages_root = {root}
# The package was put here by hand, not by Syncthing: keep it.
revert_local_changes = no
[devices]
peers = master {MASTER_ID} tcp://127.0.0.1:1
listen = {syncthing.sync_address}
[xmpp]
jid = {relay_jid}
password_file = {password}
port = {server.c2s_port}
ca_file = {server.ca.cert_path}
master_jid = {master_jid}
[keys]
private_key = {key_path}
master_public_key = {app.master_public_key}
enrolment_key_file = {app.workdir / "enrolment.key"}
""")
    relay = None
    told = []
    try:
        app.start_master()
        with open(tmp_path / "daemon.log", "wb") as log:
            relay = subprocess.Popen([sys.executable, "-m", "medulla_appliance.syncthing",
                                      "--config", str(ini)], stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not told:
            relays = app.api("/api/v1/relays")["relays"]
            if any(r["name"] == "lyon" for r in relays):
                told = app.api("/api/v1/relays/lyon")["packages"]
            time.sleep(0.2)
        lyon = app.api("/api/v1/relays/lyon")
    finally:
        if relay is not None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(20)
        app.stop_master()
        syncthing.stop()
    # The master verified them with the key it pinned when the relay enrolled.
    relay_key = keys.load_or_create_private_key(key_path).public_key()
    assert lyon["key_fingerprint"] == keys.fingerprint(relay_key)
    assert lyon["daemons"]["medulla-syncthing"]["resource"] == "syncthing"
    assert [(p["package_id"], p["descriptor_sha256"]) for p in told] == [
        ("hello", hashlib.sha256(raw).hexdigest())], (
        told, (tmp_path / "daemon.log").read_text()[-3000:])
    assert os.path.exists(root / ".complete" / "hello")
